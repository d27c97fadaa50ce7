"""One contract for the real-time store, run against the embedded store, a real Redis and a real
Redis Cluster (3 masters, 3 replicas)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from recsvc import store as store_module
from recsvc.errors import StoreNotRestored, StoreUnavailable
from recsvc.store import (
    Applied,
    EmbeddedStore,
    RedisStore,
    Store,
    StoredEvent,
    cluster_nodes,
    slot_tags,
)
from tests.redis_server import RedisProcess

RETENTION = 90 * 86400.0


def event(event_id: str, item: str = "A", quantity: float = 1.0, at: float = 1000.0) -> StoredEvent:
    return StoredEvent(event_id, item, quantity, 2.5, "2011-12-10T10:00:00+00:00", "api", at)


KINDS = ["embedded", "redis", "cluster"]


def redis_url_of(kind: str, request: pytest.FixtureRequest) -> str:
    """A flushed single Redis (``redis``) or Redis Cluster (``cluster``)."""
    return str(request.getfixturevalue("clean_redis" if kind == "redis" else "clean_cluster"))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    clock = lambda: 2000.0  # noqa: E731 - a fixed "now" inside retention for every event
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "store.sqlite3", RETENTION, clock=clock)
    else:
        url = redis_url_of(request.param, request)
        redis_store = RedisStore(url, "recsvc-test", RETENTION, timeout=1.0, clock=clock)
        redis_store.mark_restored()
        yield redis_store
        redis_store.close()


def test_apply_is_idempotent_by_event_id(store: Store) -> None:
    batch = [("c1", event("e1")), ("c1", event("e2", "B")), ("c1", event("e1"))]
    assert store.apply(batch) == [Applied.NEW, Applied.NEW, Applied.DUPLICATE]
    assert store.apply(batch) == [Applied.DUPLICATE] * 3
    state = store.customer_state("c1", since=0.0)
    assert sorted(e.event_id for e in state.events) == ["e1", "e2"] and not state.erased


def test_only_events_after_the_watermark_are_returned(store: Store) -> None:
    store.apply([("c1", event("old", at=100.0)), ("c1", event("new", at=500.0))])
    assert [e.event_id for e in store.customer_state("c1", since=100.0).events] == ["new"]
    assert store.customer_state("c2", since=0.0).events == []


def test_events_round_trip_exactly(store: Store) -> None:
    sent = event("e1", "85123A", -2.0, 1234.5)
    store.apply([("c1", sent)])
    assert store.customer_state("c1", since=0.0).events == [sent]


def test_erase_removes_events_and_blocks_new_ones(store: Store) -> None:
    store.apply([("c1", event("e1")), ("c1", event("e2")), ("c2", event("e3"))])
    assert store.erase("c1") == 2
    state = store.customer_state("c1", since=0.0)
    assert state.erased and state.events == []
    assert store.apply([("c1", event("e4"))]) == [Applied.ERASED]
    assert len(store.customer_state("c2", since=0.0).events) == 1
    assert store.erase("c1") == 0 and store.customer_state("c1", since=0.0).erased  # again
    assert store.erased_keys() == {"c1"}


def test_forget_undoes_apply(store: Store) -> None:
    entries = [("c1", event("e1"))]
    store.apply(entries)
    store.forget(entries)
    assert store.customer_state("c1", since=0.0).events == []
    assert store.apply(entries) == [Applied.NEW]


def test_mark_erased(store: Store) -> None:
    store.mark_erased(["c9"])
    assert store.customer_state("c9", since=0.0).erased
    assert store.ping()


def test_redis_outage_fails_fast_and_recovers_by_itself(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    store = RedisStore(server.url, "recsvc-test", RETENTION, timeout=0.05, cooldown=0.2)
    try:
        store.mark_restored()
        assert store.apply([("c1", event("e1", at=time.time()))]) == [Applied.NEW]
        server.stop()

        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.customer_state("c1", since=0.0)
        with pytest.raises(StoreUnavailable, match="cooling down"):
            store.apply([("c1", event("e2"))])
        assert time.monotonic() - started < 0.5
        assert not store.ping()

        server.start()  # empty again: this Redis keeps nothing on disk
        time.sleep(0.25)  # past the cooldown
        # It answers, but lost what it held: not trusted until the logs are replayed.
        assert not store.restored()
        with pytest.raises(StoreNotRestored):
            store.apply([("c1", event("e2", at=time.time()))])
        with pytest.raises(StoreNotRestored):
            store.customer_state("c1", since=0.0)
        store.mark_restored()
        assert store.apply([("c1", event("e2", at=time.time()))]) == [Applied.NEW]
        assert [e.event_id for e in store.customer_state("c1", since=0.0).events] == ["e2"]
    finally:
        server.stop()


def test_snapshots_keep_the_first_payload_and_erase_removes_them(store: Store) -> None:
    assert store.kept_snapshot("c1", "send-1") is None
    assert store.snapshot("c1", "send-1", "first", 60.0) == "first"
    assert store.snapshot("c1", "send-1", "second", 60.0) == "first"
    assert store.kept_snapshot("c1", "send-1") == "first"
    assert store.kept_snapshot("c1", "send-2") is None
    store.erase("c1")
    assert store.kept_snapshot("c1", "send-1") is None
    assert store.snapshot("c1", "send-1", "third", 60.0) == "third"


def test_triggers_since_and_erase(store: Store) -> None:
    store.add_triggers([(1500.0, "c1", '{"c": "c1"}'), (1600.0, "c2", '{"c": "c2"}')])
    assert store.triggers_since(1550.0) == ['{"c": "c2"}']
    store.erase("c2")
    assert store.triggers_since(0.0) == ['{"c": "c1"}']


def test_embedded_store_is_one_state_for_every_process(tmp_path: Path) -> None:
    """Two stores on one file stand for two workers: what one writes, the other reads."""
    path = tmp_path / "store.sqlite3"
    clock = lambda: 2000.0  # noqa: E731
    first, second = EmbeddedStore(path, RETENTION, clock), EmbeddedStore(path, RETENTION, clock)
    assert first.apply([("c1", event("e1"))]) == [Applied.NEW]
    assert second.apply([("c1", event("e1"))]) == [Applied.DUPLICATE]
    assert [e.event_id for e in second.customer_state("c1", 0.0).events] == ["e1"]
    second.erase("c1")
    assert first.customer_state("c1", 0.0).erased
    reopened = EmbeddedStore(path, RETENTION, clock)  # a restart keeps everything
    assert reopened.customer_state("c1", 0.0).erased


def test_embedded_store_leaves_no_erased_bytes_in_its_files(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path, RETENTION, lambda: 2000.0)
    marker = "ITEM-ONLY-THIS-CUSTOMER-HAD"
    store.apply([("c1", event("e1", item=marker))])
    store.snapshot("c1", "send", f"picks of {marker}", 60.0)
    store.erase("c1")
    for file in tmp_path.iterdir():
        assert marker.encode() not in file.read_bytes(), file.name


def _write_megabytes(store: EmbeddedStore, megabytes: int) -> None:
    payload = "x" * 10_000
    for n in range(megabytes * 100):
        store.snapshot(f"c{n}", "send", payload, 60.0)


def test_a_commit_leaves_the_log_to_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's default folds the log in the commit that fills 1,000 pages (4 MB), and that
    request waits for the fsyncs: here commits never fold it below AUTOCHECKPOINT_PAGES."""
    monkeypatch.setattr(EmbeddedStore, "CHECKPOINT_SECONDS", 3600.0)  # the thread sleeps
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path, RETENTION, lambda: 2000.0)
    empty = path.stat().st_size
    _write_megabytes(store, 6)
    assert path.with_name("store.sqlite3-wal").stat().st_size > 6_000_000
    assert path.stat().st_size == empty


