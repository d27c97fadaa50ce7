"""Purchases, returns and erasure through the HTTP API, on the embedded store and on Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.auth import mint, parse_api_keys
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from tests.conftest import SAMPLE_DIR
from tests.redis_server import STORE_KINDS, RedisProcess, store_url
from training.config import load_config
from training.pipeline import train

NOW = "2011-12-10T10:00:00Z"


@pytest.fixture(params=STORE_KINDS)
def app(request: pytest.FixtureRequest, sample_models: Path, tmp_path: Path) -> Flask:
    redis_url = store_url(request, request.param)
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path / "events", auth=False, redis_url=redis_url
    )
    return create_app(config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, *events: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/events", json={"events": list(events)})
    return response.status_code, response.get_json(force=True)


def purchase(
    event_id: str, customer: str, item: str, quantity: float = 1, price: float = 2.0, **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer": customer,
        "item_id": item,
        "quantity": quantity,
        "price": price,
        "timestamp": NOW,
        **extra,
    }


def sample_config_copy(directory: Path) -> Path:
    """The demo sample's config, written elsewhere with its relative paths made absolute."""
    text = (SAMPLE_DIR / "sample.toml").read_text()
    for name in ("legacy.csv.gz", "shop.csv.gz", "taxonomy.toml", "content.json"):
        text = text.replace(f'"{name}"', f'"{SAMPLE_DIR / name}"')
    config = directory / "train.toml"
    config.write_text(text)
    return config


def top_items(client: FlaskClient, key: str, n: int = 10) -> list[str]:
    body = client.get(f"/v1/customers/{key}/recommendations?n={n}").get_json()
    return [item["item_id"] for item in body["items"]]


def a_customer(models: Path, index: int = 3) -> str:
    return str(load_current(models).arrays.customer_ids[index])


def test_purchased_top_item_disappears_at_once(client: FlaskClient, sample_models: Path) -> None:
    customer = a_customer(sample_models)
    top = top_items(client, customer)[0]

    status, body = post(client, purchase("p-1", customer, top))

    assert status == 200 and body == {"accepted": ["p-1"], "duplicates": [], "rejected": []}
    after = top_items(client, customer, n=100)
    assert top not in after and len(after) == 100


def test_replaying_a_batch_changes_nothing(client: FlaskClient, sample_models: Path) -> None:
    customer = a_customer(sample_models)
    before = client.get(f"/v1/customers/{customer}/profile").get_json()
    batch = [purchase("r-1", customer, "22423", 2, 12.75), purchase("r-2", customer, "85099B")]

    assert post(client, *batch)[1]["accepted"] == ["r-1", "r-2"]
    once = client.get(f"/v1/customers/{customer}/profile").get_json()
    assert post(client, *batch)[1] == {"accepted": [], "duplicates": ["r-1", "r-2"], "rejected": []}
    twice = client.get(f"/v1/customers/{customer}/profile").get_json()

    assert once["spend"] == pytest.approx(before["spend"] + 2 * 12.75 + 2.0)
    assert twice == once
    assert once["since_training"] == {"events": 2, "purchases": 2, "returns": 0, "spend": 27.5}


def test_full_return_makes_an_item_eligible_again(app: Flask, sample_models: Path) -> None:
    client = app.test_client()
    model = service_of(app).registry.model
    ranker = model.ranker
    row = 3
    customer = a_customer(sample_models, row)
    owned = ranker.owned(row)
    quantities = ranker.arrays.owned_quantity[
        ranker.arrays.owned_indptr[row] : ranker.arrays.owned_indptr[row + 1]
    ]
    scores = ranker.scores(row)
    best = int(np.argmax(np.where(np.isin(np.arange(len(scores)), owned), scores, -np.inf)))
    held = float(quantities[list(owned).index(best)])
    item = str(ranker.arrays.item_ids[best])
    assert item not in top_items(client, customer, n=100)

    post(client, purchase("ret-1", customer, item, quantity=-held))

    excluded_after = set(owned.tolist()) - {best}
    rank = sum(
        1 for i in np.argsort(-scores) if i not in excluded_after and scores[i] > scores[best]
    )
    assert item in top_items(client, customer, n=min(100, rank + 1))


