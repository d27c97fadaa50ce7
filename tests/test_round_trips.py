"""A request's round trips to a real Redis: the rate limit, the customer's state, the catalog
overlay and an email send's kept picks travel together, so a recommendation, a block or an
email send's picks for a known customer is one round trip (issue 22), and the state read
ahead is the state a plain read gives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from recsvc.app import create_app
from recsvc.auth import mint
from recsvc.bundle import load_current
from recsvc.identity import DEVELOPMENT_SECRET, SECRET_VARIABLE
from recsvc.store import RATE_KEY, CustomerState, RedisStore, StoredEvent, request_reads

RETENTION = 90 * 86400.0


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times this thread sent Redis a packet of commands (one per round trip: a
    pipeline is one packet) while the test counts."""
    counted: list[int] = []
    counting = threading.get_ident()
    send = redis.connection.AbstractConnection.send_packed_command

    def counted_send(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == counting:
            counted.append(1)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted_send)
    yield counted


def _service(models: Path, tmp_path: Path, redis_url: str, api_keys: str) -> Flask:
    """The service on the sample bundle and ``redis_url``, with the API keys ``api_keys``."""
    return create_app(
        {
            "RECSVC_MODELS_DIR": str(models),
            "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
            "RECSVC_API_KEYS": api_keys,
            "RECSVC_REDIS_URL": redis_url,
            "RECSVC_RELOAD_SECONDS": "0",
            SECRET_VARIABLE: DEVELOPMENT_SECRET,  # the sample bundle's
            "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",
        }
    )


def test_a_recommendation_is_one_round_trip(
    sample_models: Path, tmp_path: Path, clean_redis: str, sends: list[int]
) -> None:
    key, line = mint("web", ["recs:read", "blocks:read"], rate=100)
    client = _service(sample_models, tmp_path, clean_redis, line).test_client()
    customer = str(load_current(sample_models).arrays.customer_ids[0])
    headers = {"X-API-Key": key}
    slot = next(iter(load_current(sample_models).manifest.channels.slots))
    paths = [
        f"/v1/customers/{customer}/recommendations?n=5",
        f"/v1/customers/{customer}/blocks/{slot}",
        f"/v1/customers/{customer}/email-picks?send_id=s1&n=3",
    ]
    for path in paths:  # the first asks: the scripts loaded, the catalog read, the picks kept
        assert client.get(path, headers=headers).status_code == 200
    for path in paths:
        sends.clear()
        assert client.get(path, headers=headers).status_code == 200
        assert len(sends) == 1, path


@pytest.fixture(params=["redis", "cluster"])
def redis_store(request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    """A store on a real Redis, and on a real Redis Cluster."""
    url = request.getfixturevalue("clean_redis" if request.param == "redis" else "clean_cluster")
    store = RedisStore(url, "recsvc-test", RETENTION, timeout=1.0)
    yield store
    store.close()


def test_the_state_read_ahead_is_the_state_read(redis_store: RedisStore) -> None:
    store = redis_store
    store.mark_restored()
    now = time.time()
    event = StoredEvent("e1", "A", 1.0, 2.5, "2026-12-02T10:00:00+00:00", "api", now)
    store.apply([("c1", event)])
    plain = store.customer_state("c1", 0.0)

    with request_reads() as ahead:
        assert store.take_and_read("web", 10.0, 10, "c1") == 0.0
        assert ahead.state == plain and ahead.customer == "c1"
        assert ahead.catalog is not None
        assert store.customer_state("c1", 0.0) == plain  # from the read-ahead, used once
        assert ahead.state is None
        assert store.customer_state("c1", 0.0) == plain  # then from Redis

    # Outside a request nothing is read ahead: the take alone.
    assert store.take_and_read("web", 10.0, 10, "c1") == 0.0
    with request_reads() as ahead:
        store.take_and_read(None, 0.0, 0, "c2")
        assert ahead.state == CustomerState([], False) and ahead.customer == "c2"


def test_a_rate_limited_request_is_refused_with_its_reads_ahead(redis_store: RedisStore) -> None:
    store = redis_store
    store.mark_restored()
    with request_reads():
        waits = [store.take_and_read("web", 1.0, 1, "c1") for _ in range(2)]
    assert waits[0] == 0.0 and 0.0 < waits[1] <= 1.0


def test_a_node_that_lost_its_scripts_gets_them_again(redis_store: RedisStore) -> None:
    """A restarted node, or a replica promoted after a failover, has no script loaded."""
    store = redis_store
    store.mark_restored()
    with request_reads():
        assert store.take_and_read("web", 10.0, 10, "c1") == 0.0
    client = store.client
    if isinstance(client, redis.RedisCluster):
        client.execute_command("SCRIPT FLUSH", target_nodes=redis.RedisCluster.ALL_NODES)
    else:
        client.script_flush()
    with request_reads() as ahead:
        assert store.take_and_read("web", 10.0, 10, "c1") == 0.0
        assert ahead.customer == "c1"


def test_email_picks_with_arguments_the_view_refuses_still_take_from_the_limit(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> None:
    """The send read ahead is worked out from the request's arguments; ones the view will
    refuse (a price range upside down) read nothing ahead but are still rate-limited."""
    key, line = mint("web", ["recs:read"], rate=1)
    app = _service(sample_models, tmp_path, clean_redis, line)
    customer = str(load_current(sample_models).arrays.customer_ids[0])
    path = f"/v1/customers/{customer}/email-picks?send_id=s1&min_price=5&max_price=1"
    statuses = [app.test_client().get(path, headers={"X-API-Key": key}).status_code for _ in "ab"]
    assert statuses == [400, 429]


def test_a_node_that_times_out_leaves_the_take_on_the_others(
    clean_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the take and the reads go to different masters: when the customer's
    master does not answer, the take still counts once (never sent again) and nothing is
    read ahead for the customer."""
    store = RedisStore(clean_cluster, "recsvc-test", RETENTION, timeout=1.0)
    store.mark_restored()
    customer = "c1"
    port_of = lambda key: store._node(key).connection_pool.connection_kwargs["port"]  # noqa: E731
    silent = port_of(store._events_key(customer))
    bucket = next(
        name
        for name in (f"web-{k}" for k in range(100))
        if port_of(RATE_KEY.format(prefix=store.prefix, bucket=name)) != silent
    )
    read = redis.connection.AbstractConnection.read_response

    def timing_out(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.port == silent:
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return read(self, *args, **kwargs)

    with request_reads():  # connections made: the next call's timeout is the read's
        store.take_and_read(None, 0.0, 0, customer)
    with request_reads() as ahead:
        monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", timing_out)
        wait = store.take_and_read(bucket, 1.0, 1, customer)
        monkeypatch.undo()
        assert wait == 0.0 and ahead.state is None
    with request_reads():
        assert 0.0 < store.take_and_read(bucket, 1.0, 1, customer) <= 1.0  # taken once before
    store.close()
