"""A Redis Cluster master stopped under load, through a real gunicorn: reads never fail
(degraded while its slots have no master), writes get 503 or succeed, and every event the
service acknowledged is on the cluster afterwards (a replica confirmed it before the answer:
``WAIT 1``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.local_server import gunicorn
from recsvc.bundle import load_current
from recsvc.errors import StoreUnavailable
from recsvc.store import CUSTOMER_EVENTS_KEY, Applied, RedisStore, StoredEvent
from tests.redis_server import RedisClusterProcess

NOW = "2011-12-10T10:00:00+00:00"
WRITERS, READERS = 2, 2


def call(url: str, body: object | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


class Load:
    """Writers posting one new purchase at a time, readers asking for recommendations."""

    def __init__(self, url: str, customers: list[str], item: str) -> None:
        self.url, self.customers, self.item = url, customers, item
        self.stop = threading.Event()
        self.acknowledged: list[tuple[float, str]] = []  # (answered at, event id)
        self.writes: Counter[int] = Counter()  # status -> count
        self.reads: Counter[str] = Counter()  # "ok", "degraded" or the failing status
        self.threads = [
            *(threading.Thread(target=self.write, args=(n,)) for n in range(WRITERS)),
            *(threading.Thread(target=self.read, args=(n,)) for n in range(READERS)),
        ]

    def write(self, writer: int) -> None:
        sent = 0
        while not self.stop.is_set():
            event_id = f"w{writer}-{sent}"
            customer = self.customers[sent % len(self.customers)]
            sent += 1
            event = {"event_id": event_id, "customer": customer, "item_id": self.item}
            event |= {"quantity": 1, "price": 2.0, "timestamp": NOW}
            status, body = call(f"{self.url}/v1/events", {"events": [event]})
            self.writes[status] += 1
            if status == 200 and body["accepted"] == [event_id]:
                self.acknowledged.append((time.monotonic(), event_id))

    def read(self, reader: int) -> None:
        asked = reader
        while not self.stop.is_set():
            customer = self.customers[asked % len(self.customers)]
            asked += 1
            status, body = call(f"{self.url}/v1/customers/{customer}/recommendations?n=5")
            if status != 200:
                self.reads[str(status)] += 1
            else:
                self.reads["degraded" if body["degraded"] else "ok"] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_a_master_stopped_under_load_fails_no_read_and_loses_no_acknowledged_event(
    sample_models: Path, tmp_path: Path
) -> None:
    cluster = RedisClusterProcess(tmp_path / "cluster")
    cluster.start()
    try:
        env = {
            "RECSVC_MODELS_DIR": str(sample_models),
            "RECSVC_AUTH": "off",
            "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
            "RECSVC_WORKERS": "2",
            "RECSVC_REDIS_URL": cluster.url,
        }
        arrays = load_current(sample_models).arrays
        customers = [str(customer) for customer in arrays.customer_ids[:60]]
        item = str(arrays.item_ids[0])
        with gunicorn(env, tmp_path / "gunicorn.log") as url, Load(url, customers, item) as load:
            time.sleep(2.0)
            victim = cluster.master_ports()[0]
            cluster.stop_node(victim)
            stopped_at = time.monotonic()
            time.sleep(2.0)
            cluster.wait_for_failover()  # its replica took over
            # The new master has no replica: its writes are refused until the old master
            # comes back as its replica.
            cluster.start_stopped()
            cluster.wait_until_ok(replicated=True)
            restarted_at = time.monotonic()
            time.sleep(2.0)
        acknowledged = {event_id for _, event_id in load.acknowledged}
        after_failover = [at for at, _ in load.acknowledged if at > restarted_at + 1.0]
        summary = f"writes {dict(load.writes)}, reads {dict(load.reads)}"
        print(f"{summary}; {len(acknowledged)} acknowledged")  # shown by pytest -s
        assert set(load.reads) <= {"ok", "degraded"}, summary
        assert load.reads["ok"] and set(load.writes) <= {200, 503}, summary
        assert load.writes[503], f"no write was refused while a master was down: {summary}"
        assert after_failover, f"no write succeeded after the failover: {summary}"
        assert any(at > stopped_at for at, _ in load.acknowledged), summary
        lost = acknowledged - cluster.event_ids()
        assert not lost, f"{len(lost)} acknowledged events lost ({summary})"
    finally:
        cluster.stop()


def test_an_event_no_replica_confirmed_is_refused_and_undone(tmp_path: Path) -> None:
    cluster = RedisClusterProcess(tmp_path / "cluster")
    cluster.start()
    store = RedisStore(cluster.url, "recsvc", 86400.0, timeout=0.5, cooldown=0.0)
    try:
        store.mark_restored()
        master = cluster.master_ports()[0]
        customer = next(
            name
            for name in (f"c{n}" for n in range(1000))
            if store._node(
                CUSTOMER_EVENTS_KEY.format(prefix="recsvc", customer=name)
            ).get_connection_kwargs()["port"]
            == master
        )
        sent = StoredEvent("e1", "A", 1.0, 2.5, NOW, "api", time.time())
        replica = cluster.replica_of(master)
        cluster.stop_node(replica)
        with pytest.raises(StoreUnavailable, match="no replica confirmed"):
            store.apply([(customer, sent)])
        assert store.customer_state(customer, 0.0).events == []  # undone on the master
        cluster.start_node(replica)
        cluster.wait_until_ok(replicated=True)
        assert store.apply([(customer, sent)]) == [Applied.NEW]
        assert store.customer_state(customer, 0.0).events == [sent]
    finally:
        store.client.close()
        cluster.stop()