def test_new_customers_purchases_leave_their_fallback(client: FlaskClient) -> None:
    first = top_items(client, "email:New.Shopper@example.com", n=3)
    post(client, purchase("n-1", "email:new.shopper@EXAMPLE.com ", first[0]))
    body = client.get("/v1/customers/email:New.Shopper@example.com/recommendations?n=3").get_json()
    assert body["fallback"] is True
    assert first[0] not in [item["item_id"] for item in body["items"]]


def test_mixed_batches_apply_the_valid_events(client: FlaskClient, sample_models: Path) -> None:
    customer = a_customer(sample_models)
    status, body = post(
        client,
        purchase("m-1", customer, "22423"),
        {
            "event_id": "m-2",
            "customer": customer,
            "item_id": "22423",
            "quantity": 0,
            "price": -1,
            "timestamp": "yesterday",
            "colour": "red",
        },
        purchase("m-3", customer, "22423", timestamp="2999-01-01T00:00:00Z"),
        "not an object",
    )
    assert status == 200 and body["accepted"] == ["m-1"]
    errors = {r["index"]: r["errors"] for r in body["rejected"]}
    assert errors[1] == [
        "colour: unknown field",
        "quantity: must be non-zero (negative for a return), at most 1e6 in size",
        "price: must be from 0 to 1e7",
        "timestamp: 'yesterday' is not ISO 8601 (e.g. 2011-12-09T12:50:00Z)",
    ]
    assert "more than a day in the future" in errors[2][0]
    assert errors[3] == ["an event must be a JSON object"]

    status, body = post(client, {"event_id": "x"})
    assert status == 422 and body["accepted"] == [] and len(body["rejected"]) == 1
    for payload in ([], {"events": []}, {"events": "x"}):
        response = client.post("/v1/events", json=payload)
        assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert client.post("/v1/events", data="{", content_type="application/json").status_code == 400


def test_accepted_events_are_logged_and_train_into_the_next_bundle(
    app: Flask, sample_models: Path, tmp_path: Path
) -> None:
    client = app.test_client()
    customer = a_customer(sample_models)
    item = top_items(client, customer)[0]
    post(client, purchase("t-1", customer, item, 3, 4.0), purchase("t-2", customer, item, 3, 4.0))
    post(client, purchase("t-1", customer, item, 3, 4.0))  # a replay is not logged again
    logged = [
        json.loads(line)
        for path in (tmp_path / "events").glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [record["event_id"] for record in logged] == ["t-1", "t-2"]

    config = sample_config_copy(tmp_path)
    config.write_text(
        config.read_text() + f'\n[[sources]]\nname = "live"\nkind = "events"\n'
        f'path = "{tmp_path}/events/events-*.jsonl"\n'
    )
    models = tmp_path / "models"
    report = train(load_config(config), models)
    assert report.accounting["live"]["used"] == 2
    bundle = load_current(models)
    assert bundle.manifest.events_through == max(r["received_at"] for r in logged)

    fresh = create_app(replace(service_of(app).config, models_dir=models))
    service_of(fresh).realtime.store = service_of(app).realtime.store
    profile = fresh.test_client().get(f"/v1/customers/{customer}/profile").get_json()
    old_profile = client.get(f"/v1/customers/{customer}/profile").get_json()
    assert profile["since_training"]["events"] == 0  # learned, so not counted twice
    assert profile["spend"] == pytest.approx(old_profile["spend"])
    assert item not in top_items(fresh.test_client(), customer, n=100)


def test_erasure_forgets_every_alias_and_the_next_training(
    app: Flask, sample_models: Path, tmp_path: Path
) -> None:
    client = app.test_client()
    customer = a_customer(sample_models)
    post(client, purchase("e-1", customer, "22423"))

    response = client.delete(f"/v1/customers/shop:{customer}")

    assert response.status_code == 200
    receipt = response.get_json()
    assert receipt["erased"] is True and receipt["customer_id"] == customer
    assert receipt["events_removed"] == 1 and receipt["aliases"] >= 4
    for key in (customer, f"shop:{customer}", f"legacy:{customer}", f"customer:{customer}"):
        body = client.get(f"/v1/customers/{key}/recommendations").get_json()
        assert body["fallback"] is True and body["customer_id"] == key
        assert client.get(f"/v1/customers/{key}/profile").get_json()["known"] is False
    status, body = post(client, purchase("e-2", customer, "22423"))
    assert status == 422 and body["rejected"][0]["errors"] == ["customer: this customer was erased"]

    erasures = tmp_path / "events" / "erasures.jsonl"
    assert customer not in erasures.read_text()  # digests only
    config = sample_config_copy(tmp_path)
    config.write_text(config.read_text().replace('"../../events/erasures.jsonl"', f'"{erasures}"'))
    report = train(load_config(config), tmp_path / "models")
    erased_rows = sum(counts["erased"] for counts in report.accounting.values())
    assert erased_rows > 0
    assert customer not in load_current(tmp_path / "models").arrays.customer_ids.tolist()


@pytest.fixture
def outage(sample_models: Path, tmp_path: Path) -> Iterator[tuple[FlaskClient, RedisProcess]]:
    server = RedisProcess(tmp_path)
    server.start()
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path / "events", auth=False, redis_url=server.url
    )
    try:
        yield create_app(config).test_client(), server
    finally:
        server.stop()


