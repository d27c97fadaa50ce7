"""Run the load test against a local gunicorn and check the latency targets.

    python loadtests/run.py --models-dir models [--rate 100] [--users 10] [--duration 60]

Starts gunicorn (gunicorn.conf.py, API keys on) on the bundle and sends it two kinds of
traffic at once: locust's realistic mix (``loadtests/locustfile.py``: visits, blocks, email
picks, events) at ``--rate`` requests/s in total, and a light probe (``loadtests/probe.py``)
that sends the read endpoints at ``--probe-rate`` more. On a machine with two cores or more
the clients run on a core of their own and gunicorn on the others.

locust's users start one after the other over ``--warmup`` seconds (counted from its first
request), whose latency is not judged: all of them starting at once sent the fresh workers a
burst no shop's traffic has, and the probe's requests caught in it took 14-27 ms. The latency
verdict covers the ``--duration`` seconds after it: the probe runs in them, and the server's
histogram is read at both ends. locust's figures, and the failures counted, cover the whole
run.

The verdict, per read route: the server's own latency histogram (from /metrics) and the
probe's figures must both keep p99 within ``--p99-ms``, and no request may fail. locust's
figures are printed beside them, with the CPU its client spent per request: on a small
machine locust's own cost (about 1.5 ms of CPU a request) inflates what it measures, so it
shows the mix, not the verdict. Writes locust's CSV and HTML reports and ``verdict.json`` to
``--out-dir``; exits 1 when a target is missed. Needs locust (``pip install -e '.[load]'``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from loadtests.probe import ProbeResult, percentile, probe  # noqa: E402
from loadtests.traffic import Traffic  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import load_current  # noqa: E402

LOCUST_MARGIN_SECONDS = 2
# (upper bound in seconds, requests at or under it) per route, the last bound infinite
Histograms = dict[str, list[tuple[float, int]]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="locust's requests/s in total")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--probe-rate", type=float, default=20.0, help="the probe's requests/s")
    parser.add_argument("--duration", type=int, default=60, help="seconds measured")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of ramp-up before the measured ones"
    )
    parser.add_argument("--p99-ms", type=float, default=10.0, help="target for reads")
    parser.add_argument("--max-failures", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    args = parser.parse_args()
    locust_command()
    traffic = Traffic(load_current(args.models_dir))
    # A limit far above the test rate: the limiter runs on every request but never refuses.
    key, line = mint("loadtest", ["recs:read", "events:write", "metrics:read"], rate=1_000_000)
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-load-"))
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(args.models_dir),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_LOADTEST_KEY": key,
        "RECSVC_LOADTEST_RATE_PER_USER": str(args.rate / args.users),
    }
    cores = os.sched_getaffinity(0)
    server_cores, client_cores = split_cores(cores)
    os.sched_setaffinity(0, server_cores)  # gunicorn and its workers inherit it
    try:
        with gunicorn(env) as base:
            os.sched_setaffinity(0, client_cores)  # the probe and locust
            answered = requests_served(scrape_metrics(base, key))  # gunicorn's start probes
            # locust runs through the probe's window, and a margin past it.
            seconds = math.ceil(args.warmup + args.duration) + LOCUST_MARGIN_SECONDS
            locust = locust_run(base, env, args.users, seconds, args.out_dir, args.warmup)
            wait_for_first_requests(base, key, locust, answered)  # locust takes a second to start
            time.sleep(args.warmup)
            before = server_latency(scrape_metrics(base, key))
            probed = probe(
                base,
                {"X-API-Key": key},
                list(traffic.reads.values()),
                args.probe_rate,
                args.duration,
            )
            served = latency_since(before, server_latency(scrape_metrics(base, key)))
            locust_cpu = finished_cpu_seconds(locust)
    finally:
        os.sched_setaffinity(0, cores)
    locust_stats = read_locust_stats(args.out_dir / "locust_stats.csv")
    report = Report(
        routes=route_rows(traffic, served, probed, locust_stats),
        failures=sum(probed.failures.values()) + locust_failures(locust_stats),
        locust_requests=sum(row.requests for row in locust_stats if row.name != "Aggregated"),
        locust_cpu_seconds=locust_cpu,
        probe=probed,
        server_cores=sorted(server_cores),
        client_cores=sorted(client_cores),
    )
    print_report(report)
    passed = verdict(report, args.p99_ms, args.max_failures)
    (args.out_dir / "verdict.json").write_text(
        json.dumps(report.to_json(args.p99_ms, args.max_failures, passed), indent=2) + "\n"
    )
    return 0 if passed else 1


def split_cores(cores: set[int]) -> tuple[set[int], set[int]]:
    """(the server's cores, the clients' core): the last core for the clients where there are
    two or more, so the clients' CPU does not queue the server's requests; all cores for both
    on one."""
    if len(cores) < 2:
        return cores, cores
    client = max(cores)
    return cores - {client}, {client}


def finished_cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) that ``process`` spent, once it has exited."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def locust_command() -> str:
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    if not Path(locust).exists():
        sys.exit("locust is needed: pip install -e '.[load]'")
    return locust


def locust_run(
    base: str,
    env: dict[str, str],
    users: int,
    duration: int,
    out_dir: Path,
    ramp_up: float = 0.0,
) -> subprocess.Popen[bytes]:
    """Start locust headless against ``base`` for ``duration`` seconds, its users starting
    over ``ramp_up`` seconds (0: all at once); its CSV and HTML reports go to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spawn_rate = users / ramp_up if ramp_up > 0 else users
    return subprocess.Popen(
        [
            locust_command(),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(spawn_rate),
            "-t",
            f"{duration}s",
            "--host",
            base,
            "--csv",
            str(out_dir / "locust"),
            "--html",
            str(out_dir / "report.html"),
            "--only-summary",
        ],
        # gevent's default resolver hands every lookup, even of an IP literal, to a thread:
        # one per request here, as the sync workers close each connection. It added ~4 ms
        # to a plain gevent client's p99 against /healthz.
        env={"GEVENT_RESOLVER": "block", **env},
    )


