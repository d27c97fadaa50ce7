"""The seeded synthetic interaction generator (``training.synthetic``): the same seed gives
the same events, every event is one the service accepts, and the truth it returns is what the
events say."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from recsvc.bundle import load_current
from recsvc.schemas import MAX_BATCH
from training.synthetic import Catalog, Impression, Plan, generate

DAY = date(2011, 12, 10)
SEED = 7


@pytest.fixture(scope="module")
def catalog(sample_models: Path) -> Catalog:
    return Catalog.from_bundle(load_current(sample_models))


def test_the_generator_is_seeded_and_its_events_are_valid(catalog: Catalog) -> None:
    first = generate(catalog, DAY, days=2, seed=SEED, click_through={"a": 0.1, "b": 0.3})
    again = generate(catalog, DAY, days=2, seed=SEED, click_through={"a": 0.1, "b": 0.3})
    other = generate(catalog, DAY, days=2, seed=SEED + 1, click_through={"a": 0.1, "b": 0.3})
    assert first.events == again.events and first.truth == again.truth
    assert first.events != other.events
    kinds = Counter(event["kind"] for event in first.events)
    assert set(kinds) == {
        "view",
        "cart_add",
        "cart_remove",
        "purchase",
        "login",
        "email_open",
        "email_click",
        "rec_click",
        "unsubscribe",
    }
    records = first.log_records()  # each validated as the service validates it
    assert len(records) == len(first.events)
    assert len({event["event_id"] for event in first.events}) == len(first.events)
    stamps = [event["timestamp"] for event in first.events]
    assert stamps == sorted(stamps)
    batches = first.batches()
    assert all(len(batch["events"]) <= MAX_BATCH for batch in batches)
    assert sum(len(batch["events"]) for batch in batches) == len(first.events)


def test_the_truth_is_what_the_events_say(catalog: Catalog) -> None:
    synthetic = generate(catalog, DAY, days=3, seed=SEED)
    events = synthetic.events
    position = {item: i for i, item in enumerate(catalog.item_ids)}
    for session in synthetic.truth.sessions:
        members = set(catalog.categories[session.category])
        assert {position[item] for item in session.viewed} <= members
        mine = [e for e in events if session.session in (e["customer"], e.get("session"))]
        bought = [e["item_id"] for e in mine if e["kind"] == "purchase"]
        assert sorted(bought) == sorted(session.bought)
        logins = [e for e in mine if e["kind"] == "login"]
        if session.customer is None:
            assert not logins and all(e["customer"] == session.session for e in mine)
        else:
            assert [(e["customer"], e["session"]) for e in logins] == [
                (session.customer, session.session)
            ]
            after = mine[mine.index(logins[0]) :]
            assert all(e["customer"] == session.customer for e in after)
            if session.bought_before_login:
                assert all(
                    e["customer"] == session.session for e in mine if e["kind"] == "purchase"
                )
    for browser in synthetic.truth.browsers:
        members = set(catalog.categories[browser.category])
        viewed = [e["item_id"] for e in events if e["customer"] == browser.customer]
        assert viewed == list(browser.viewed) and {position[i] for i in viewed} <= members
    for habit in synthetic.truth.habits:
        opens = [e for e in events if e["customer"] == habit.customer and e["kind"] == "email_open"]
        assert len(opens) == habit.opens
        assert {datetime.fromisoformat(e["timestamp"]).hour for e in opens} <= {habit.open_hour}
        clicks = [
            e for e in events if e["customer"] == habit.customer and e["kind"] == "email_click"
        ]
        assert len(clicks) == habit.clicks <= habit.opens <= habit.sends
        assert habit.sends == 3 or habit.unsubscribed  # no send after an unsubscribe


def test_recommendation_clicks_come_at_each_arms_rate(catalog: Catalog) -> None:
    plan = Plan(sessions=0, browsers=0, email_customers=0, impressions=4000)
    synthetic = generate(catalog, DAY, seed=SEED, plan=plan, click_through={"a": 0.05, "b": 0.2})
    clicks = Counter(e["model_version"] for e in synthetic.events if e["kind"] == "rec_click")
    for arm, rate in (("a", 0.05), ("b", 0.2)):
        truth = synthetic.truth.arms[arm]
        assert truth.impressions == 2000 and truth.clicks == clicks[arm]
        assert abs(truth.clicks / truth.impressions - rate) < 0.025  # > 3 standard errors
    # Given impressions (another component's), clicks name them.
    shown = Impression(
        "imp-1",
        catalog.customers[0],
        "c",
        catalog.item_ids[:3],
        datetime(2011, 12, 10, 9, tzinfo=UTC),
    )
    clicked = generate(
        catalog, DAY, seed=SEED, plan=plan, click_through={"c": 1.0}, impressions=[shown]
    )
    (click,) = clicked.events
    assert click["impression_id"] == "imp-1" and click["item_id"] in shown.items
    assert shown.items[click["rank"] - 1] == click["item_id"]
