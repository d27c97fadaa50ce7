"""Real Redis servers for tests: the machine's (own db number, flushed before and after), or
one started here (benchmarks.local_server.RedisProcess), e.g. to stop and restart it, and a
private 3-master + 3-replica Redis Cluster (RedisClusterProcess)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from benchmarks.local_server import RedisClusterProcess, RedisProcess

SHARED_URL = os.environ.get("RECSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def shared_redis_url(directory: Path) -> tuple[str, RedisProcess | None]:
    """The machine's Redis (db 15), or a private server when that one is not running."""
    try:
        redis.Redis.from_url(SHARED_URL, socket_connect_timeout=0.5).ping()
        return SHARED_URL, None
    except redis.RedisError:
        server = RedisProcess(directory)
        server.start()
        return server.url, server


# The stores every store-backed test runs against.
STORE_KINDS = ("embedded", "redis", "cluster")


def store_url(request: pytest.FixtureRequest, kind: str) -> str | None:
    """RECSVC_REDIS_URL for a test of ``kind``: None (the embedded store), a flushed single
    Redis, or a flushed Redis Cluster (redis+cluster://...)."""
    if kind == "embedded":
        return None
    return str(request.getfixturevalue("clean_redis" if kind == "redis" else "clean_cluster"))


__all__ = [
    "STORE_KINDS",
    "RedisClusterProcess",
    "RedisProcess",
    "shared_redis_url",
    "store_url",
]
