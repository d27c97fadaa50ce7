"""The load-test runner: its probe against a real HTTP server, its reading of locust's figures
and of the server's latency histogram, and its verdict."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from benchmarks.local_server import free_port
from loadtests.probe import ProbeResult, percentile, probe, schedule
from loadtests.run import (
    LocustRow,
    Report,
    RouteRow,
    latency_since,
    locust_failures,
    read_locust_stats,
    requests_served,
    route_rows,
    server_latency,
    split_cores,
    verdict,
)
from loadtests.traffic import Read, Traffic
from recsvc.bundle import load_current

STATS_HEADER = "Type,Name,Request Count,Failure Count,50%,99%\n"


class _Answers(BaseHTTPRequestHandler):
    """200 for /ok..., 500 for anything else; remembers the API key it was sent."""

    keys: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.keys.append(self.headers.get("X-API-Key", ""))
        self.send_response(200 if self.path.startswith("/ok") else 500)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_probe_times_every_request_and_counts_failures(http_server: str) -> None:
    reads = [Read("ok", "/ok", lambda: "/ok?x=1"), Read("broken", "/broken", lambda: "/broken")]
    _Answers.keys.clear()

    result = probe(http_server, {"X-API-Key": "rk_test"}, reads, rate=100, duration=1.0)

    sent = len(list(schedule(reads, 100, 1.0, random.Random(0))))
    assert result.requests == sent == len(_Answers.keys) and 60 < sent < 140
    assert result.failures["ok"] == 0
    assert result.failures["broken"] == len(result.latencies_ms["broken"]) > 0
    assert set(_Answers.keys) == {"rk_test"}
    assert all(0 < latency < 1000 for values in result.latencies_ms.values() for latency in values)
    assert result.cpu_seconds > 0


def test_probe_counts_a_refused_connection_as_a_failure() -> None:
    reads = [Read("ok", "/ok", lambda: "/ok")]
    # A port nobody listens on: every request is refused at once.
    result = probe(f"http://127.0.0.1:{free_port()}", {}, reads, rate=50, duration=0.2)
    assert result.requests > 0 and result.failures["ok"] == result.requests


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.99) == 0.0


def test_split_cores_keeps_one_for_the_clients() -> None:
    assert split_cores({0, 1}) == ({0}, {1})
    assert split_cores({0, 1, 2, 3}) == ({0, 1, 2}, {3})
    assert split_cores({5}) == ({5}, {5})


def _locust_rows(tmp_path: Path, rows: str) -> list[LocustRow]:
    path = tmp_path / "locust_stats.csv"
    path.write_text(STATS_HEADER + rows)
    return read_locust_stats(path)


def test_locust_stats_and_failures(tmp_path: Path) -> None:
    rows = _locust_rows(
        tmp_path,
        "GET,/v1/blocks/[slot],900,2,3,9\n"
        "POST,/v1/events (view),100,1,5,40\n"
        ",Aggregated,1000,3,3,N/A\n",
    )
    assert [(row.name, row.requests, row.p99_ms) for row in rows] == [
        ("/v1/blocks/[slot]", 900, 9.0),
        ("/v1/events (view)", 100, 40.0),
        ("Aggregated", 1000, 0.0),
    ]
    assert locust_failures(rows) == 3


def _histogram(route: str, seconds: list[float]) -> str:
    registry = CollectorRegistry()
    latency = Histogram(
        "recsvc_request_duration_seconds",
        "",
        ["route"],
        registry=registry,
        buckets=(0.001, 0.005, 0.01),
    )
    for value in seconds:
        latency.labels(route).observe(value)
    latency.labels("/metrics").observe(0.002)
    return generate_latest(registry).decode()


def test_server_latency_reads_the_histogram() -> None:
    route = "/v1/customers/<key>/recommendations"
    buckets = server_latency(_histogram(route, [0.0005] * 60 + [0.003] * 39 + [0.02]))
    assert buckets[route] == [(0.001, 60), (0.005, 99), (0.01, 99), (float("inf"), 100)]


def test_requests_served_leaves_out_the_scrapes() -> None:
    registry = CollectorRegistry()
    requests = Counter(
        "recsvc_requests", "requests", ["route", "method", "status"], registry=registry
    )
    assert requests_served(generate_latest(registry).decode()) == 0
    requests.labels("/metrics", "GET", "200").inc(3)
    assert requests_served(generate_latest(registry).decode()) == 0
    requests.labels("/v1/customers/<key>/recommendations", "GET", "200").inc(2)
    requests.labels("/v1/events", "POST", "400").inc()
    assert requests_served(generate_latest(registry).decode()) == 3


def test_latency_since_counts_only_the_measured_window() -> None:
    route = "/v1/customers/<key>/recommendations"
    before = server_latency(_histogram(route, [0.02] * 3))  # the warm-up's slow requests
    after = server_latency(_histogram(route, [0.02] * 3 + [0.0005] * 10))
    assert latency_since(before, after)[route] == [
        (0.001, 10),
        (0.005, 10),
        (0.01, 10),
        (float("inf"), 10),
    ]
    assert latency_since({}, after)[route] == after[route]


def test_route_rows_put_the_three_views_side_by_side(sample_models: Path, tmp_path: Path) -> None:
    traffic = Traffic(load_current(sample_models))
    route = "/v1/customers/<key>/recommendations"
    server = server_latency(_histogram(route, [0.0005] * 60 + [0.003] * 39 + [0.02]))
    probed = ProbeResult(
        latencies_ms={name: [] for name in traffic.reads}, failures=dict.fromkeys(traffic.reads, 0)
    )
    probed.latencies_ms["/v1/customers/[key]/recommendations"] = [1.0, 2.0, 8.0]
    locust = _locust_rows(
        tmp_path,
        "GET,/v1/customers/[key]/recommendations,10,0,2,9\n"
        "GET,/v1/customers/[session]/recommendations,5,0,3,14\n"
        "POST,/v1/events (view),5,0,3,40\n",
    )

    rows = {row.route: row for row in route_rows(traffic, server, probed, locust)}

    recommendations = rows[route]
    assert (recommendations.server_requests, recommendations.server_p99_ms) == (100, 5.0)
    assert recommendations.server_p50_ms == 1.0 and recommendations.server_within_5_ms == 0.99
    assert (recommendations.probe_requests, recommendations.probe_p99_ms) == (3, 8.0)
    assert (recommendations.locust_requests, recommendations.locust_p99_ms) == (15, 14.0)
    assert rows["/v1/blocks/<slot>"].server_p99_ms is None  # nothing timed
    assert "/v1/events" not in rows and "/metrics" not in rows


def _row(route: str, server_p99: float | None, probe_p99: float | None) -> RouteRow:
    return RouteRow(
        route=route,
        server_requests=0 if server_p99 is None else 100,
        server_p50_ms=None if server_p99 is None else 1.0,
        server_p99_ms=server_p99,
        server_within_5_ms=None if server_p99 is None else 1.0,
        probe_requests=0 if probe_p99 is None else 50,
        probe_p50_ms=probe_p99,
        probe_p99_ms=probe_p99,
        locust_requests=100,
        locust_p99_ms=40.0,  # locust's own figure is shown, never judged
    )


def _report(routes: list[RouteRow], failures: int = 0, probed: int = 50) -> Report:
    result = ProbeResult(latencies_ms={"r": [1.0] * probed}, failures={"r": 0}, cpu_seconds=0.1)
    return Report(routes, failures, 1000, 1.0, result, [0], [1])


def test_verdict_judges_the_server_and_the_probe(capsys: pytest.CaptureFixture[str]) -> None:
    fast = _row("/v1/blocks/<slot>", 5.0, 9.0)
    assert verdict(_report([fast, _row("/v1/x", 10.0, None)]), p99_ms=10.0, max_failures=0)
    assert not verdict(_report([fast, _row("/v1/x", 25.0, 3.0)]), p99_ms=10.0, max_failures=0)
    assert not verdict(_report([fast, _row("/v1/x", 5.0, 11.0)]), p99_ms=10.0, max_failures=0)
    assert not verdict(_report([fast, _row("/v1/x", None, 3.0)]), p99_ms=10.0, max_failures=0)
    assert not verdict(_report([fast], failures=1), p99_ms=10.0, max_failures=0)
    assert verdict(_report([fast], failures=1), p99_ms=10.0, max_failures=1)
    assert not verdict(_report([fast], probed=0), p99_ms=10.0, max_failures=0)
    out = capsys.readouterr().out
    assert "FAIL: /v1/x: server p99 over 10 ms" in out
    assert "FAIL: /v1/x: probe p99 11.0 ms > 10 ms" in out
    assert "FAIL: /v1/x: the server timed no request" in out
    assert "FAIL: the probe sent no request" in out


def test_server_view_reads_the_service_own_metrics(client: FlaskClient) -> None:
    """The runner reads a 5 ms bound that the service's histogram must have."""
    assert client.get("/healthz").status_code == 200
    exposition = client.get("/metrics").get_data(as_text=True)

    buckets = server_latency(exposition)

    last_bound, answered = buckets["/healthz"][-1]
    assert last_bound == float("inf") and answered >= 1
    assert 0.005 in dict(buckets["/healthz"])
