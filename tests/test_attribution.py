"""One contract for impressions and attribution in the store, run against the embedded store
and a real Redis: each click or purchase counts once, for the right impression, inside the
attribution window, whichever of the event and the impression reaches the store first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.errors import StoreNotRestored
from recsvc.impressions import Impressions
from recsvc.store import (
    Applied,
    EmbeddedStore,
    Impression,
    RedisStore,
    Store,
    StoredEvent,
)
from tests.helpers import ManualClock
from tests.redis_server import STORE_KINDS, RedisProcess, store_url

RETENTION = 90 * 86400.0
WINDOW = 24 * 3600.0
START = 1_000_000.0
GROUP = ("exp", "champion", "v1", "recommendations")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "store.sqlite3", RETENTION, clock, attribution_window=WINDOW)
    else:
        redis_store = RedisStore(
            str(store_url(request, request.param)),
            "recsvc-test",
            RETENTION,
            timeout=1.0,
            clock=clock,
            attribution_window=WINDOW,
        )
        redis_store.mark_restored()
        yield redis_store
        redis_store.close()


def shown(
    impression_id: str, customer: str = "c1", items: tuple[str, ...] = ("A", "B"), at: float = START
) -> Impression:
    return Impression(
        impression_id, at, customer, "v1", "recommendations", items, "exp", "champion"
    )


def click(event_id: str, impression_id: str, item: str = "A") -> StoredEvent:
    return StoredEvent(
        event_id,
        item,
        0.0,
        0.0,
        "2011-12-10T10:00:00+00:00",
        "api",
        START,
        kind="rec_click",
        impression_id=impression_id,
        model_version="v1",
        surface="recommendations",
        rank=1,
    )


def purchase(
    event_id: str, item: str = "B", quantity: float = 2.0, session: str | None = None
) -> StoredEvent:
    return StoredEvent(
        event_id, item, quantity, 2.5, "2011-12-10T10:00:00+00:00", "api", START, session=session
    )


def figures(store: Store, group: tuple[str, str, str, str] = GROUP) -> dict[str, float]:
    found = {
        (g.experiment, g.arm, g.model_version, g.surface): g.values
        for g in store.impression_figures().figures
    }
    values = found.get(group, {})
    return {name: value for name, value in values.items() if value}


def units(store: Store) -> dict[str, float]:
    values = store.impression_figures().units.get(("exp", "champion"), {})
    return {name: value for name, value in values.items() if value}


def test_clicks_and_purchases_count_once_for_their_impression(store: Store) -> None:
    assert store.record_impressions([shown("imp1")]) == 1
    assert store.record_impressions([shown("imp1")]) == 0  # written again: one impression
    assert figures(store) == {"impressions": 1}

    batch = [("c1", click("k1", "imp1")), ("c1", click("k2", "imp1", "B"))]
    assert store.apply(batch) == [Applied.NEW, Applied.NEW]
    assert store.apply(batch) == [Applied.DUPLICATE] * 2  # a replay counts nothing
    store.apply([("c9", click("k3", "imp1", "Z"))])  # an item it did not show: not its click
    assert figures(store) == {"impressions": 1, "clicks": 2, "clicked": 1}

    store.apply([("c1", purchase("p1")), ("c1", purchase("p1"))])
    store.apply([("c1", purchase("p2", item="Z"))])  # not shown
    store.apply([("c2", purchase("p3"))])  # shown to someone else
    store.apply([("c1", purchase("p4", quantity=-1.0))])  # a return is not a conversion
    assert figures(store) == {
        "impressions": 1,
        "clicks": 2,
        "clicked": 1,
        "purchases": 1,
        "converted": 1,
        "revenue": 5.0,
    }
    # One customer with 1 impression, 1 clicked, 1 converted, 5.0 of revenue.
    assert units(store) == {
        "customers": 1,
        "n": 1,
        "n_sq": 1,
        **{f"{m}{s}": 1 for m in ("clicked", "converted") for s in ("", "_sq")},
        "n_clicked": 1,
        "n_converted": 1,
        "revenue": 5.0,
        "revenue_sq": 25.0,
        "n_revenue": 5.0,
    }


def test_a_purchase_counts_for_the_latest_impression_that_showed_the_item(
    store: Store, clock: ManualClock
) -> None:
    store.record_impressions([shown("old", at=START - 60), shown("new", items=("B", "C"))])
    store.apply([("c1", purchase("p1"))])
    store.apply([("c1", click("k1", "old")), ("c1", click("k2", "new", "C"))])
    clock.advance(10)
    store.record_impressions([shown("third", items=("C",), at=clock())])
    store.apply([("c1", purchase("p2", item="C", quantity=1.0))])  # the latest: "third"
    assert figures(store)["converted"] == 2 and figures(store)["clicked"] == 2
    # old: clicked; new: clicked and converted; third: converted. Per impression:
    # clicked 1+1+0, converted 0+1+1, revenue 0+5+2.5 over 3 impressions of one customer.
    assert units(store)["n"] == 3 and units(store)["revenue"] == 7.5
    assert units(store)["n_clicked"] == 6 and units(store)["clicked_sq"] == 4


def test_events_before_their_impression_wait_for_it(store: Store, clock: ManualClock) -> None:
    """A worker writes its impressions every second: a click or purchase may come first."""
    clock.advance(5)
    store.apply([("c1", click("k1", "imp1")), ("c1", purchase("p1", item="A", quantity=1.0))])
    assert figures(store) == {}
    # The impression shown before both, written after them: both count for it.
    assert store.record_impressions([shown("imp1", at=START)]) == 1
    assert figures(store) == {
        "impressions": 1,
        "clicks": 1,
        "clicked": 1,
        "purchases": 1,
        "converted": 1,
        "revenue": 2.5,
    }
    # A purchase made before an impression was shown does not count for it.
    store.apply([("c1", purchase("p2", item="Z", quantity=1.0))])
    clock.advance(5)
    store.record_impressions([shown("imp2", items=("Z",), at=clock())])
    group = figures(store)
    assert group["impressions"] == 2 and group["converted"] == 1


def test_a_large_batch_finds_what_waits_for_its_last_impression(store: Store) -> None:
    """The script looks for waiting clicks in chunks (Lua unpacks a few thousand values at
    most): one waiting for the batch's last impression, past the first chunks, counts."""
    store.apply([("c1", click("k1", "imp-last"))])
    batch = [shown(f"imp-{k}", customer=f"c{k}") for k in range(4_500)] + [shown("imp-last")]
    assert store.record_impressions(batch) == len(batch)
    assert figures(store) == {"impressions": len(batch), "clicks": 1, "clicked": 1}