def test_store_outage_degrades_reads_and_refuses_writes(
    outage: tuple[FlaskClient, RedisProcess], sample_models: Path
) -> None:
    client, server = outage
    customer = a_customer(sample_models)
    assert post(client, purchase("o-1", customer, "22423"))[0] == 200
    server.stop()

    body = client.get(f"/v1/customers/{customer}/recommendations").get_json()
    assert body["degraded"] is True and len(body["items"]) == 10
    response = client.post("/v1/events", json={"events": [purchase("o-2", customer, "22423")]})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"

    server.start()  # empty: this Redis keeps nothing on disk
    time.sleep(1.1)  # past the store's cooldown
    # It lost what it held: reads stay degraded and writes refused until the durable logs are
    # replayed into it, which the first read sets off in the background.
    url = f"/v1/customers/{customer}/recommendations"
    answers = [client.get(url).get_json()]
    deadline = time.monotonic() + 10
    while answers[-1]["degraded"] and time.monotonic() < deadline:
        time.sleep(0.05)
        answers.append(client.get(url).get_json())
    assert answers[0]["degraded"] is True and answers[-1]["degraded"] is False
    # The purchase reported before the loss is still known, and its id still taken.
    assert "22423" not in [item["item_id"] for item in answers[-1]["items"]]
    assert post(client, purchase("o-1", customer, "22423"))[1]["duplicates"] == ["o-1"]
    assert post(client, purchase("o-2", customer, "22423"))[1]["accepted"] == ["o-2"]


def test_api_keys_and_scopes(sample_models: Path, tmp_path: Path) -> None:
    reader, reader_line = mint("web", ["recs:read"])
    writer, writer_line = mint("shop", ["events:write"])
    admin, admin_line = mint("ops", ["admin"])
    keys = parse_api_keys(",".join([reader_line, writer_line, admin_line]), "test")
    client = create_app(
        ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "ev", api_keys=keys)
    ).test_client()
    url = "/v1/customers/12346/recommendations"

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    missing = client.get(url)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.get(url, headers=bearer("rk_wrong")).status_code == 401
    assert client.get(url, headers=bearer(reader)).status_code == 200
    assert client.get(url, headers={"X-API-Key": reader}).status_code == 200
    assert client.get(url, headers=bearer(writer)).status_code == 403
    events = {"events": [purchase("k-1", "12346", "22423")]}
    assert client.post("/v1/events", json=events, headers=bearer(reader)).status_code == 403
    assert client.post("/v1/events", json=events, headers=bearer(writer)).status_code == 200
    assert client.delete("/v1/customers/12346", headers=bearer(writer)).status_code == 403
    assert client.get(url, headers=bearer(admin)).status_code == 200
    assert client.get("/healthz").status_code == 200
