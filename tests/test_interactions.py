"""Interaction events (views, carts, logins, ...) through the HTTP API: validation per kind,
anonymous sessions whose views drive their recommendations, logins that stitch a session into
a customer, and erasure of what a login stitched in; on the embedded store and on Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc import interactions
from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.store import StoredEvent
from tests.redis_server import STORE_KINDS, store_url

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


def event(event_id: str, customer: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "customer": customer, "kind": kind, "timestamp": NOW, **fields}


def post(client: FlaskClient, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code in (200, 422), response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def recommendations(client: FlaskClient, key: str, n: int = 5) -> dict[str, Any]:
    response = client.get(f"/v1/customers/{key}/recommendations?n={n}")
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def neighbours(models: Path, item_id: str) -> list[str]:
    """The item's neighbours in the bundle, strongest first."""
    arrays = load_current(models).arrays
    index = int(np.flatnonzero(arrays.item_ids == item_id)[0])
    start, end = arrays.neighbour_indptr[index], arrays.neighbour_indptr[index + 1]
    return [str(arrays.item_ids[i]) for i in arrays.neighbour_items[start:end]]


def an_item_with_neighbours(models: Path, at_least: int = 10) -> str:
    arrays = load_current(models).arrays
    counts = np.diff(arrays.neighbour_indptr)
    return str(arrays.item_ids[int(np.flatnonzero(counts >= at_least)[0])])


def test_each_kind_names_the_fields_it_lacks(client: FlaskClient) -> None:
    body = post(
        client,
        event("a", "session:s1", "glance", item_id="X"),
        event("b", "session:s1", "view"),
        event("c", "17850", "rec_click", item_id="X", surface="similar"),
        event("d", "17850", "login"),
        event("e", "17850", "login", session="17851"),
        event("f", "session:s1", "view", item_id="X", price=3.0),
        event("g", "17850", "email_open", send_id="s-1"),
        event("h", "17850", "cart_add", item_id="X", quantity=-2),
    )
    errors = {rejection["event_id"]: rejection["errors"] for rejection in body["rejected"]}
    assert body["accepted"] == ["g"]
    assert "kind: 'glance' is not one of" in errors["a"][0]
    assert errors["b"] == ["item_id: required, a non-empty string"]
    assert set(errors["c"]) == {
        "impression_id: required, a non-empty string",
        "model_version: required, a non-empty string",
        "rank: required, an integer from 1 (first) to 1000",
    }
    assert errors["d"] == ["session: required, a non-empty string"]
    assert errors["e"] == ["session: must be session:<id>"]
    assert errors["f"] == ["price: not a field of a view event"]
    assert errors["h"] == ["quantity: a cart change's units, from 1 to 1e6"]


def test_a_sessions_views_lead_its_recommendations(
    client: FlaskClient, sample_models: Path
) -> None:
    item = an_item_with_neighbours(sample_models)
    before = recommendations(client, "session:garden")
    assert before["fallback"] is True
    post(client, event("v1", "session:garden", "view", item_id=item))
    after = recommendations(client, "session:garden")
    assert after["fallback"] is False
    listed = [entry["item_id"] for entry in after["items"]]
    assert listed == neighbours(sample_models, item)[:5]
    assert {entry["reason"]["kind"] for entry in after["items"]} == {"viewed"}
    assert after["items"][0]["reason"]["item_id"] == item
    viewed = client.get("/v1/customers/session:garden/recently-viewed").get_json()
    assert [entry["item_id"] for entry in viewed["items"]] == [item]
    assert viewed["items"][0]["views"] == 1


def in_category(models: Path, name: str) -> tuple[list[str], set[str]]:
    """Items of the category ``name`` alone that have neighbours, strongest sellers first,
    and every item of it."""
    bundle = load_current(models)
    arrays = bundle.arrays
    bit = 1 << list(bundle.manifest.catalog.categories).index(name)
    members = (arrays.item_categories & bit) != 0
    only = arrays.item_categories == bit
    linked = np.diff(arrays.neighbour_indptr) > 0
    ordered = [int(i) for i in arrays.popular_items if only[i] and linked[i]]
    return [str(arrays.item_ids[i]) for i in ordered], {
        str(item) for item in arrays.item_ids[members]
    }