def test_a_session_purchase_counts_for_the_session_impression(store: Store) -> None:
    store.record_impressions([shown("imp1", customer="session-key")])
    store.apply([("c1", purchase("p1", session="session-key"))])
    assert figures(store)["converted"] == 1


def test_nothing_counts_outside_the_window(store: Store, clock: ManualClock) -> None:
    store.record_impressions([shown("imp1")])
    clock.advance(WINDOW + 1)
    store.apply([("c1", click("k1", "imp1")), ("c1", purchase("p1"))])
    assert figures(store) == {"impressions": 1}


def test_forget_takes_the_attribution_back(store: Store) -> None:
    store.record_impressions([shown("imp1")])
    entries = [("c1", click("k1", "imp1")), ("c1", purchase("p1"))]
    store.apply(entries)
    store.forget(entries)
    assert figures(store) == {"impressions": 1}
    assert units(store) == {"customers": 1, "n": 1, "n_sq": 1}
    assert store.apply(entries) == [Applied.NEW, Applied.NEW]  # the retry counts them once
    assert figures(store)["clicked"] == 1 and figures(store)["revenue"] == 5.0

    store.apply([("c1", click("k2", "later"))])  # waiting for its impression...
    store.forget([("c1", click("k2", "later"))])  # ...taken back: it never counts
    store.record_impressions([shown("later")])
    assert figures(store)["clicks"] == 1


