"""The publishable key (blocks:read) reveals nothing about customers; visitor tokens; customer
keys with any character an email address may hold, and characters no key may hold."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc import tokens
from recsvc.app import create_app
from recsvc.auth import mint
from recsvc.config import ServiceConfig
from recsvc.errors import ConfigError
from recsvc.identity import DEVELOPMENT_SECRET
from recsvc.text import unsafe_character
from tests.channel_shop import build
from training.cli import main

SECRET = "s" * 40
WEB_KEY, WEB_LINE = mint("web", ["blocks:read"])
MAIL_KEY, MAIL_LINE = mint("mail", ["recs:read"])
ADMIN_KEY, ADMIN_LINE = mint("ops", ["admin"])
WEB = {"X-API-Key": WEB_KEY}
MAIL = {"X-API-Key": MAIL_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}
# Without the impression id, random in every answer (``unshown``).
PUBLIC_FIELDS = {"slot", "model_version", "personalised", "content", "products", "arm"}
IMPRESSION = re.compile(r' data-impression="[A-Za-z0-9_-]{12}"')
# C0, DEL, C1, line/paragraph separators, bidi overrides and isolates, zero-width characters
UNSAFE = "\x00\x09\x1f\x7f\x85\x9f\u2028\u2029\u202a\u202e\u2066\u2069\u200b\u200d\ufeff\u2060"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("publishable"))


def service(models: Path, events: Path, secret: str = SECRET) -> Flask:
    return create_app(
        {
            "RECSVC_MODELS_DIR": str(models),
            "RECSVC_EVENTS_DIR": str(events),
            "RECSVC_API_KEYS": f"{WEB_LINE},{MAIL_LINE},{ADMIN_LINE}",
            "RECSVC_SECRET_KEY": secret,
            "RECSVC_ID_SECRET": DEVELOPMENT_SECRET,  # what the test bundle was trained with
            "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",
        }
    )


@pytest.fixture
def client(models: Path, tmp_path: Path) -> FlaskClient:
    return service(models, tmp_path / "events").test_client()


def unshown(answer: Any) -> Any:
    """A block without its impression id: every answer gets a new, random one."""
    if isinstance(answer, str):
        assert IMPRESSION.search(answer)
        return IMPRESSION.sub("", answer)
    assert len(answer.pop("impression_id")) == 12
    return answer


def block(client: FlaskClient, key: str, headers: dict[str, str], form: str = "json") -> Any:
    response = client.get(
        f"/v1/customers/~/blocks/home_hero?key={quote(key, safe='')}&format={form}",
        headers=headers,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return unshown(response.get_json() if form == "json" else response.get_data(as_text=True))


def token_for(key: str, **kwargs: Any) -> dict[str, str]:
    return {**WEB, "X-Recsvc-Token": tokens.mint(SECRET.encode(), key, **kwargs)}


def test_the_publishable_key_answers_every_customer_alike(client: FlaskClient) -> None:
    anonymous = unshown(client.get("/v1/blocks/home_hero", headers=WEB).get_json())
    assert set(anonymous) == PUBLIC_FIELDS and anonymous["personalised"] is False
    html = unshown(
        client.get("/v1/blocks/home_hero?format=html", headers=WEB).get_data(as_text=True)
    )
    # whale is gold with tier-only content, festive a bronze customer, the rest unknown
    for key in ("whale", "festive", "shop:whale", "nobody", "email:someone@example.com"):
        assert block(client, key, WEB) == anonymous, key
        assert block(client, key, WEB, "html") == html, key
        path = client.get(f"/v1/customers/{quote(key)}/blocks/home_hero", headers=WEB)
        assert unshown(path.get_json()) == anonymous, key
    assert "gold-offer" not in str(anonymous) and "Gold" not in html


def test_a_visitor_token_shows_the_customers_own_block_and_no_figures(
    client: FlaskClient,
) -> None:
    own = block(client, "whale", token_for("whale"))
    assert set(own) == PUBLIC_FIELDS and own["personalised"] is True
    assert [content["id"] for content in own["content"]] == ["gold-offer"]  # tier-only
    full = block(client, "whale", MAIL)
    assert own["products"] == full["products"] and own["content"] == full["content"]
    assert "Gold" in block(client, "whale", token_for("whale"), "html")
    unknown = block(client, "email:new@example.com", token_for("email:new@example.com"))
    assert set(unknown) == PUBLIC_FIELDS  # a known and an unknown customer: the same keys

    anonymous = unshown(client.get("/v1/blocks/home_hero", headers=WEB).get_json())
    expired = tokens.mint(SECRET.encode(), "whale", 60, now=1_000_000.0)
    foreign = tokens.mint(b"another secret of more than 32 characters", "whale")
    valid = tokens.mint(SECRET.encode(), "whale")
    refused = [
        token_for("festive")["X-Recsvc-Token"],  # another customer's
        expired,
        foreign,
        valid[:-2] + ("AA" if not valid.endswith("AA") else "BB"),  # altered
        "not a token",
        "",
    ]
    for token in refused:
        headers = {**WEB, "X-Recsvc-Token": token}
        assert block(client, "whale", headers) == anonymous, token


def test_recs_read_keeps_the_full_figures(client: FlaskClient) -> None:
    full = block(client, "whale", MAIL)
    assert full["customer_id"] == "whale" and full["fallback"] is False
    assert full["tier"]["name"] == "gold" and full["tier"]["spend"] == 600.0
    anonymous = client.get("/v1/blocks/home_hero", headers=MAIL).get_json()
    assert anonymous["fallback"] is True and anonymous["customer_id"] is None


def test_backends_mint_visitor_tokens(client: FlaskClient, models: Path, tmp_path: Path) -> None:
    response = client.post("/v1/visitor-tokens", json={"customer": "whale"}, headers=MAIL)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "expires_at"} and "whale" not in body["token"]
    own = block(client, "whale", {**WEB, "X-Recsvc-Token": body["token"]})
    assert own["personalised"] is True

    forbidden = client.post("/v1/visitor-tokens", json={"customer": "whale"}, headers=WEB)
    assert forbidden.status_code == 403  # the page's own key cannot vouch for anyone
    bad = [
        ({"customer": "whale", "ttl": 86401}, "ttl"),
        ({"customer": "whale", "ttl": "60"}, "ttl"),
        ({"customer": "wh\u202eale"}, "customer"),
        ({"customer": ""}, "customer"),
        ({}, "customer"),
        ({"customer": "whale", "extra": 1}, "extra"),
    ]
    for payload, name in bad:
        answer = client.post("/v1/visitor-tokens", json=payload, headers=MAIL)
        assert answer.status_code == 400, payload
        assert answer.get_json(force=True)["invalid_params"][0]["name"] == name
    assert client.post("/v1/visitor-tokens", data="[", headers=MAIL).status_code == 400

    unsigned = create_app(
        ServiceConfig(models_dir=models, events_dir=tmp_path / "e2", auth=False)
    ).test_client()
    answer = unsigned.post("/v1/visitor-tokens", json={"customer": "whale"})
    assert (
        answer.status_code == 503 and "RECSVC_SECRET_KEY" in answer.get_json(force=True)["detail"]
    )


def test_tokens_are_signed_expiring_and_bound_to_one_key() -> None:
    secret = SECRET.encode()
    token = tokens.mint(secret, "email:ann@example.com", 3600, now=1000.0)
    expiry, _, mac = token.partition(".")
    assert expiry == "4600" and len(mac) == 43 and "ann" not in token
    assert tokens.verify(secret, "email:ann@example.com", token, now=4599.0)
    assert not tokens.verify(secret, "email:ann@example.com", token, now=4600.0)
    assert not tokens.verify(secret, "email:Ann@example.com", token, now=2000.0)
    assert not tokens.verify(b"", "email:ann@example.com", token, now=2000.0)
    for ttl in (0, 86401):
        with pytest.raises(ValueError, match="ttl"):
            tokens.mint(secret, "x", ttl)
    with pytest.raises(ConfigError, match="RECSVC_SECRET_KEY"):
        ServiceConfig.from_mapping({"RECSVC_AUTH": "off", "RECSVC_SECRET_KEY": "short"})


def test_the_cli_mints_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSVC_SECRET_KEY", SECRET)
    assert main(["tokens", "mint", "--customer", "email:a/b@example.com", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    assert tokens.verify(SECRET.encode(), "email:a/b@example.com", token)
    assert main(["tokens", "mint", "--customer", "x", "--ttl", "90000"]) == 2
    assert main(["tokens", "mint", "--customer", "a\u2028b"]) == 2
    assert "U+2028" in capsys.readouterr().err
    monkeypatch.delenv("RECSVC_SECRET_KEY")
    assert main(["tokens", "mint", "--customer", "x"]) == 2
    assert "RECSVC_SECRET_KEY" in capsys.readouterr().err


def test_a_key_with_a_slash_is_read_through_the_key_parameter(client: FlaskClient) -> None:
    key = "email:a/b+news@example.com"  # '/' and '+' are valid in an address
    popular = client.get("/v1/customers/nobody/recommendations?n=3", headers=MAIL).get_json()
    bought = popular["items"][0]["item_id"]
    event = {
        "event_id": "slash-1",
        "customer": key,
        "item_id": bought,
        "quantity": 1,
        "price": 2.5,
        "timestamp": "2011-06-02T10:00:00Z",
    }
    assert client.post("/v1/events", json={"events": [event]}, headers=ADMIN).status_code == 200
    encoded = quote(key, safe="")
    answer = client.get(f"/v1/customers/~/recommendations?key={encoded}&n=3", headers=MAIL)
    assert answer.status_code == 200
    assert bought not in [item["item_id"] for item in answer.get_json()["items"]]
    assert answer.get_json()["customer_id"] == key
    picks = client.get(f"/v1/customers/~/email-picks?key={encoded}&send_id=s", headers=MAIL)
    assert picks.status_code == 200 and picks.get_json()["customer_id"] == key
    assert block(client, key, token_for(key))["personalised"] is True

    missing = client.get("/v1/customers/~/recommendations", headers=MAIL)
    assert missing.status_code == 400
    assert missing.get_json(force=True)["invalid_params"][0]["name"] == "key"
    both = client.get("/v1/customers/whale/recommendations?key=whale", headers=MAIL)
    assert both.status_code == 400


@pytest.mark.parametrize("char", list(UNSAFE))
def test_unsafe_characters_in_keys_are_refused_by_name(client: FlaskClient, char: str) -> None:
    key = quote(f"email:a{char}b@example.com", safe="")
    for url, headers in [
        (f"/v1/customers/{key}/recommendations", MAIL),
        (f"/v1/customers/~/recommendations?key={key}", MAIL),
        (f"/v1/customers/~/blocks/home_hero?key={key}", WEB),
        (f"/v1/customers/{key}/email-picks?send_id=s", MAIL),
        (f"/v1/customers/whale/email-picks?send_id=s{quote(char)}", MAIL),
    ]:
        response = client.get(url, headers=headers)
        assert response.status_code == 400, url
        problem = response.get_json(force=True)
        name = "send_id" if "send_id=s%" in url else "key"
        assert problem["invalid_params"][0]["name"] == name
        assert f"U+{ord(char):04X}" in problem["detail"] and "example.com" not in problem["detail"]


def test_the_validator_accepts_what_addresses_and_names_hold() -> None:
    for text in ("email:o'brien+x/y=z@example.com", "phone:+44 20", "Zoë 名前", "a\u200eb"):
        assert unsafe_character(text) is None
    assert "U+202E" in (unsafe_character("a\u202eb") or "")


@pytest.mark.parametrize("path", ["/v1/items/K1/similar", "/v1/cart/recommendations?items=K1"])
def test_product_pages_name_a_customer_only_with_their_token(
    client: FlaskClient, path: str
) -> None:
    """Similar items and carts are public, but leaving out what a named customer owns would
    tell a page's key what they bought: that takes the customer's visitor token."""
    joined = "&" if "?" in path else "?"
    anyone = client.get(path, headers=WEB)
    assert anyone.status_code == 200
    named = client.get(f"{path}{joined}customer=baker", headers=WEB)
    assert named.status_code == 403
    assert "visitor token" in named.get_json()["detail"]
    proven = client.get(f"{path}{joined}customer=baker", headers=token_for("baker"))
    backend = client.get(f"{path}{joined}customer=baker", headers=MAIL)
    assert proven.status_code == backend.status_code == 200
    assert unshown(proven.get_json()) == unshown(backend.get_json())
    # baker holds K1 and K2: neither is ever offered to them.
    assert not {"K1", "K2"} & {item["item_id"] for item in proven.get_json()["items"]}
    other = client.get(f"{path}{joined}customer=baker", headers=token_for("festive"))
    assert other.status_code == 403