def test_the_checkpoint_thread_folds_the_log_and_ends_with_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EmbeddedStore, "CHECKPOINT_SECONDS", 0.05)
    before = set(threading.enumerate())
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path, RETENTION, lambda: 2000.0)
    (checkpointing,) = [t for t in set(threading.enumerate()) - before if "checkpoint" in t.name]
    _write_megabytes(store, 1)
    deadline = time.monotonic() + 10.0
    while path.stat().st_size < 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > 1_000_000, "the log was not folded into the database"
    del store
    checkpointing.join(timeout=5.0)
    assert not checkpointing.is_alive(), "the thread outlived its store"


def test_an_erasure_empties_the_log_even_while_another_connection_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite answers busy to a checkpoint while another runs (every worker's thread runs
    one every second): the erasure's must wait for it, not leave the log as it is."""
    monkeypatch.setattr(EmbeddedStore, "CHECKPOINT_SECONDS", 3600.0)
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path, RETENTION, lambda: 2000.0)
    marker = "ITEM-ONLY-THIS-CUSTOMER-HAD"
    store.apply([("c1", event("e1", item=marker))])
    _write_megabytes(store, 30)  # a log whose checkpoint takes a while
    other = sqlite3.connect(path, check_same_thread=False)
    unfolded = path.stat().st_size
    thread = threading.Thread(target=lambda: other.execute("PRAGMA wal_checkpoint(PASSIVE)"))
    thread.start()
    deadline = time.monotonic() + 5.0
    while path.stat().st_size == unfolded and time.monotonic() < deadline:
        pass  # until the other checkpoint is copying pages
    store.erase("c1")
    thread.join()
    other.close()
    for file in tmp_path.iterdir():
        assert marker.encode() not in file.read_bytes(), file.name