def test_the_replay_of_the_logs_attributes_nothing(store: Store) -> None:
    store.record_impressions([shown("imp1")])
    store.apply([("c1", click("k1", "imp1"))], restoring=True)
    assert figures(store) == {"impressions": 1}


def test_erasure_removes_the_customers_impressions(store: Store) -> None:
    store.record_impressions([shown("imp1"), shown("imp2", customer="c2")])
    store.apply([("c1", purchase("p0", item="Q"))])  # pending: it waits under their key
    store.erase("c1")
    store.apply([("c9", click("k1", "imp1")), ("c9", click("k2", "imp2"))])
    assert figures(store)["clicked"] == 1  # imp1 is gone; imp2 was someone else's
    assert store.record_impressions([shown("imp3")]) == 0  # an erased customer's is dropped
    assert units(store) == {  # c2's alone
        "customers": 1.0,
        "n": 1.0,
        "n_sq": 1.0,
        "clicked": 1.0,
        "clicked_sq": 1.0,
        "n_clicked": 1.0,
    }


def test_erasure_takes_the_customers_share_out_of_the_experiment_sums(store: Store) -> None:
    store.record_impressions([shown("imp1"), shown("imp2"), shown("imp3", customer="c2")])
    store.apply([("c1", click("k1", "imp1")), ("c2", click("k2", "imp3"))])
    before = units(store)
    assert before["customers"] == 2 and before["clicked"] == 2
    store.erase("c1")
    assert units(store) == {
        "customers": 1.0,
        "n": 1.0,
        "n_sq": 1.0,
        "clicked": 1.0,
        "clicked_sq": 1.0,
        "n_clicked": 1.0,
    }


def test_embedded_erasure_leaves_no_impression_of_the_customer(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path, RETENTION, lambda: START)
    store.record_impressions([shown("imp1", customer="c1", items=("ITEM-ONLY-C1-SAW",))])
    store.apply([("c1", purchase("p1", item="ANOTHER-ITEM-OF-C1"))])
    store.erase("c1")
    for file in tmp_path.iterdir():
        data = file.read_bytes()
        assert b"ITEM-ONLY-C1-SAW" not in data and b"ANOTHER-ITEM-OF-C1" not in data, file.name


def test_a_worker_keeps_its_impressions_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    store = RedisStore(server.url, "recsvc-test", RETENTION, timeout=0.05, cooldown=0.0)
    buffer = Impressions(store, interval=0)
    try:
        store.mark_restored()
        server.stop()
        impression_id = buffer.shown("v1", "recommendations", "c1", ["A"])
        assert buffer.flush() == 0  # kept for the next try
        server.start()  # empty again: not restored, so still not written
        with pytest.raises(StoreNotRestored):
            store.record_impressions([shown("x")])
        assert buffer.flush() == 0
        store.mark_restored()
        assert buffer.flush() == 1 and buffer.flush() == 0
        store.apply([("c9", click("k1", impression_id))])
        found = store.impression_figures().figures
        assert [(g.values["impressions"], g.values["clicked"]) for g in found] == [(1.0, 1.0)]
    finally:
        store.client.close()
        server.stop()


def test_a_full_buffer_drops_the_oldest(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.sqlite3", RETENTION, lambda: START)
    buffer = Impressions(store, interval=0, limit=2)
    ids = [buffer.shown("v1", "cart", "", [item]) for item in ("A", "B", "C")]
    assert buffer.dropped == 1 and buffer.flush() == 2
    assert buffer.shown("v1", "cart", "", []) not in ids  # an empty list: an id, nothing kept
    assert buffer.flush() == 0
