"""The production front: request bodies over the limit are refused unread, and nginx in front
of gunicorn keeps the service answering while many slow clients hold connections open."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from benchmarks.local_server import ROOT, free_port, gunicorn, nginx, nginx_binary
from recsvc import defaults
from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.errors import ConfigError

LIMIT = defaults.MAX_BODY_BYTES
TOO_LARGE = 2 * 1024 * 1024
SLOW_CLIENTS = 50
PROBE_TIMEOUT = 1.0  # seconds: the latency target for each probe under attack


class Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # the test client looks for the end; it never gets there

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return 0

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read")


@pytest.fixture
def client(sample_models: Path, tmp_path: Path) -> FlaskClient:
    config = ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "events", auth=False)
    return create_app(config).test_client()


def assert_too_large(status: int, content_type: str, body: bytes) -> None:
    assert status == 413
    assert content_type.startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 413 and str(LIMIT) in problem["detail"]


def test_a_full_batch_of_the_longest_events_fits(client: FlaskClient) -> None:
    events = [
        {
            "event_id": f"{i:06d}".ljust(128, "e"),
            "customer": f"email:{i:06d}".ljust(250, "c") + "@x.com",
            "item_id": f"{i:06d}".ljust(64, "I"),
            "quantity": 999999.5,
            "price": 9999999.99,
            "timestamp": "2011-12-10T10:00:00.000000+00:00",
            "source": "s".ljust(64, "s"),
        }
        for i in range(1000)
    ]
    body = json.dumps({"events": events}).encode()
    assert 600_000 < len(body) < LIMIT
    response = client.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["accepted"]) == 1000


def test_a_declared_length_over_the_limit_is_refused_unread(client: FlaskClient) -> None:
    response = client.post(
        "/v1/events",
        input_stream=Unreadable(),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(LIMIT + 1)},
    )
    assert_too_large(response.status_code, response.content_type, response.get_data())
    # Wherever it is sent, before routing: no endpoint reads such a body.
    response = client.post(
        "/healthz", input_stream=Unreadable(), environ_overrides={"CONTENT_LENGTH": str(TOO_LARGE)}
    )
    assert response.status_code == 413


def test_a_chunked_body_over_the_limit_is_refused(client: FlaskClient) -> None:
    response = client.post(
        "/v1/events",
        input_stream=io.BytesIO(b"[" + b" " * TOO_LARGE + b"]"),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_too_large(response.status_code, response.content_type, response.get_data())
    # One of exactly the limit is read in full.
    batch = json.dumps({"events": []}).encode()
    response = client.post(
        "/v1/events",
        input_stream=io.BytesIO(batch.ljust(LIMIT)),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert "1 to 1000 events" in response.get_json()["detail"]


def test_the_limit_is_configured(sample_models: Path, tmp_path: Path) -> None:
    base = {"RECSVC_MODELS_DIR": str(sample_models), "RECSVC_AUTH": "off"}
    assert ServiceConfig.from_mapping(base).max_body_bytes == LIMIT
    config = ServiceConfig.from_mapping({**base, "RECSVC_MAX_BODY_BYTES": "4096"})
    assert config.max_body_bytes == 4096
    for bad in ("1mb", "0", str(2 << 30)):
        with pytest.raises(ConfigError, match="RECSVC_MAX_BODY_BYTES"):
            ServiceConfig.from_mapping({**base, "RECSVC_MAX_BODY_BYTES": bad})
    small = create_app(
        ServiceConfig(
            models_dir=sample_models, events_dir=tmp_path, auth=False, max_body_bytes=4096
        )
    ).test_client()
    response = small.post("/v1/events", data=b"x" * 4097, content_type="application/json")
    assert response.status_code == 413 and "4096 bytes" in response.get_json()["detail"]


# Real gunicorn (two sync workers) behind real nginx, on free ports of 127.0.0.1.


def require_nginx() -> None:
    try:
        nginx_binary()
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def front_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("front") / "nginx.log"


@pytest.fixture(scope="module")
def servers(
    sample_models: Path, tmp_path_factory: pytest.TempPathFactory, front_log: Path
) -> Iterator[tuple[str, str]]:
    """(gunicorn's URL, nginx's URL in front of it)."""
    require_nginx()
    env = {
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path_factory.mktemp("front-events")),
        "RECSVC_WORKERS": "2",
    }
    with (
        gunicorn(env) as direct,
        nginx(direct.removeprefix("http://"), LIMIT, front_log) as front,
    ):
        yield direct, front


def test_nginx_passes_request_ids_and_logs_no_customer(
    servers: tuple[str, str], front_log: Path
) -> None:
    url = f"{servers[1]}/v1/customers/email:ann%40example.com/recommendations"
    request = urllib.request.Request(url, headers={"X-Request-ID": "front-test-1"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "front-test-1"
    with urllib.request.urlopen(url, timeout=5) as response:
        fresh = response.headers["X-Request-ID"]
    assert len(fresh) == 32  # nginx's $request_id, which the service accepted
    # nginx writes a request's log line once the response is on its way: the client can be
    # reading the log before it is there.
    deadline = time.monotonic() + 5
    while fresh not in (log := front_log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "front-test-1" in log and fresh in log
    assert "ann" not in log and "/v1/" not in log and "127.0.0.1" not in log


def raw_exchange(url: str, head: bytes, body: bytes = b"") -> tuple[int, str, bytes]:
    """Send a request's head and the start of its body as is; (status, content type, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_text, _, content = answer.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), content