def test_a_fork_waits_for_a_checkpoint_in_progress() -> None:
    forked = threading.Event()

    def fork() -> None:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os._exit(0)
        os.waitpid(child, 0)
        forked.set()

    with store_module._FOLDING:  # as fold_log holds it
        forking = threading.Thread(target=fork)
        forking.start()
        assert not forked.wait(0.3), "the fork did not wait for the checkpoint"
    assert forked.wait(5.0)
    forking.join()


def test_a_reader_sees_another_connections_commit_at_its_next_read(tmp_path: Path) -> None:
    """Readers keep their answers until some connection commits: the next read after a
    commit elsewhere must see it (no own write in between to reset anything)."""
    path = tmp_path / "store.sqlite3"
    clock = lambda: 2000.0  # noqa: E731
    reader, writer = EmbeddedStore(path, RETENTION, clock), EmbeddedStore(path, RETENTION, clock)
    for round_ in range(3):
        assert len(reader.customer_state("c1", 0.0).events) == round_
        assert reader.customer_state("c1", 0.0).events == reader.customer_state("c1", 0.0).events
        writer.apply([("c1", event(f"e{round_}"))])
    assert len(reader.customer_state("c1", 0.0).events) == 3
    writer.erase("c1")
    assert reader.customer_state("c1", 0.0).erased
    assert reader._local.header, "the wal-index header was not mapped: the slow path ran"


def other_worker(store: Store, tmp_path: Path) -> Store:
    """A second handle on the same state, as another worker (or host) holds it."""
    if isinstance(store, RedisStore):
        return RedisStore(store.url, store.prefix, RETENTION, timeout=1.0)
    return EmbeddedStore(tmp_path / "store.sqlite3", RETENTION, clock=lambda: 2000.0)


def test_catalog_overlay_merges_fields_and_every_worker_sees_a_write_at_once(
    store: Store, tmp_path: Path
) -> None:
    reader = other_worker(store, tmp_path)
    assert reader.catalog().items == {} and reader.catalog().stamp == 0
    store.set_items([("A", {"available": False}), ("B", {"price": 3.5, "categories": []})])
    assert reader.catalog().items == {
        "A": {"available": False},
        "B": {"price": 3.5, "categories": []},
    }
    store.set_items([("A", {"price": 9.0}), ("B", {"price": 4.0})])
    assert reader.catalog().items == {
        "A": {"available": False, "price": 9.0},
        "B": {"price": 4.0, "categories": []},
    }
    store.set_items([("A", {"available": True})])
    assert reader.catalog().items["A"] == {"available": True, "price": 9.0}
    assert store.catalog().items == reader.catalog().items