def test_a_session_browsing_one_department_gets_that_department_first(
    client: FlaskClient, sample_models: Path
) -> None:
    linked, garden = in_category(sample_models, "garden")
    viewed = linked[:3]
    post(client, *(event(f"v{k}", "session:g", "view", item_id=i) for k, i in enumerate(viewed)))
    answer = recommendations(client, "session:g", 10)
    listed = [entry["item_id"] for entry in answer["items"]]
    assert set(listed) <= garden and not set(listed) & set(viewed)
    assert {entry["reason"]["item_id"] for entry in answer["items"]} <= set(viewed)
    customer = str(load_current(sample_models).arrays.customer_ids[7])
    before = [entry["item_id"] for entry in recommendations(client, customer, 10)["items"]]
    assert len(set(before) & garden) < 5  # not a gardener to begin with
    post(client, event("l1", customer, "login", session="session:g"))
    after = [entry["item_id"] for entry in recommendations(client, customer, 10)["items"]]
    assert set(after[:5]) <= garden


def test_a_session_never_gets_what_it_bought(client: FlaskClient, sample_models: Path) -> None:
    item = an_item_with_neighbours(sample_models)
    first = neighbours(sample_models, item)[0]
    post(client, event("v1", "session:s2", "view", item_id=item))
    assert recommendations(client, "session:s2")["items"][0]["item_id"] == first
    post(client, event("p1", "session:s2", "purchase", item_id=first, quantity=1, price=2.0))
    listed = [entry["item_id"] for entry in recommendations(client, "session:s2", 20)["items"]]
    assert first not in listed


def test_a_login_keeps_the_sessions_interest(client: FlaskClient, sample_models: Path) -> None:
    arrays = load_current(sample_models).arrays
    customer = str(arrays.customer_ids[3])
    item = an_item_with_neighbours(sample_models)
    bought = neighbours(sample_models, item)[1]
    post(
        client,
        event("v1", "session:s3", "view", item_id=item),
        event("p1", "session:s3", "purchase", item_id=bought, quantity=1, price=2.0),
    )
    post(client, event("l1", customer, "login", session="session:s3"))
    listed = recommendations(client, customer, 10)["items"]
    assert listed[0]["reason"] == {
        "kind": "viewed",
        "item_id": item,
        "title": listed[0]["reason"]["title"],
    }
    assert bought not in [entry["item_id"] for entry in listed]
    viewed = client.get(f"/v1/customers/{customer}/recently-viewed").get_json()
    assert [entry["item_id"] for entry in viewed["items"]] == [item]


def test_erasing_a_customer_erases_the_sessions_they_logged_in_from(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[4])
    item = an_item_with_neighbours(sample_models)
    post(client, event("v1", "session:s4", "view", item_id=item))
    post(client, event("l1", customer, "login", session="session:s4"))
    assert client.delete(f"/v1/customers/{customer}").status_code == 200
    assert recommendations(client, "session:s4")["fallback"] is True
    viewed = client.get("/v1/customers/session:s4/recently-viewed").get_json()
    assert viewed["items"] == []
    logs = list((tmp_path / "events").glob("events-*.jsonl"))
    assert logs
    for path in logs:
        assert "session:s4" not in path.read_text()
    rejected = post(client, event("v2", "session:s4", "view", item_id=item))
    assert rejected["rejected"][0]["errors"] == ["customer: this customer was erased"]


def test_a_customer_may_return_what_they_bought_in_a_session(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[5])
    item = an_item_with_neighbours(sample_models)
    post(client, event("p1", "session:s5", "purchase", item_id=item, quantity=2, price=2.0))
    refused = post(client, event("r0", customer, "return", item_id=item, quantity=1, price=2.0))
    assert refused["rejected"][0]["errors"] == [
        f"item_id: this customer has not bought {item}; nothing to return"
    ]
    post(client, event("l1", customer, "login", session="session:s5"))
    answer = post(client, event("r1", customer, "return", item_id=item, quantity=1, price=2.0))
    assert answer["accepted"] == ["r1"]