def oversized_head(length: int) -> bytes:
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def test_a_large_post_gets_413_through_nginx_and_directly(servers: tuple[str, str]) -> None:
    direct, front = servers
    request = urllib.request.Request(
        f"{front}/v1/events",
        data=b"{" + b" " * (TOO_LARGE - 2) + b"}",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    error = refused.value
    assert_too_large(error.code, error.headers["Content-Type"], error.read())
    # Directly, gunicorn's worker answers from the headers alone, before any body is sent.
    assert_too_large(*raw_exchange(direct, oversized_head(TOO_LARGE)))
    # A chunked body that grows past the limit is cut off by nginx.
    chunked = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    assert_too_large(*raw_exchange(front, chunked, chunk * (TOO_LARGE // 65536) + b"0\r\n\r\n"))


class SlowClients:
    """Connections that send a request a few bytes at a time and never finish it: half trickle
    their headers (slowloris), half declare a body and trickle that."""

    def __init__(self, url: str, count: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.count = count
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> SlowClients:
        for i in range(self.count):
            sock = socket.create_connection(self.address, timeout=2)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                sock.sendall(oversized_head(100_000).replace(b"Connection: close", b"X-A: b"))
            self.sockets.append(sock)
        self.thread.start()
        return self

    def _trickle(self) -> None:
        while not self.stop.wait(0.5):
            for i, sock in enumerate(self.sockets):
                try:
                    sock.send(b"X-A: b\r\n" if i % 2 else b"{")
                except OSError:
                    pass  # dropped by the server: it stays dropped

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


def probe(url: str) -> float:
    """Seconds until ``url`` answered 200, or infinity if it did not within PROBE_TIMEOUT."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            response.read()
            ok = response.status == 200
    except OSError:
        ok = False
    return time.perf_counter() - started if ok else float("inf")


def probe_under_attack(url: str, customer: str, seconds: float) -> list[float]:
    """Latencies of /healthz and a recommendation, probed in turn while SLOW_CLIENTS slow
    connections are open against ``url``."""
    latencies: list[float] = []
    with SlowClients(url, SLOW_CLIENTS):
        time.sleep(1.0)  # every slow connection has reached the server
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            latencies.append(probe(f"{url}/healthz"))
            latencies.append(probe(f"{url}/v1/customers/{customer}/recommendations?n=10"))
            time.sleep(0.1)
    return latencies


def summary(latencies: list[float]) -> str:
    answered = sorted(t for t in latencies if t != float("inf"))
    if not answered:
        return f"0 of {len(latencies)} probes answered within {PROBE_TIMEOUT} s"
    return (
        f"{len(answered)} of {len(latencies)} probes answered within {PROBE_TIMEOUT} s; "
        f"median {answered[len(answered) // 2] * 1000:.1f} ms, max {answered[-1] * 1000:.1f} ms"
    )


def test_slow_clients_do_not_stop_the_service_behind_nginx(
    servers: tuple[str, str], sample_models: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[5])
    latencies = probe_under_attack(servers[1], customer, seconds=8)
    print(f"\nbehind nginx, {SLOW_CLIENTS} slow clients: {summary(latencies)}")
    assert len(latencies) >= 10
    assert max(latencies) < PROBE_TIMEOUT, summary(latencies)


def test_an_address_over_its_connection_limit_still_passes_health_probes(
    servers: tuple[str, str], sample_models: Path
) -> None:
    """More slow connections than one address may hold: that address's other requests get
    429, but health probes from it still pass (an orchestrator often shares the address)."""
    customer = str(load_current(sample_models).arrays.customer_ids[5])
    with SlowClients(servers[1], 430):  # half of them hold a request (its headers read)
        time.sleep(1.0)
        assert probe(f"{servers[1]}/healthz") < PROBE_TIMEOUT
        assert probe(f"{servers[1]}/readyz") < PROBE_TIMEOUT
        url = f"{servers[1]}/v1/customers/{customer}/recommendations"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=PROBE_TIMEOUT)
        refused.value.close()
        assert refused.value.code == 429


def test_slow_clients_stop_gunicorn_alone(servers: tuple[str, str], sample_models: Path) -> None:
    """Without the proxy the failure is real: two slow connections take both sync workers."""
    customer = str(load_current(sample_models).arrays.customer_ids[5])
    latencies = probe_under_attack(servers[0], customer, seconds=4)
    print(f"\ngunicorn alone, {SLOW_CLIENTS} slow clients: {summary(latencies)}")
    assert all(t == float("inf") for t in latencies), summary(latencies)
    # Once they are gone, it answers again.
    deadline = time.monotonic() + 10
    while probe(f"{servers[0]}/healthz") == float("inf"):
        assert time.monotonic() < deadline, "gunicorn did not recover"


def test_deploy_run_starts_and_stops_both(sample_models: Path, tmp_path: Path) -> None:
    require_nginx()
    port = free_port()
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_WORKERS": "1",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "deploy.run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as launcher:
        try:
            assert launcher.stdout is not None
            assert f"on http://127.0.0.1:{port}" in launcher.stdout.readline().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                assert answer.headers["Server"] == "nginx"
        finally:
            launcher.terminate()
            assert launcher.wait(timeout=30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