def test_catalog_is_the_same_object_until_a_write(store: Store, tmp_path: Path) -> None:
    """Callers cache what they derive from the overlay by its identity."""
    store.set_items([("A", {"available": False})])
    first = store.catalog()
    store.apply([("c1", event("e1"))])  # other writes do not change the overlay
    assert store.catalog() is first
    other_worker(store, tmp_path).set_items([("A", {"available": False})])
    changed = store.catalog()
    assert changed is not first and changed.items == first.items
    assert store.catalog() is changed


def unsubscribe(event_id: str, at: float) -> StoredEvent:
    return StoredEvent(
        event_id, "", 0.0, 0.0, "2011-12-10T10:00:00+00:00", "api", at, kind="unsubscribe"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_an_unsubscribe_outlasts_the_retention_until_erasure_or_undo(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    now = [1000.0]
    retention = 100.0

    def open_store() -> Store:
        if kind == "embedded":
            return EmbeddedStore(tmp_path / "store.sqlite3", retention, clock=lambda: now[0])
        url = redis_url_of(kind, request)
        found = RedisStore(url, "recsvc-test", retention, timeout=1.0, clock=lambda: now[0])
        found.mark_restored()
        return found

    store = open_store()
    first, second = unsubscribe("u1", 990.0), unsubscribe("u2", 995.0)
    store.apply([("c1", first), ("c1", second), ("c1", event("p1", at=996.0))])
    assert store.customer_state("c1", since=0.0).unsubscribed == first  # the first one
    now[0] = 5000.0  # long past the retention, and a new process
    store.apply([("c2", event("p2", at=4990.0))])  # a write purges what is past it
    store = open_store()
    state = store.customer_state("c1", since=0.0)
    assert state.events == [] and state.unsubscribed == first
    store.erase("c1")
    assert store.customer_state("c1", since=0.0).unsubscribed is None
    undone = [("c3", unsubscribe("u3", 4995.0))]
    store.apply(undone)
    store.forget(undone)
    assert store.customer_state("c3", since=0.0).unsubscribed is None


def test_an_apply_that_times_out_is_undone_so_a_retry_records_it(
    clean_redis: str,
) -> None:
    """Redis runs a script it received to the end even when the client gave up waiting: the
    store undoes it, so StoreUnavailable still means nothing applied."""
    import redis

    store = RedisStore(clean_redis, "recsvc-test", RETENTION, timeout=0.05, cooldown=0.0)
    store.mark_restored()
    entries = [("c1", event("slow-1")), ("c1", event("slow-2", "B"))]
    busy = threading.Thread(  # keeps Redis busy while the apply waits in its socket
        target=redis.Redis.from_url(clean_redis).eval,
        args=("local i = 0 while i < 20000000 do i = i + 1 end return i", 0),
    )
    busy.start()
    time.sleep(0.02)
    with pytest.raises(StoreUnavailable):
        store.apply(entries)
    busy.join()
    time.sleep(0.2)  # then the apply runs, and its undo after it
    assert store.customer_state("c1", since=0.0).events == []
    assert store.apply(entries) == [Applied.NEW, Applied.NEW]


def test_every_hash_slot_has_a_tag_for_its_restored_marker() -> None:
    tags = slot_tags()
    assert len(tags) == 16384 and all(
        key_slot(tag.encode()) == slot for slot, tag in enumerate(tags)
    )


def test_a_cluster_url_names_its_seed_nodes() -> None:
    assert cluster_nodes("redis+cluster://10.0.0.1:7000,[::1]:7001/") == [
        ("10.0.0.1", 7000),
        ("::1", 7001),
    ]
    with pytest.raises(ValueError, match="no database numbers"):
        cluster_nodes("redis+cluster://10.0.0.1:7000/3")