def scrape_metrics(base: str, key: str) -> str:
    scrape = urllib.request.Request(f"{base}/metrics", headers={"X-API-Key": key})
    with urllib.request.urlopen(scrape, timeout=10) as response:
        text: str = response.read().decode()
    return text


def requests_served(metrics_text: str) -> int:
    """Requests the server answered, its metrics' scrapes left out."""
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "recsvc_requests"
        for sample in family.samples
        if sample.name == "recsvc_requests_total" and sample.labels["route"] != "/metrics"
    )


def wait_for_first_requests(
    base: str, key: str, client: subprocess.Popen[bytes], answered: int, seconds: float = 60.0
) -> None:
    """Until the server has answered more than ``answered`` requests: one from ``client``,
    as nothing else sends meanwhile."""
    deadline = time.monotonic() + seconds
    while requests_served(scrape_metrics(base, key)) <= answered:
        if client.poll() is not None:
            sys.exit(f"locust exited with status {client.returncode} before sending a request")
        if time.monotonic() > deadline:
            sys.exit(f"locust sent no request within {seconds:g} s")
        time.sleep(0.1)


def latency_since(before: Histograms, after: Histograms) -> Histograms:
    """The requests ``after`` counts that ``before`` did not, per route and bound."""
    since = {}
    for route, counts in after.items():
        earlier = dict(before.get(route, []))
        since[route] = [(bound, n - earlier.get(bound, 0)) for bound, n in counts]
    return since


