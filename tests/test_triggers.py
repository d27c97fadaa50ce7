"""The triggers feed: one order, cursors that survive triggers fired between pages, erasure."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.bundle import BundleArrays, publish_bundle
from recsvc.config import ServiceConfig
from recsvc.identity import CANONICAL, IdentityKey
from recsvc.manifest import Manifest
from recsvc.policy import DEFAULT_LEVELS, TierPolicy
from recsvc.store import customer_key
from recsvc.triggers import (
    KINDS,
    BadCursor,
    Key,
    TriggerIndex,
    decode_cursor,
    encode_cursor,
    live_since,
)
from tests.redis_server import STORE_KINDS, store_url
from tests.test_bundle import tiny_arrays

KEY = IdentityKey.development_key()

T0 = 1_300_000_000  # 2011-03-13
# (seconds after T0, customer row, kind, reason), deliberately not in feed order: ties on the
# time, and on time, customer and kind (two thresholds crossed by one order).
BUNDLE_TRIGGERS = [
    (500, 1, "lapsing", "overdue"),
    (200, 0, "threshold", "lifetime spend reached 50"),
    (100, 1, "lapsing", "overdue"),
    (400, 0, "thank_you", "a loyal customer: thank them"),
    (200, 0, "threshold", "lifetime spend reached 100"),
    (300, 1, "tier_up", "moved up from bronze to silver"),
    (100, 0, "lapsing", "overdue"),
]


def with_triggers(arrays: BundleArrays, triggers: list[tuple[int, int, str, str]]) -> BundleArrays:
    return dataclasses.replace(
        arrays,
        trigger_rows=np.array([row for _, row, _, _ in triggers], dtype=np.int32),
        trigger_kinds=np.array([kind for _, _, kind, _ in triggers], dtype=np.str_),
        trigger_at=np.array([T0 + at for at, _, _, _ in triggers], dtype=np.int64),
        trigger_reasons=np.array([reason for _, _, _, reason in triggers], dtype=np.str_),
        trigger_figures=np.array(
            [
                json.dumps({"n": i, "ratio": math.nan if i == 1 else 1.5})
                for i in range(len(triggers))
            ],
            dtype=np.str_,
        ),
    )


@pytest.fixture(params=STORE_KINDS)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    models = tmp_path / "models"
    tiers = TierPolicy(window_days=365.0, levels=DEFAULT_LEVELS, spend_thresholds=(100.0,))
    publish_bundle(
        models, "v1", with_triggers(tiny_arrays(), BUNDLE_TRIGGERS), Manifest(tiers=tiers)
    )
    redis_url = store_url(request, request.param)
    config = ServiceConfig(
        models_dir=models,
        events_dir=tmp_path / "events",
        auth=False,
        redis_url=redis_url,
        event_retention_days=100 * 365,  # events at 2011 times (see fire) stay in the store
    )
    yield create_app(config)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def fire(app: Flask, customer: str, seconds: int) -> None:
    """A purchase by ``customer`` at T0 + ``seconds`` that crosses the 100 spend threshold."""
    moment = at(seconds)
    service_of(app).realtime.clock = lambda: moment  # the clock is a seam
    event = {
        "event_id": f"{customer}-{seconds}",
        "customer": customer,
        "item_id": "i1",
        "quantity": 1,
        "price": 150.0,
        "timestamp": moment.isoformat(),
    }
    assert app.test_client().post("/v1/events", json={"events": [event]}).status_code == 200


def feed(client: FlaskClient, query: str = "") -> dict[str, Any]:
    response = client.get(f"/v1/triggers?{query}")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def keys(triggers: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(t["fired_at"], t["customer_id"], t["kind"], t["reason"]) for t in triggers]


def expected(seconds: int, customer: str, kind: str, reason: str) -> tuple[str, str, str, str]:
    return at(seconds).isoformat(), customer, kind, reason


def test_the_feed_is_in_one_order_with_its_figures(app: Flask) -> None:
    body = feed(app.test_client())
    assert keys(body["triggers"]) == [
        expected(100, "c1", "lapsing", "overdue"),
        expected(100, "c2", "lapsing", "overdue"),
        expected(200, "c1", "threshold", "lifetime spend reached 100"),
        expected(200, "c1", "threshold", "lifetime spend reached 50"),
        expected(300, "c2", "tier_up", "moved up from bronze to silver"),
        expected(400, "c1", "thank_you", "a loyal customer: thank them"),
        expected(500, "c2", "lapsing", "overdue"),
    ]
    assert body["next_cursor"] is None and body["model_version"] == "v1"
    figures = {t["reason"]: t["figures"] for t in body["triggers"] if t["kind"] == "threshold"}
    assert figures == {
        "lifetime spend reached 50": {"n": 1, "ratio": None},  # the trainer's NaN, as null
        "lifetime spend reached 100": {"n": 4, "ratio": 1.5},
    }


def test_pages_neither_repeat_nor_skip_when_triggers_fire_between_them(app: Flask) -> None:
    client = app.test_client()
    first = feed(client, "limit=3")
    assert keys(first["triggers"]) == [
        expected(100, "c1", "lapsing", "overdue"),
        expected(100, "c2", "lapsing", "overdue"),
        expected(200, "c1", "threshold", "lifetime spend reached 100"),
    ]
    # Between pages: one trigger fires before the cursor (an offset would then repeat the
    # last trigger seen), one after it (it must come in its place).
    fire(app, "c2", 150)
    fire(app, "c1", 350)
    second = feed(client, f"limit=3&cursor={first['next_cursor']}")
    assert keys(second["triggers"]) == [
        expected(200, "c1", "threshold", "lifetime spend reached 50"),
        expected(300, "c2", "tier_up", "moved up from bronze to silver"),
        expected(350, "c1", "threshold", "lifetime spend reached 100"),
    ]
    third = feed(client, f"limit=3&cursor={second['next_cursor']}")
    assert keys(third["triggers"]) == [
        expected(400, "c1", "thank_you", "a loyal customer: thank them"),
        expected(500, "c2", "lapsing", "overdue"),
    ]
    assert third["next_cursor"] is None
    everything = keys(feed(client)["triggers"])
    assert expected(150, "c2", "threshold", "lifetime spend reached 100") in everything
    assert len(everything) == 9


def test_kind_since_and_cursor_filter_together(app: Flask) -> None:
    client = app.test_client()
    fire(app, "c2", 250)
    query = f"kind=threshold,lapsing&since={at(100).isoformat().replace('+00:00', 'Z')}"
    seen: list[tuple[str, str, str, str]] = []
    page = feed(client, f"{query}&limit=1")
    while True:
        assert len(page["triggers"]) <= 1
        seen += keys(page["triggers"])
        if page["next_cursor"] is None:
            break
        page = feed(client, f"{query}&limit=1&cursor={page['next_cursor']}")
    assert seen == [
        expected(200, "c1", "threshold", "lifetime spend reached 100"),
        expected(200, "c1", "threshold", "lifetime spend reached 50"),
        expected(250, "c2", "threshold", "lifetime spend reached 100"),
        expected(500, "c2", "lapsing", "overdue"),
    ]


def test_erased_customers_never_appear(app: Flask) -> None:
    client = app.test_client()
    fire(app, "c1", 600)
    fire(app, "c2", 700)
    assert client.delete("/v1/customers/c1").status_code == 200
    seen: list[tuple[str, str, str, str]] = []
    page = feed(client, "limit=1")
    while True:
        seen += keys(page["triggers"])
        if page["next_cursor"] is None:
            break
        page = feed(client, f"limit=1&cursor={page['next_cursor']}")
    assert {customer for _, customer, _, _ in seen} == {"c2"}
    assert seen == [
        expected(100, "c2", "lapsing", "overdue"),
        expected(300, "c2", "tier_up", "moved up from bronze to silver"),
        expected(500, "c2", "lapsing", "overdue"),
        expected(700, "c2", "threshold", "lifetime spend reached 100"),
    ]


@pytest.mark.parametrize(
    "cursor",
    [
        "2",  # an offset, as cursors were
        "not base64!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'[1, "c1", "birthday", "r"]').decode(),
        base64.urlsafe_b64encode(b'["1", "c1", "lapsing", "r"]').decode(),
        base64.urlsafe_b64encode(b'[true, "c1", "lapsing", "r"]').decode(),
        base64.urlsafe_b64encode(b'[1e999, "c1", "lapsing", "r"]').decode(),
        base64.urlsafe_b64encode(b'[1, "secret-customer", "lapsing", 5]').decode(),
        "A" * 5000,
    ],
)
def test_a_bad_cursor_is_a_400_that_does_not_echo_it(app: Flask, cursor: str) -> None:
    response = app.test_client().get("/v1/triggers", query_string={"cursor": cursor})
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    body = response.get_data(as_text=True)
    assert "cursor" in body and "secret-customer" not in body and cursor[:12] not in body


def test_cursors_round_trip() -> None:
    for key in (Key(T0, "c1", "lapsing", "r"), Key(T0 + 0.123456, "ü:1", "tier_up", "")):
        assert decode_cursor(encode_cursor(key)) == key
    with pytest.raises(BadCursor):
        decode_cursor("")


def live_record(at: float, customer: str, kind: str, reason: str) -> str:
    """A trigger as the real-time store keeps it (see recsvc.realtime)."""
    return json.dumps(
        {
            "fired_at": at,
            "store_key": customer_key(KEY, f"{CANONICAL}:{customer}"),
            "customer_id": customer,
            "kind": kind,
            "reason": reason,
            "figures": {},
        }
    )


def test_pages_match_a_plain_sort_and_filter() -> None:
    """Against a reference: every trigger, filtered and sorted in Python, paged through with
    random limits, kinds, since and erasures (many ties on time)."""
    generator = random.Random(5)
    customers = [f"c{i}" for i in range(40)]
    arrays = dataclasses.replace(tiny_arrays(), customer_ids=np.array(customers))
    triggers = [
        (generator.randrange(30), generator.randrange(40), generator.choice(KINDS), f"r{n % 3}")
        for n in range(400)
    ]
    index = TriggerIndex(with_triggers(arrays, triggers), KEY)
    fired = [
        (T0 + generator.randrange(40) + generator.choice([0.0, 0.5]), generator.choice(customers))
        for _ in range(60)
    ]
    fired = [(t, c, generator.choice(KINDS)) for t, c in fired]
    live = sorted(fired + fired[::6], key=lambda trigger: trigger[0])  # oldest first, repeats
    records = [live_record(t, c, kind, "live") for t, c, kind in live]
    everything = [
        (float(T0 + a), customers[row], kind, reason) for a, row, kind, reason in triggers
    ]
    everything += [(t, c, kind, "live") for t, c, kind in live]
    for _ in range(40):
        kinds = set(generator.sample(KINDS, generator.randint(1, len(KINDS))))
        since = T0 + generator.choice([-1, 5, 17.5])
        erased_customers = set(generator.sample(customers, generator.randint(0, 10)))
        erased = {customer_key(KEY, f"{CANONICAL}:{c}") for c in erased_customers}
        want = sorted(
            {
                key
                for key in everything
                if key[2] in kinds and key[0] > since and key[1] not in erased_customers
            }
        )  # a key names one trigger: repeats are one
        limit = generator.choice([1, 2, 7, 50, 1000])
        got: list[tuple[float, str, str, str]] = []
        after: Key | None = None
        while True:
            bound = live_since(since, after)  # what the store is asked for
            from_store = [r for (t, _, _), r in zip(live, records, strict=True) if t > bound]
            page, after = index.page(from_store, erased, kinds, since, after, limit)
            assert len(page) <= limit
            got += [
                (
                    datetime.fromisoformat(t["fired_at"]).timestamp(),
                    t["customer_id"],
                    t["kind"],
                    t["reason"],
                )
                for t in page
            ]
            if after is None:
                break
        assert got == want
