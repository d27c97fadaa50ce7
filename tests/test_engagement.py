"""Email engagement with known answers: opens and clicks in the profile, the best contact
time from habitual opens (else orders, else the population), the ``disengaged`` trigger, an
unsubscribe that email picks and ``export-picks`` honour, erasure, a Redis outage, and the
settings from the training config; on the embedded store and on Redis."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc import engagement
from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.policy import DISENGAGED_OPENS, MIN_OPENS_FOR_TIMING, TierPolicy
from recsvc.signals import WEEKDAYS
from recsvc.store import StoredEvent
from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from tests.redis_server import STORE_KINDS, RedisProcess
from tests.redis_server import store_url as url_for_kind
from tests.test_openapi import check
from training.cli import main
from training.config import load_config
from training.errors import ConfigError
from training.pipeline import train

# Wednesdays, at 07:xx UTC.
WEDNESDAYS = ["2011-11-09", "2011-11-16", "2011-11-23", "2011-11-30", "2011-12-07"]
RULES = TierPolicy()


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None: the embedded store; else the test Redis or cluster, flushed around the test."""
    return url_for_kind(request, request.param)


@pytest.fixture
def app(sample_models: Path, tmp_path: Path, store_url: str | None) -> Flask:
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path / "events", auth=False, redis_url=store_url
    )
    return create_app(config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def event(event_id: str, customer: str, kind: str, when: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "customer": customer, "kind": kind, "timestamp": when, **fields}


def opens(customer: str, count: int, prefix: str = "o", hour: int = 7) -> list[dict[str, Any]]:
    """``count`` opens of as many sends, on Wednesdays at ``hour``:05 (one a week, then
    the same Wednesdays again an hour later)."""
    return [
        event(
            f"{prefix}{number}",
            customer,
            "email_open",
            f"{WEDNESDAYS[number % 5]}T{hour + number // 5:02d}:05:00Z",
            send_id=f"{prefix}-send-{number}",
        )
        for number in range(count)
    ]


def post(client: FlaskClient, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def signals(client: FlaskClient, key: str) -> dict[str, Any]:
    response = client.get(f"/v1/customers/{key}/profile")
    assert response.status_code == 200, response.get_data(as_text=True)
    found: dict[str, Any] = response.get_json()["signals"]
    return found


def disengaged(client: FlaskClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get("/v1/triggers?kind=disengaged").get_json()["triggers"]
    return found


def a_customer(models: Path, own_timing: bool = True, not_hour: int = 7) -> str:
    """A customer whose best contact time the bundle has from their own orders (or not),
    at another hour than ``not_hour``."""
    arrays = load_current(models).arrays
    for row, customer in enumerate(arrays.customer_ids.tolist()):
        if bool(arrays.timing_own[row]) == own_timing and int(arrays.best_hour[row]) != not_hour:
            return str(customer)
    raise AssertionError("no such customer in the sample")


# The rules, on events alone


def stored(kind: str, when: str, send_id: str | None = None, received: float = 0.0) -> StoredEvent:
    return StoredEvent(
        event_id=f"{kind}-{when}-{send_id}",
        item_id="",
        quantity=0.0,
        price=0.0,
        timestamp=when,
        source="api",
        received_at=received,
        kind=kind,
        send_id=send_id,
    )


def test_counts_rates_and_the_habitual_open_time() -> None:
    events = [
        stored("email_open", "2011-11-09T07:05:00+00:00", "a"),
        stored("email_open", "2011-11-09T07:30:00+00:00", "a"),  # the same send again
        stored("email_open", "2011-11-16T07:05:00+00:00", "b"),
        stored("email_open", "2011-11-19T21:00:00+00:00", "c"),  # a Saturday evening
        stored("email_click", "2011-11-16T07:06:00+00:00", "b"),
        stored("email_click", "2011-11-20T10:00:00+00:00", "d"),  # no open seen: pixel blocked
        stored("view", "2011-11-20T10:01:00+00:00"),  # not email
    ]
    found = engagement.of(events)
    assert (found.opens, found.clicks) == (4, 2)
    assert (found.sends_opened, found.sends_clicked) == (4, 2)  # a, b, c, d; b, d
    assert found.click_rate == 0.5
    assert found.last_open == datetime.fromisoformat("2011-11-19T21:00:00+00:00")
    assert (found.open_hour, found.open_weekday) == (7, 2)  # three of four at 07, Wednesday
    assert found.sends_opened_since_click == 0  # the latest click came last
    assert found.best_contact(RULES) is None  # 4 opens, fewer than MIN_OPENS_FOR_TIMING
    assert found.best_contact(TierPolicy(min_opens_for_timing=4)) == (7, 2)
    assert engagement.of([]) == engagement.NONE and engagement.NONE.click_rate is None


def test_a_tie_goes_to_the_earlier_hour_and_weekday() -> None:
    found = engagement.of(
        [
            stored("email_open", "2011-11-10T09:00:00+00:00", "a"),  # Thursday
            stored("email_open", "2011-11-08T18:00:00+00:00", "b"),  # Tuesday
        ]
    )
    assert (found.open_hour, found.open_weekday) == (9, 1)


def test_the_streak_counts_sends_opened_since_the_last_click() -> None:
    rules = TierPolicy(disengaged_opens=3)
    events = [stored("email_open", f"2011-11-0{day}T07:00:00+00:00", f"s{day}") for day in (1, 2)]
    events.append(stored("email_open", "2011-11-02T08:00:00+00:00", "s2"))  # again: one send
    assert engagement.of(events).sends_opened_since_click == 2
    assert not engagement.of(events).disengaged(rules)
    events.append(stored("email_open", "2011-11-03T07:00:00+00:00", "s3"))
    assert engagement.of(events).disengaged(rules)
    # A click reported late still counts at its own time: after s1 and s2, before s3.
    events.append(stored("email_click", "2011-11-02T09:00:00+00:00", "s2", received=9.0))
    assert engagement.of(events).sends_opened_since_click == 1
    # Unsubscribed: nobody to win back by email.
    streak = [stored("email_open", f"2011-11-1{day}T07:00:00+00:00", f"t{day}") for day in range(4)]
    unsubscribe = stored("unsubscribe", "2011-11-20T07:00:00+00:00")
    assert engagement.of(streak).disengaged(rules)
    assert not engagement.of([*streak, unsubscribe]).disengaged(rules)
    assert engagement.of([*streak, unsubscribe]).unsubscribed_at == datetime.fromisoformat(
        "2011-11-20T07:00:00+00:00"
    )


# Through the API


def test_a_customer_who_always_opens_at_seven_gets_best_hour_seven(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = a_customer(sample_models)
    before = signals(client, customer)
    assert before["best_contact"]["from"] == "own orders"
    assert before["email"] == {
        "opens": 0,
        "clicks": 0,
        "sends_opened": 0,
        "sends_clicked": 0,
        "click_rate": None,
        "last_open": None,
        "sends_opened_since_click": 0,
        "disengaged": False,
        "unsubscribed": False,
        "unsubscribed_at": None,
    }
    post(client, *opens(customer, MIN_OPENS_FOR_TIMING))
    post(
        client,
        event("c1", customer, "email_click", "2011-12-07T07:06:00Z", send_id="o-send-4"),
        event("c2", customer, "email_click", "2011-12-07T07:07:00Z", send_id="o-send-4"),
    )
    after = signals(client, customer)
    assert after["best_contact"] == {"hour": 7, "weekday": "Wednesday", "from": "own opens"}
    assert after["email"] == {
        "opens": 5,
        "clicks": 2,
        "sends_opened": 5,
        "sends_clicked": 1,
        "click_rate": 0.2,
        "last_open": "2011-12-07T07:05:00Z",
        "sends_opened_since_click": 0,
        "disengaged": False,
        "unsubscribed": False,
        "unsubscribed_at": None,
    }


def test_fewer_opens_fall_back_to_their_orders_then_the_population(
    client: FlaskClient, sample_models: Path
) -> None:
    bundle = load_current(sample_models)
    customer = a_customer(sample_models)
    row = int((bundle.arrays.customer_ids == customer).nonzero()[0][0])
    post(client, *opens(customer, MIN_OPENS_FOR_TIMING - 1))
    assert signals(client, customer)["best_contact"] == {
        "hour": int(bundle.arrays.best_hour[row]),
        "weekday": WEEKDAYS[int(bundle.arrays.best_weekday[row])],
        "from": "own orders",
    }
    stranger = "email:new.reader@example.com"
    post(client, *opens(stranger, MIN_OPENS_FOR_TIMING - 1, prefix="s"))
    rules = bundle.manifest.tiers
    assert rules.population_best_hour != 7
    assert signals(client, stranger)["best_contact"] == {
        "hour": rules.population_best_hour,
        "weekday": WEEKDAYS[rules.population_best_weekday],
        "from": "population",
    }
    post(client, *opens(stranger, 1, prefix="t"))  # the fifth open
    assert signals(client, stranger)["best_contact"]["from"] == "own opens"


def test_opens_without_a_click_fire_one_disengaged_trigger_per_run(
    client: FlaskClient, sample_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    customer = a_customer(sample_models)
    address = "email:quiet.reader@example.com"
    run = opens(customer, DISENGAGED_OPENS + 1)
    post(client, *run[: DISENGAGED_OPENS - 1])
    assert disengaged(client) == []
    post(client, run[DISENGAGED_OPENS - 1])  # the fifth send opened without a click
    fired = disengaged(client)
    assert [(t["customer_id"], t["reason"]) for t in fired] == [
        (customer, "opened 5 emails in a row without a click")
    ]
    assert fired[0]["figures"] == {
        "sends_opened_since_click": 5,
        "sends_opened": 5,
        "sends_clicked": 0,
    }
    assert signals(client, customer)["email"]["disengaged"] is True
    post(client, run[DISENGAGED_OPENS])  # a sixth: the same run
    assert post(client, run[DISENGAGED_OPENS - 1])["duplicates"] == ["o4"]
    assert len(disengaged(client)) == 1

    post(client, event("c1", customer, "email_click", "2011-12-08T07:00:00Z", send_id="o-send-5"))
    assert signals(client, customer)["email"]["disengaged"] is False
    again = [
        event(f"n{day}", customer, "email_open", f"2011-12-{day:02d}T07:00:00Z", send_id=f"n{day}")
        for day in range(9, 9 + DISENGAGED_OPENS)
    ]
    post(client, *again)  # a new run, in one batch
    assert len(disengaged(client)) == 2

    # A customer the bundle does not know is named by their store key, never the address.
    post(client, *opens(address, DISENGAGED_OPENS, prefix="q"))
    named = disengaged(client)[-1]["customer_id"]
    assert "@" not in named and "quiet.reader" not in named
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "quiet.reader" not in logged and customer not in logged


def test_a_batch_with_the_fifth_open_and_the_click_that_ends_the_run_still_fires(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = a_customer(sample_models)
    run = opens(customer, DISENGAGED_OPENS)
    click = event("c1", customer, "email_click", "2011-12-30T07:00:00Z", send_id="o-send-4")
    post(client, *run, click)
    assert [t["customer_id"] for t in disengaged(client)] == [customer]
    assert signals(client, customer)["email"]["disengaged"] is False


def test_an_unsubscribed_customer_gets_409_from_email_picks(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = a_customer(sample_models)
    url = f"/v1/customers/{customer}/email-picks?send_id=dec&n=3"
    assert client.get(url).status_code == 200
    post(client, *opens(customer, DISENGAGED_OPENS))
    assert signals(client, customer)["email"]["disengaged"] is True
    post(client, event("u1", customer, "unsubscribe", "2011-12-10T10:00:00Z", send_id="dec"))
    post(client, event("u2", customer, "unsubscribe", "2011-12-11T10:00:00Z"))
    for answer in (client.get(url), client.get(url + "&format=html")):
        assert answer.status_code == 409 and answer.mimetype == "application/problem+json"
        assert answer.get_json() == {
            "type": "about:blank",
            "title": "Unsubscribed",
            "status": 409,
            "detail": "this customer unsubscribed from email on 2011-12-10",
        }
    document = client.get("/openapi.json").get_json()
    check(document, client.get(url), "/v1/customers/{key}/email-picks", "get")
    check(
        document,
        client.get(f"/v1/customers/{customer}/profile"),
        "/v1/customers/{key}/profile",
        "get",
    )
    email = signals(client, customer)["email"]
    assert email["unsubscribed"] is True and email["unsubscribed_at"] == "2011-12-10T10:00:00Z"
    assert email["disengaged"] is False
    other = next(c for c in load_current(sample_models).arrays.customer_ids if c != customer)
    assert client.get(f"/v1/customers/{other}/email-picks?send_id=dec").status_code == 200


def test_export_picks_skips_and_counts_the_unsubscribed(
    client: FlaskClient,
    sample_models: Path,
    tmp_path: Path,
    store_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arrays = load_current(sample_models).arrays
    first, second, third = (str(customer) for customer in arrays.customer_ids[:3])
    post(client, event("u1", second, "unsubscribe", "2011-12-10T10:00:00Z"))
    if store_url is not None:
        monkeypatch.setenv("RECSVC_REDIS_URL", store_url)
    campaign = tmp_path / "campaign.txt"
    campaign.write_text(f"{first}\n{second}\n{third}\n")
    out = tmp_path / "picks.jsonl"
    command = ["export-picks", "--send-id", "dec", "--customers", str(campaign), "--out"]
    command += [str(out), "--models-dir", str(sample_models)]
    assert main([*command, "--events-dir", str(tmp_path / "events")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["customer_id"] for row in rows] == [first, third]
    summary = capsys.readouterr().out
    assert "2 customers written" in summary and "1 unsubscribed" in summary


def test_export_picks_stops_when_the_store_cannot_say_who_unsubscribed(
    sample_models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSVC_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    campaign = tmp_path / "campaign.txt"
    campaign.write_text(a_customer(sample_models) + "\n")
    out = tmp_path / "picks.jsonl"
    out.write_text("last week's export\n")
    command = ["export-picks", "--send-id", "dec", "--customers", str(campaign), "--out"]
    command += [str(out), "--models-dir", str(sample_models), "--events-dir", str(tmp_path)]
    assert main(command) == 2
    assert "an unsubscribe could not be checked; nothing written" in capsys.readouterr().err
    assert out.read_text() == "last week's export\n"


def test_erasure_takes_the_engagement_with_the_customer(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = a_customer(sample_models)
    post(client, *opens(customer, DISENGAGED_OPENS, prefix="erase-me"))
    post(client, event("u1", customer, "unsubscribe", "2011-12-10T10:00:00Z"))
    assert len(disengaged(client)) == 1
    logs = list((tmp_path / "events").glob("events-*.jsonl"))
    assert "erase-me-send" in "".join(path.read_text() for path in logs)

    assert client.delete(f"/v1/customers/{customer}").status_code == 200
    email = signals(client, customer)["email"]
    assert email["opens"] == 0 and email["unsubscribed"] is False
    assert signals(client, customer)["best_contact"]["from"] == "population"
    assert disengaged(client) == []
    for path in logs:
        assert "erase-me-send" not in path.read_text()


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


def test_opens_survive_a_redis_outage_like_purchases(
    outage: tuple[FlaskClient, RedisProcess], sample_models: Path, tmp_path: Path
) -> None:
    client, server = outage
    customer = a_customer(sample_models)
    first, second = opens(customer, 2)
    post(client, first)
    server.stop()
    refused = client.post("/v1/events", json={"events": [second]})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    logged = "".join(path.read_text() for path in (tmp_path / "events").glob("events-*.jsonl"))
    assert first["event_id"] in logged and second["event_id"] not in logged

    server.start()  # empty: the durable log is replayed into it
    time.sleep(1.1)  # past the store's cooldown
    deadline = time.monotonic() + 10
    while client.get(f"/v1/customers/{customer}/profile").get_json()["degraded"]:
        assert time.monotonic() < deadline, "the store was never restored"
        time.sleep(0.05)
    assert signals(client, customer)["email"]["opens"] == 1
    assert post(client, first)["duplicates"] == [first["event_id"]]
    assert post(client, second)["accepted"] == [second["event_id"]]
    assert signals(client, customer)["email"]["opens"] == 2


# The settings, from the training config to the service


TIERS = """
[tiers]
min_opens_for_timing = 2
disengaged_opens = 2

[[tiers.levels]]
name = "standard"
min_spend = 0
"""


def test_the_training_config_sets_both_thresholds(tmp_path: Path) -> None:
    rows = [
        [f"F{n}", f"I{(n + i) % 6}", "Item", 1, "2011-02-01 09:00:00", 2.0, f"c{n}", "UK"]
        for n in range(8)
        for i in range(3)
    ]
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, rows)
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    source = config.read_text()
    config.write_text(source.replace("[[sources]]", TIERS + "\n[[sources]]", 1))
    train(load_config(config), tmp_path / "models")
    rules = load_current(tmp_path / "models").manifest.tiers
    assert (rules.min_opens_for_timing, rules.disengaged_opens) == (2, 2)

    service = ServiceConfig(models_dir=tmp_path / "models", events_dir=tmp_path / "ev", auth=False)
    client = create_app(service).test_client()
    post(client, *opens("c1", 2, hour=22))
    assert signals(client, "c1")["best_contact"]["from"] == "own opens"
    assert signals(client, "c1")["best_contact"]["hour"] == 22
    assert [t["customer_id"] for t in disengaged(client)] == ["c1"]

    bad = TIERS.replace("disengaged_opens = 2", "disengaged_opens = 0")
    config.write_text(source.replace("[[sources]]", bad + "\n[[sources]]", 1))
    with pytest.raises(ConfigError, match="tiers.disengaged_opens"):
        load_config(config)
