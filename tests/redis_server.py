"""Real Redis servers for tests: the machine's (own db number, flushed before and after), or
one started here, e.g. to stop and restart it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from benchmarks.local_server import free_port

SHARED_URL = os.environ.get("RECSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class RedisProcess:
    """A redis-server of the test's own, on a fixed port so it can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `make test` installs it (apt-get)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def shared_redis_url(directory: Path) -> tuple[str, RedisProcess | None]:
    """The machine's Redis (db 15), or a private server when that one is not running."""
    try:
        redis.Redis.from_url(SHARED_URL, socket_connect_timeout=0.5).ping()
        return SHARED_URL, None
    except redis.RedisError:
        server = RedisProcess(directory)
        server.start()
        return server.url, server
