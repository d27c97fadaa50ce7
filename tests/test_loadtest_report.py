"""The load-test runner's verdict on locust's figures and its reading of the server's
latency histogram."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtests.run import print_server_view, server_latency, verdict

STATS_HEADER = "Type,Name,Request Count,Failure Count,50%,99%\n"


def _stats(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "locust_stats.csv"
    path.write_text(STATS_HEADER + rows)
    return path


def test_verdict_judges_reads_and_failures(tmp_path: Path) -> None:
    passing = _stats(
        tmp_path,
        "GET,/v1/customers/[key]/recommendations,900,0,3,9\n"
        "POST,/v1/events,100,0,5,40\n"  # a write: its p99 is not a read target
        ",Aggregated,1000,0,3,12\n",
    )
    assert verdict(passing, p99_ms=10.0, max_failures=0) == 0
    slow_read = _stats(tmp_path, "GET,/v1/blocks/[slot],900,0,3,11\n,Aggregated,900,0,3,11\n")
    assert verdict(slow_read, p99_ms=10.0, max_failures=0) == 1
    failures = _stats(tmp_path, "GET,/v1/blocks/[slot],900,2,3,9\n,Aggregated,900,2,3,9\n")
    assert verdict(failures, p99_ms=10.0, max_failures=0) == 1
    assert verdict(failures, p99_ms=10.0, max_failures=2) == 0
    nothing = _stats(tmp_path, ",Aggregated,0,0,N/A,N/A\n")
    assert verdict(nothing, p99_ms=10.0, max_failures=0) == 1


def test_server_latency_reads_the_histogram(capsys: pytest.CaptureFixture[str]) -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "recsvc_request_duration_seconds",
        "",
        ["route"],
        registry=registry,
        buckets=(0.001, 0.005, 0.01),
    )
    for seconds in [0.0005] * 60 + [0.003] * 39 + [0.02]:
        latency.labels("/v1/customers/<key>/recommendations").observe(seconds)
    latency.labels("/metrics").observe(0.002)

    buckets = server_latency(generate_latest(registry).decode())

    assert buckets["/v1/customers/<key>/recommendations"] == [
        (0.001, 60),
        (0.005, 99),
        (0.01, 99),
        (float("inf"), 100),
    ]
    print_server_view(buckets)
    lines = capsys.readouterr().out.splitlines()
    route_lines = [line for line in lines if line.startswith("/")]
    assert len(route_lines) == 1  # /metrics, the runner's own scrape, is left out
    assert route_lines[0].split() == [
        "/v1/customers/<key>/recommendations",
        "100",
        "1",
        "ms",
        "5",
        "ms",
        "99.0",
        "%",
        "99.0",
        "%",
    ]


def test_server_view_reads_the_service_own_metrics(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runner reads bounds (5 and 10 ms) that the service's histogram must have."""
    assert client.get("/healthz").status_code == 200
    exposition = client.get("/metrics").get_data(as_text=True)

    buckets = server_latency(exposition)

    last_bound, answered = buckets["/healthz"][-1]
    assert last_bound == float("inf") and answered >= 1
    print_server_view(buckets)
    assert "/healthz" in capsys.readouterr().out