def test_interest_weighs_the_latest_and_the_cart_most_and_forgets_old_views() -> None:
    def stored(kind: str, item: str, hours_ago: float) -> StoredEvent:
        at = 1_000_000.0 - hours_ago * 3600
        return StoredEvent(f"{kind}-{item}-{at}", item, 1.0, 0.0, NOW, "api", at, kind=kind)

    index = {"A": 0, "B": 1, "C": 2, "D": 3}
    now = 1_000_000.0
    events = [stored("view", "A", 2.0), stored("view", "B", 1.0), stored("cart_add", "C", 0.5)]
    weights = interactions.interest(events, index, now)
    assert list(weights) == [2, 1, 0]  # the latest first
    assert weights[2] > 2.5 * weights[1]  # in the cart: three times a view
    assert weights[1] > weights[0]
    assert interactions.interest([stored("view", "D", 24 * 4)], index, now) == {}
    assert interactions.interest([stored("view", "D", 24.0)], index, now) == {3: 0.5}


def test_what_a_session_bought_stays_owned_however_many_sessions_follow(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[8])
    item = an_item_with_neighbours(sample_models)
    bought = neighbours(sample_models, item)[0]
    post(client, event("p1", "session:first", "purchase", item_id=bought, quantity=1, price=2.0))
    for number in range(8):
        post(client, event(f"l{number}", customer, "login", session=f"session:v{number}"))
    post(client, event("l-first", customer, "login", session="session:first"))
    for number in range(8, 12):
        post(client, event(f"l{number}", customer, "login", session=f"session:v{number}"))
    post(client, event("v1", customer, "view", item_id=item))
    assert bought not in [e["item_id"] for e in recommendations(client, customer, 50)["items"]]
    answer = post(client, event("r1", customer, "return", item_id=bought, quantity=1, price=2.0))
    assert answer["accepted"] == ["r1"]


def test_a_session_key_is_one_key_however_it_is_spaced(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[9])
    item = an_item_with_neighbours(sample_models)
    post(client, event("v1", "session: s9 ", "view", item_id=item))
    viewed = client.get("/v1/customers/session:s9/recently-viewed").get_json()["items"]
    assert [entry["item_id"] for entry in viewed] == [item]
    post(client, event("l1", customer, "login", session="session:  s9"))
    assert client.delete(f"/v1/customers/{customer}").status_code == 200
    assert client.get("/v1/customers/session:s9/recently-viewed").get_json()["items"] == []
    for path in (tmp_path / "events").glob("events-*.jsonl"):
        assert "s9" not in path.read_text()
    rejected = post(client, event("v2", "session: ", "view", item_id=item))["rejected"]
    assert rejected[0]["errors"] == ["customer: a session key is session:<id>, with an id"]


def test_an_event_id_repeated_within_a_batch_counts_once(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[10])
    item = an_item_with_neighbours(sample_models)
    first = event("p1", customer, "purchase", item_id=item, quantity=1, price=2.0)
    answer = post(
        client, first, first, event("r1", customer, "return", item_id=item, quantity=2, price=2.0)
    )
    assert answer["accepted"] == ["p1"] and answer["duplicates"] == ["p1"]
    assert answer["rejected"][0]["event_id"] == "r1"


def test_an_event_under_a_key_erasure_could_not_name_is_refused(client: FlaskClient) -> None:
    answer = post(client, event("t1", "emial:ann@example.com", "view", item_id="X"))
    assert answer["rejected"][0]["errors"] == [
        "customer: 'emial' is not a key type this service knows (customer, email, legacy, phone, "
        "session, shop), or the value after it is not a valid address or number"
    ]
    assert client.delete("/v1/customers/emial:ann@example.com").status_code == 400
