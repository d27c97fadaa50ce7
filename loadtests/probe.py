"""A light latency probe: read requests at a fixed Poisson rate, each timed from the moment it
was due, not from when the client got round to it, so a client that falls behind shows as
latency instead of hiding it. A few threads writing prepared request bytes to a socket: the
probe's own CPU per request is measured and reported beside locust's, so a 2-core machine
can judge the server's latency without the client's cost swamping it. ``loadtests/run.py``
runs it beside locust's realistic mix."""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from loadtests.traffic import Read

THREADS = 4  # enough for the probe's rate: each request takes a few ms
TIMEOUT_SECONDS = 10.0


@dataclass
class ProbeResult:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)  # per read's name
    failures: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # the probe's own threads

    @property
    def requests(self) -> int:
        return sum(len(latencies) for latencies in self.latencies_ms.values())


def schedule(
    reads: list[Read], rate: float, duration: float, rng: random.Random
) -> Iterator[tuple[float, Read]]:
    """(seconds from the start, read) at exponential gaps, each read drawn uniformly, so every
    endpoint gets about the same number of samples."""
    due = rng.expovariate(rate)
    while due < duration:
        yield due, rng.choice(reads)
        due += rng.expovariate(rate)


def probe(
    base: str,
    headers: dict[str, str],
    reads: list[Read],
    rate: float,
    duration: float,
    seed: int = 0,
) -> ProbeResult:
    """Send ``reads`` to ``base`` at ``rate`` requests/s for ``duration`` seconds."""
    address = urlsplit(base)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    rng = random.Random(seed)
    # Paths are drawn up front: drawing them is the probe's cost, not the server's latency.
    due = [
        (at, read.name, request_bytes(host, port, read.path(), headers))
        for at, read in schedule(reads, rate, duration, rng)
    ]
    result = ProbeResult(
        latencies_ms={read.name: [] for read in reads}, failures={read.name: 0 for read in reads}
    )
    lock = threading.Lock()
    pending = iter(due)
    started = time.perf_counter()

    def work() -> None:
        cpu_started = time.thread_time()
        while True:
            with lock:
                request = next(pending, None)
            if request is None:
                break
            at, name, request_line = request
            wait = started + at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            ok = _get(host, port, request_line)
            latency = (time.perf_counter() - started - at) * 1000
            with lock:
                result.latencies_ms[name].append(latency)
                if not ok:
                    result.failures[name] += 1
        with lock:
            result.cpu_seconds += time.thread_time() - cpu_started

    threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def request_bytes(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _get(host: str, port: int, request: bytes) -> bool:
    """One GET on a new connection (gunicorn's sync workers close each one), read until the
    server closes it; True on a 200. Raw bytes: http.client's parsing would double the
    probe's CPU per request."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as connection:
            connection.sendall(request)
            head = connection.recv(65536)
            while connection.recv(65536):
                pass
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(share * len(ordered)))) - 1]