def server_latency(metrics_text: str) -> Histograms:
    """Each route's cumulative latency histogram, as the server measured it: (upper bound in
    seconds, requests at or under it), the last bound infinite."""
    buckets: dict[str, list[tuple[float, int]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "recsvc_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                route = sample.labels["route"]
                buckets.setdefault(route, []).append(
                    (float(sample.labels["le"]), int(sample.value))
                )
    return {route: sorted(counts) for route, counts in buckets.items()}


@dataclass(frozen=True)
class LocustRow:
    method: str
    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float


def read_locust_stats(path: Path) -> list[LocustRow]:
    with path.open() as handle:
        return [
            LocustRow(
                row["Type"],
                row["Name"],
                int(row["Request Count"]),
                int(row["Failure Count"]),
                *(float(row[q]) if row[q] not in ("", "N/A") else 0.0 for q in ("50%", "99%")),
            )
            for row in csv.DictReader(handle)
        ]


def locust_failures(rows: list[LocustRow]) -> int:
    return sum(row.failures for row in rows if row.name == "Aggregated")


def server_percentile(counts: list[tuple[float, int]], share: float) -> float:
    """The histogram bound (ms) under which ``share`` of the route's requests fell."""
    total = counts[-1][1]
    return 1000 * next(bound for bound, n in counts if n >= share * total)


@dataclass(frozen=True)
class RouteRow:
    """One read route, seen by the server, the probe and locust (None: no request)."""

    route: str
    server_requests: int
    server_p50_ms: float | None  # histogram bounds: the figure is at or under them
    server_p99_ms: float | None
    server_within_5_ms: float | None  # share of requests
    probe_requests: int
    probe_p50_ms: float | None
    probe_p99_ms: float | None
    locust_requests: int
    locust_p99_ms: float | None  # the worst of locust's request names on the route


def route_rows(
    traffic: Traffic, server: Histograms, probed: ProbeResult, locust: list[LocustRow]
) -> list[RouteRow]:
    routes = {read.route for read in traffic.reads.values()} | set(traffic.session_routes.values())
    rows = []
    for route in sorted(routes):
        counts = server.get(route, [])
        served = counts[-1][1] if counts else 0
        probe_latencies = [
            latency
            for name, latencies in probed.latencies_ms.items()
            if traffic.reads[name].route == route
            for latency in latencies
        ]
        by_locust = [
            row for row in locust if row.method == "GET" and traffic.route_of(row.name) == route
        ]
        rows.append(
            RouteRow(
                route=route,
                server_requests=served,
                server_p50_ms=server_percentile(counts, 0.5) if served else None,
                server_p99_ms=server_percentile(counts, 0.99) if served else None,
                server_within_5_ms=dict(counts)[0.005] / served if served else None,
                probe_requests=len(probe_latencies),
                probe_p50_ms=percentile(probe_latencies, 0.5) if probe_latencies else None,
                probe_p99_ms=percentile(probe_latencies, 0.99) if probe_latencies else None,
                locust_requests=sum(row.requests for row in by_locust),
                locust_p99_ms=max((row.p99_ms for row in by_locust), default=None),
            )
        )
    return rows


@dataclass(frozen=True)
class Report:
    routes: list[RouteRow]
    failures: int  # the probe's and locust's, reads and writes
    locust_requests: int
    locust_cpu_seconds: float
    probe: ProbeResult
    server_cores: list[int]
    client_cores: list[int]

    def to_json(self, p99_ms: float, max_failures: int, passed: bool) -> dict[str, object]:
        return {
            "passed": passed,
            "p99_target_ms": p99_ms,
            "max_failures": max_failures,
            "failures": self.failures,
            "server_cores": self.server_cores,
            "client_cores": self.client_cores,
            "locust_requests": self.locust_requests,
            "locust_cpu_ms_per_request": _per_request(
                self.locust_cpu_seconds, self.locust_requests
            ),
            "probe_requests": self.probe.requests,
            "probe_cpu_ms_per_request": _per_request(self.probe.cpu_seconds, self.probe.requests),
            "routes": [row.__dict__ for row in self.routes],
        }


def _per_request(cpu_seconds: float, requests: int) -> float | None:
    return round(1000 * cpu_seconds / requests, 3) if requests else None


def print_report(report: Report) -> None:
    """Per read route, the server's view, the probe's and locust's side by side."""
    print("\nRead latency (ms), as the server timed it (histogram bounds), the probe and locust:")
    header = "route", "server n", "p50 <=", "p99 <=", "<=5 ms", "probe n", "p50", "p99"
    line = "{:38} {:>8} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>8} {:>6}"
    print(line.format(*header, "locust n", "p99"))
    for row in report.routes:
        print(
            line.format(
                row.route,
                row.server_requests,
                _ms(row.server_p50_ms),
                _ms(row.server_p99_ms),
                "-" if row.server_within_5_ms is None else f"{100 * row.server_within_5_ms:.1f}%",
                row.probe_requests,
                _ms(row.probe_p50_ms),
                _ms(row.probe_p99_ms),
                row.locust_requests,
                _ms(row.locust_p99_ms),
            )
        )
    locust_cost = _per_request(report.locust_cpu_seconds, report.locust_requests)
    probe_cost = _per_request(report.probe.cpu_seconds, report.probe.requests)
    print(
        f"\nClients on core(s) {report.client_cores}, gunicorn on {report.server_cores}. "
        f"CPU per request: locust {locust_cost} ms ({report.locust_requests} requests), "
        f"the probe {probe_cost} ms ({report.probe.requests}). Failed requests: "
        f"{report.failures}."
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 10 else f"{value:.0f}"


def verdict(report: Report, p99_ms: float, max_failures: int) -> bool:
    """True when every read route was served with p99 within ``p99_ms`` by the server's
    histogram and by the probe, and at most ``max_failures`` requests failed; prints why not."""
    problems = []
    for row in report.routes:
        if row.server_p99_ms is None:
            problems.append(f"{row.route}: the server timed no request")
        elif row.server_p99_ms > p99_ms:
            problems.append(f"{row.route}: server p99 over {p99_ms:g} ms")
        if row.probe_p99_ms is not None and row.probe_p99_ms > p99_ms:
            problems.append(f"{row.route}: probe p99 {row.probe_p99_ms:.1f} ms > {p99_ms:g} ms")
    if report.probe.requests == 0:
        problems.append("the probe sent no request")
    if report.failures > max_failures:
        problems.append(f"{report.failures} failed requests (allowed {max_failures})")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("PASS" if not problems else "targets missed")
    return not problems


if __name__ == "__main__":
    raise SystemExit(main())
