"""Website blocks, email picks, CORS, the embed script and campaign export."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.text import spreadsheet_safe
from tests.channel_shop import XSS_TITLE, build
from tests.conftest import SAMPLE_DIR
from training.channels import item_categories
from training.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("channels"))


@pytest.fixture
def client(models: Path, tmp_path: Path) -> FlaskClient:
    config = ServiceConfig(
        models_dir=models,
        events_dir=tmp_path / "events",
        auth=False,
        cors_origins=("http://127.0.0.1:8001",),
    )
    return create_app(config).test_client()


def test_block_json_has_tier_content_and_absolute_links(client: FlaskClient) -> None:
    body = client.get("/v1/customers/festive/blocks/home_hero").get_json()
    assert body["slot"] == "home_hero" and body["customer_id"] == "festive"
    assert body["tier"]["name"] == "bronze"
    assert [c["id"] for c in body["content"]] == ["xmas"]  # her items are christmas
    assert body["content"][0]["url"] == "https://shop.example.com/xmas"
    products = body["products"]
    assert len(products) == 4 and not {"X2", "X3"} & {p["item_id"] for p in products}
    for product in products:
        assert product["url"] == f"https://shop.example.com/products/{product['item_id']}"
        assert product["image"].startswith("https://shop.example.com/images/")
        # X: christmas titles, K: mugs and a cake tin, P: neither
        expected = {"X": ["christmas"], "K": ["kitchen"], "P": []}[product["item_id"][0]]
        assert product["categories"] == expected


def test_content_follows_affinity_and_tier(client: FlaskClient) -> None:
    baker = client.get("/v1/customers/baker/blocks/home_hero").get_json()
    assert [c["id"] for c in baker["content"]] == ["bake"]
    whale = client.get("/v1/customers/whale/blocks/home_hero").get_json()
    assert whale["tier"]["name"] == "gold"
    assert [c["id"] for c in whale["content"]] == ["gold-offer"]


def test_anonymous_block_and_unknown_slot(client: FlaskClient) -> None:
    body = client.get("/v1/blocks/home_hero").get_json()
    assert body["fallback"] is True and body["customer_id"] is None
    assert len(body["products"]) == 4 and body["content"][0]["id"] != "expired"
    response = client.get("/v1/blocks/nowhere")
    assert response.status_code == 404 and "home_hero" in response.get_json(force=True)["detail"]
    assert client.get("/v1/blocks/home_hero?format=pdf").status_code == 400


def test_html_block_escapes_titles(client: FlaskClient) -> None:
    html = client.get("/v1/blocks/home_hero?format=html").get_data(as_text=True)
    json_titles = [p["title"] for p in client.get("/v1/blocks/home_hero").get_json()["products"]]
    assert XSS_TITLE in json_titles  # the best seller, so it is in the anonymous block
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; CHRISTMAS LIGHTS" in html
    assert "Gold <b>" not in html


def test_category_filter(client: FlaskClient) -> None:
    body = client.get("/v1/customers/baker/recommendations?category=christmas&n=10").get_json()
    assert {item["item_id"] for item in body["items"]} == {"X1", "X2", "X3"}
    response = client.get("/v1/customers/baker/recommendations?category=shoes")
    assert response.status_code == 400
    assert "christmas, kitchen" in response.get_json(force=True)["detail"]


def test_email_picks_stay_the_same_for_one_send(
    client: FlaskClient, models: Path, tmp_path: Path
) -> None:
    url = "/v1/customers/baker/email-picks?send_id=spring-1&n=3"
    first = client.get(url).get_json()
    assert len(first["items"]) == 3
    assert first["items"][0]["url"].endswith(
        "?utm_source=recsvc&utm_medium=email&utm_campaign=spring-1"
        f"&recsvc_impression={first['impression_id']}"
    )
    bought = first["items"][0]["item_id"]
    event = {
        "event_id": "e-1",
        "customer": "baker",
        "item_id": bought,
        "quantity": 1,
        "price": 2.5,
        "timestamp": "2011-06-02T10:00:00Z",
    }
    client.post("/v1/events", json={"events": [event]})

    assert client.get(url).get_json() == first  # same send: same picks, after a purchase
    fresh = client.get("/v1/customers/baker/email-picks?send_id=spring-2&n=3").get_json()
    assert bought not in [item["item_id"] for item in fresh["items"]]

    retrained = build(tmp_path / "again")  # a new model does not change the send either
    again = create_app(ServiceConfig(models_dir=retrained, events_dir=tmp_path / "e2", auth=False))
    shared = service_of(client.application).realtime.store
    service_of(again).realtime.store = shared
    assert again.test_client().get(url).get_json() == first


def test_email_html_is_email_safe(client: FlaskClient) -> None:
    html = client.get("/v1/customers/email:Someone@Example.com/email-picks?send_id=s&format=html")
    text = html.get_data(as_text=True)
    assert html.status_code == 200 and text.startswith("<table")
    assert "<style" not in text and "class=" not in text and 'style="' in text
    assert text.count("<img") == 4 and 'src="https://shop.example.com/images/' in text
    assert "utm_campaign=s" in text and "<script>" not in text


def test_cors_only_for_configured_origins(client: FlaskClient) -> None:
    allowed = client.get("/v1/blocks/home_hero", headers={"Origin": "http://127.0.0.1:8001"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8001"
    preflight = client.options(
        "/v1/blocks/home_hero",
        headers={"Origin": "http://127.0.0.1:8001", "Access-Control-Request-Headers": "x-api-key"},
    )
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.get("/v1/blocks/home_hero", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_embed_script_is_served(client: FlaskClient) -> None:
    response = client.get("/v1/embed.js")
    assert response.status_code == 200 and response.mimetype == "application/javascript"
    assert "data-recsvc-slot" in response.get_data(as_text=True)


def test_export_rows_match_the_endpoint(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_EVENTS_DIR", str(tmp_path / "events"))
    customers = tmp_path / "campaign.txt"
    customers.write_text("baker\nfestive\nemail:new@example.com\n")
    out = tmp_path / "picks.jsonl"
    assert (
        main(
            [
                "export-picks",
                "--send-id",
                "camp",
                "--customers",
                str(customers),
                "--format",
                "jsonl",
                "--out",
                str(out),
                "--models-dir",
                str(models),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    config = ServiceConfig(models_dir=models, events_dir=tmp_path / "events", auth=False)
    client = create_app(config).test_client()
    for key, row in zip(["baker", "festive", "email:new@example.com"], rows, strict=True):
        live = client.get(f"/v1/customers/{key}/email-picks?send_id=camp&n=4").get_json()
        assert {k: v for k, v in row.items() if k not in ("created_at", "degraded")} == {
            k: v for k, v in live.items() if k not in ("created_at", "degraded")
        }

    table = tmp_path / "gold.csv"
    assert (
        main(
            [
                "export-picks",
                "--send-id",
                "camp",
                "--segment",
                "tier=gold",
                "--format",
                "csv",
                "--out",
                str(table),
                "--models-dir",
                str(models),
            ]
        )
        == 0
    )
    with table.open() as handle:
        picks = list(csv.DictReader(handle))
    assert {row["customer_id"] for row in picks} == {"whale"} and len(picks) == 4


def test_item_categories_match_whole_words_and_phrases() -> None:
    taxonomy = {
        "candles": ["candle", "tealight holder"],
        "lights": ["t-light", "lamp"],
        "children": ["children's", "toy"],
        "vintage": ["50's"],
    }
    titles = np.array(
        [
            "WHITE CANDLES",  # trailing s
            "CANDLESTICK",  # a longer word: no
            "Tealight Holders set",  # a phrase, plural
            "T-LIGHT HOLDER",
            "CHILDREN'S TOY BOX",
            "CRÈME LAMPE",  # "lampe" is another word
            "50'S DINER SIGN",
            "TOYSHOP",
        ]
    )
    bits = {name: 1 << bit for bit, name in enumerate(taxonomy)}
    assert item_categories(titles, taxonomy).tolist() == [
        bits["candles"],
        0,
        bits["candles"],
        bits["lights"],
        bits["children"],
        0,
        bits["vintage"],
        0,
    ]


def export(models: Path, out: Path, *options: str) -> int:
    return main(
        ["export-picks", "--send-id", "camp", "--out", str(out), "--models-dir", str(models)]
        + list(options)
    )


def test_export_skips_erased_customers_and_lists_each_customer_once(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = tmp_path / "events"
    monkeypatch.setenv("RECSVC_EVENTS_DIR", str(events))
    service = create_app(ServiceConfig(models_dir=models, events_dir=events, auth=False))
    assert service.test_client().delete("/v1/customers/festive").status_code == 200

    campaign = tmp_path / "campaign.txt"
    # baker three times (twice by the same key, once as the source's id), a key with '/',
    # festive (erased) by two keys
    campaign.write_text("baker\nshop:baker\nbaker\nemail:a/b@example.com\nfestive\nshop:festive\n")
    out = tmp_path / "picks.jsonl"
    assert export(models, out, "--customers", str(campaign), "--format", "jsonl") == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["customer_id"] for row in rows] == ["baker", "email:a/b@example.com"]
    summary = capsys.readouterr().out
    assert "2 customers written" in summary and "2 erased" in summary
    assert "2 keys of a customer already listed" in summary

    table = tmp_path / "bronze.csv"
    assert export(models, table, "--segment", "tier=bronze", "--format", "csv") == 0
    with table.open() as handle:
        exported = {row["customer_id"] for row in csv.DictReader(handle)}
    assert "baker" in exported and "festive" not in exported and "whale" not in exported
    assert "1 erased" in capsys.readouterr().out


def test_export_csv_cells_cannot_run_as_formulas(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_EVENTS_DIR", str(tmp_path / "events"))
    campaign = tmp_path / "campaign.txt"
    campaign.write_text('=HYPERLINK("http://evil.example")\n+1\n@SUM(A1)\n-2\n')
    out = tmp_path / "picks.csv"
    assert (
        main(
            ["export-picks", "--send-id", "=1+1", "--customers", str(campaign), "--format"]
            + ["csv", "--out", str(out), "--models-dir", str(models)]
        )
        == 0
    )
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["send_id"] for row in rows} == {"'=1+1"}
    customers = ['\'=HYPERLINK("http://evil.example")', "'+1", "'@SUM(A1)", "'-2"]
    assert sorted({row["customer_id"] for row in rows}) == sorted(customers)
    for cell in ("=x", "+x", "-x", "@x", "\tx", "\rx"):
        assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe("CAKE TIN") == "CAKE TIN" and spreadsheet_safe(-1.5) == -1.5


def test_a_failed_export_leaves_no_file(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSVC_EVENTS_DIR", str(tmp_path / "events"))
    campaign = tmp_path / "campaign.txt"
    campaign.write_text("baker\nwhale\n")
    out = tmp_path / "out" / "picks.csv"
    out.parent.mkdir()
    out.write_text("last week's export\n")
    # every request is refused (n above the maximum) after the header was written
    assert export(models, out, "--customers", str(campaign), "--format", "csv", "--n", "99") == 2
    assert "customer 1 of the campaign: n: must be between 1 and 12" in capsys.readouterr().err
    assert out.read_text() == "last week's export\n" and list(out.parent.iterdir()) == [out]

    campaign.write_text("baker\nemail:ann\u202e@example.com\n")
    assert export(models, out, "--customers", str(campaign)) == 2
    error = capsys.readouterr().err
    assert "--customers line 2: contains U+202E" in error and "ann" not in error
    assert export(models, out, "--customers", str(campaign), "--send-id", "a\x7fb") == 2
    assert list(out.parent.iterdir()) == [out]


def test_sample_content_shows_each_tier_its_perks(sample_app: Flask, sample_models: Path) -> None:
    """The shipped content: an untagged offer for a tier reaches every customer of that tier
    (it would score 0 on affinity and lose to any tagged item), and no one else; the welcome
    banner greets visitors the model does not know."""
    content = json.loads((SAMPLE_DIR / "content.json").read_text())
    perks = {
        item["id"]: set(item["tiers"]) for item in content if item["tiers"] and not item["tags"]
    }
    assert perks == {"silver-shipping": {"silver"}, "platinum-thanks": {"platinum"}}
    client = sample_app.test_client()
    customers = load_current(sample_models).arrays.customer_ids
    seen: dict[str, int] = {}
    for customer in customers.tolist():
        body = client.get(f"/v1/customers/{customer}/blocks/account_sidebar").get_json()
        tier = body["tier"]["name"]
        seen[tier] = seen.get(tier, 0) + 1
        shown = [item["id"] for item in body["content"]]
        assert len(shown) == 2
        expected = [name for name, tiers in perks.items() if tier in tiers]
        assert shown[:1] == expected or (not expected and shown[0] not in perks), (tier, shown)
    assert seen.get("silver") and seen.get("platinum")  # the sample has both tiers
    stranger = client.get("/v1/blocks/account_sidebar").get_json()
    assert [item["id"] for item in stranger["content"]][:1] == ["welcome"]
    assert (
        client.get("/v1/customers/nobody-known/blocks/home_hero").get_json()["content"][0]["id"]
        == "welcome"
    )


def test_export_logs_no_auth_warning_and_no_request_lines(
    models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The in-process service is the export's own: nobody set RECSVC_AUTH, so no line says
    it is off, and its per-request lines would be one per customer."""
    monkeypatch.setenv("RECSVC_EVENTS_DIR", str(tmp_path / "events"))
    monkeypatch.setenv("RECSVC_LOG_LEVEL", "INFO")
    caplog.set_level(logging.INFO)
    campaign = tmp_path / "campaign.txt"
    campaign.write_text("baker\nfestive\n")
    assert export(models, tmp_path / "p.jsonl", "--customers", str(campaign)) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "RECSVC_AUTH" in m]
    assert not [r for r in caplog.records if r.name == "recsvc.access"]
