"""Erasure is a durable fact: honoured on every read and write whatever the store's state,
after a retrain, and nothing of the customer stays on disk."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from recsvc.app import create_app
from recsvc.config import ServiceConfig
from tests.redis_server import RedisProcess
from tests.test_realtime_api import a_customer, post, purchase, sample_config_copy
from training.config import load_config
from training.pipeline import train

EMAIL = "Ann.Erased@Example.com"
PHONE = "+44 20 7946 0958"
TRACES = ("ann.erased@example.com", "Ann.Erased", "+442079460958", "7946 0958", "2079460958")


def files_under(*directories: Path) -> Iterator[Path]:
    for directory in directories:
        yield from (path for path in directory.rglob("*") if path.is_file())


def assert_no_trace(*directories: Path, traces: tuple[str, ...] = TRACES) -> None:
    for path in files_under(*directories):
        data = path.read_bytes()
        for trace in traces:
            assert trace.encode() not in data, f"{trace!r} left in {path}"


def point_at_erasures(config: Path, events: Path) -> None:
    """The copied sample config, reading the erasure list of the service under test."""
    text = re.sub(
        r'(?m)^erasures = ".*"$', f'erasures = "{events}/erasures.jsonl"', config.read_text()
    )
    assert f"{events}/erasures.jsonl" in text
    config.write_text(text)


@pytest.fixture
def client(sample_models: Path, tmp_path: Path) -> FlaskClient:
    config = ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "events", auth=False)
    return create_app(config).test_client()


def test_erasure_leaves_no_email_or_phone_on_disk(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = a_customer(sample_models, 4)
    post(
        client,
        purchase("a-1", f"email:{EMAIL}", "22423"),
        purchase("a-2", f"phone:{PHONE}", "22423"),
    )
    post(client, purchase("a-3", customer, "85099B"))  # someone else's line stays
    events = tmp_path / "events"
    assert any(b"ann.erased" in p.read_bytes().lower() for p in files_under(events))

    assert client.delete(f"/v1/customers/email:{EMAIL}").status_code == 200
    assert client.delete(f"/v1/customers/phone:{PHONE}").status_code == 200

    assert_no_trace(events)
    remaining = [p for p in events.glob("events-*.jsonl") if b"a-3" in p.read_bytes()]
    assert remaining, "the other customer's event was redacted too"
    for key in (f"email:{EMAIL}", f"phone:{PHONE}"):
        status, body = post(client, purchase(f"again-{key}", key, "22423"))
        assert status == 422 and body["rejected"][0]["errors"] == [
            "customer: this customer was erased"
        ]
    assert_no_trace(events)

    # Retrained with the erasure list and the redacted event log: nothing in the bundle either.
    config = sample_config_copy(tmp_path)
    config.write_text(
        config.read_text()
        + f'\n[[sources]]\nname = "live"\nkind = "events"\npath = "{events}/events-*.jsonl"\n'
    )
    point_at_erasures(config, events)
    models = tmp_path / "models"
    train(load_config(config), models)
    assert_no_trace(models, events)


def test_a_key_naming_nobody_is_404_and_a_bad_key_400(client: FlaskClient, tmp_path: Path) -> None:
    response = client.delete("/v1/customers/email:nobody.here@example.com")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    erasures = (tmp_path / "events" / "erasures.jsonl").read_text()
    assert erasures.count("\n") == 1 and "nobody" not in erasures  # recorded, as digests
    response = client.delete("/v1/customers/emial:ann@example.com")
    assert response.status_code == 400 and "emial" in response.get_json()["detail"]
    assert client.delete("/v1/customers/email:not-an-address").status_code == 400


def test_erasure_holds_while_redis_is_down_and_after_it_lost_its_data(
    sample_models: Path, tmp_path: Path
) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path / "events", auth=False, redis_url=server.url
    )
    first, second = create_app(config).test_client(), create_app(config).test_client()
    customer = a_customer(sample_models, 6)
    try:
        assert post(first, purchase("r-1", customer, "22423"))[0] == 200
        assert first.delete(f"/v1/customers/{customer}").status_code == 200

        def unknown_everywhere() -> None:
            for client in (first, second):  # two workers: the other one never saw the DELETE
                for _ in range(6):
                    body = client.get(f"/v1/customers/{customer}/recommendations").get_json()
                    assert body["fallback"] is True
                    profile = client.get(f"/v1/customers/{customer}/profile").get_json()
                    assert profile["known"] is False and profile["spend"] == 0

        unknown_everywhere()
        server.stop()
        unknown_everywhere()
        server.start()  # empty
        time.sleep(1.1)
        unknown_everywhere()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = post(second, purchase("r-2", customer, "22423"))
            if status != 503:
                break
            time.sleep(0.1)
        assert status == 422 and body["rejected"][0]["errors"] == [
            "customer: this customer was erased"
        ]
        unknown_everywhere()
    finally:
        server.stop()


def test_events_for_an_erased_customer_are_rejected_after_a_retrain(
    sample_models: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    config = ServiceConfig(models_dir=sample_models, events_dir=events, auth=False)
    client = create_app(config).test_client()
    customer = a_customer(sample_models, 8)
    assert client.delete(f"/v1/customers/{customer}").status_code == 200

    training = sample_config_copy(tmp_path)
    point_at_erasures(training, events)
    models = tmp_path / "models"
    train(load_config(training), models)
    retrained = create_app(ServiceConfig(models_dir=models, events_dir=events, auth=False))
    again = retrained.test_client()
    for key in (customer, f"shop:{customer}", f"legacy:{customer}"):
        status, body = post(again, purchase(f"x-{key}", key, "22423"))
        assert status == 422, key
        assert again.get(f"/v1/customers/{key}/recommendations").get_json()["fallback"] is True


def test_returns_are_bounded_by_what_was_bought(client: FlaskClient, sample_models: Path) -> None:
    customer = a_customer(sample_models, 9)
    status, body = post(
        client, purchase("ret-1", customer, "NEVER-BOUGHT", quantity=-1000, price=1000)
    )
    assert status == 422
    assert body["rejected"][0]["errors"] == [
        "item_id: this customer has not bought NEVER-BOUGHT; nothing to return"
    ]
    # Bought in this batch, then returned in part, then more than what is left.
    status, body = post(
        client,
        purchase("ret-2", customer, "NEW-ITEM", quantity=2),
        purchase("ret-3", customer, "NEW-ITEM", quantity=-1),
        purchase("ret-4", customer, "NEW-ITEM", quantity=-5),
    )
    assert body["accepted"] == ["ret-2", "ret-3"]
    assert body["rejected"][0]["errors"] == ["quantity: returns 5 but the customer holds 1"]
    profile = client.get(f"/v1/customers/{customer}/profile").get_json()
    assert profile["spend"] >= 0 and profile["tier"]["spend"] >= 0


def test_any_key_an_event_accepts_can_be_read_and_erased(client: FlaskClient) -> None:
    key = "email:o'brien/sales+x@example.com"
    assert post(client, purchase("slash-1", key, "22423"))[1]["accepted"] == ["slash-1"]
    encoded = urllib.parse.quote(key, safe="")
    profile = client.get(f"/v1/customers/~/profile?key={encoded}").get_json()
    assert profile["since_training"]["events"] == 1
    assert client.delete(f"/v1/customers/~?key={encoded}").status_code == 200
    again = client.get(f"/v1/customers/~/profile?key={encoded}").get_json()
    assert again["known"] is False and again["since_training"]["events"] == 0


@pytest.mark.parametrize("bad", ["\x7f", "\u2028", "\u202e", "\u200b", "\ufeff"])
def test_invisible_characters_are_refused_in_event_ids_and_keys(
    client: FlaskClient, bad: str
) -> None:
    status, body = post(client, purchase(f"id{bad}1", f"email:a{bad}@example.com", "22423"))
    assert status == 422
    errors = body["rejected"][0]["errors"]
    assert [e.split(":")[0] for e in errors] == ["event_id", "customer"]
    assert all("control or invisible character" in e for e in errors)
    assert "@example.com" not in str(body)
    response = client.delete(f"/v1/customers/~?key={urllib.parse.quote('x' + bad)}")
    assert response.status_code == 400


def test_a_torn_last_line_is_cut_before_the_next_record(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = a_customer(sample_models, 11)
    assert post(client, purchase("t-1", customer, "22423"))[1]["accepted"] == ["t-1"]
    (log,) = (tmp_path / "events").glob("events-*.jsonl")
    with log.open("a") as handle:
        handle.write('{"customer":"x","event_id":"torn')  # a write that never finished
    assert post(client, purchase("t-2", customer, "22423"))[1]["accepted"] == ["t-2"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event_id"] for r in records] == ["t-1", "t-2"]


def test_the_store_holds_no_address_of_a_customer_reported_by_email(
    client: FlaskClient, tmp_path: Path
) -> None:
    key = "email:clear.text@example.net"
    post(client, purchase("c-1", key, "22423", quantity=1, price=5000.0))  # tier up, thresholds
    picks = client.get(f"/v1/customers/{key}/email-picks?send_id=s1").get_json()
    assert picks["customer_id"] == key  # the answer names them as asked
    again = client.get(f"/v1/customers/{key}/email-picks?send_id=s1").get_json()
    assert again == picks
    store = [p for p in (tmp_path / "events").iterdir() if p.name.startswith("store.sqlite3")]
    assert store and all(b"clear.text" not in p.read_bytes() for p in store)
    assert all(p.stat().st_mode & 0o077 in (0, 0o040) for p in store)  # not world-readable


def test_a_purchase_dated_before_the_tier_window_leaves_the_tier_as_it_was(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = a_customer(sample_models, 12)
    before = client.get(f"/v1/customers/{customer}/profile").get_json()
    old = purchase("w-old", customer, "22423", price=5000.0, timestamp="2009-01-05T10:00:00Z")
    assert post(client, old)[1]["accepted"] == ["w-old"]
    after = client.get(f"/v1/customers/{customer}/profile").get_json()
    assert after["tier"]["spend"] == before["tier"]["spend"]  # outside the 365-day window
    assert after["spend"] == pytest.approx(before["spend"] + 5000.0)  # lifetime counts it
    assert not [
        t
        for t in client.get("/v1/triggers").get_json()["triggers"]
        if t["kind"] == "tier_up" and t["customer_id"] == customer
    ]


def test_a_retrain_deletes_the_earlier_bundles_that_hold_an_erased_customer(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events"
    training = sample_config_copy(tmp_path)
    point_at_erasures(training, events)
    models = tmp_path / "models"
    first = train(load_config(training), models).version
    client = create_app(ServiceConfig(models_dir=models, events_dir=events, auth=False))
    customer = a_customer(models, 5)
    assert client.test_client().delete(f"/v1/customers/{customer}").status_code == 200
    time.sleep(1.1)  # versions are named by the second
    second = train(load_config(training), models).version
    assert not (models / first).exists() and (models / second).is_dir()
