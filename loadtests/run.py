"""Run the locust suite against a local gunicorn and check the targets.

    python loadtests/run.py --models-dir models [--rate 100] [--users 10] [--duration 60]

Starts gunicorn (gunicorn.conf.py, API keys on) on the bundle, runs locust headless at
``--rate`` requests/s in total for ``--duration`` seconds, writes locust's CSV and HTML
reports to --out-dir, and exits 1 when a read endpoint's p99 exceeds --p99-ms or more than
--max-failures requests failed. It also prints the server's own view of the same requests
(its latency histogram from /metrics), which leaves out the time locust's client spends on
the shared cores. Needs locust (``pip install -e '.[load]'``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s in total")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="target for reads")
    parser.add_argument("--max-failures", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    args = parser.parse_args()
    locust_command()
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
    with gunicorn(env) as base:
        locust_run(base, env, args.users, args.duration, args.out_dir).wait()
        scrape = urllib.request.Request(f"{base}/metrics", headers={"X-API-Key": key})
        with urllib.request.urlopen(scrape, timeout=10) as response:
            metrics_text = response.read().decode()
    print_server_view(server_latency(metrics_text))
    return verdict(args.out_dir / "locust_stats.csv", args.p99_ms, args.max_failures)


def locust_command() -> str:
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    if not Path(locust).exists():
        sys.exit("locust is needed: pip install -e '.[load]'")
    return locust


def locust_run(
    base: str, env: dict[str, str], users: int, duration: int, out_dir: Path
) -> subprocess.Popen[bytes]:
    """Start locust headless against ``base``; its CSV and HTML reports go to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            locust_command(),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
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


def verdict(stats: Path, p99_ms: float, max_failures: int) -> int:
    with stats.open() as handle:
        rows = list(csv.DictReader(handle))
    total = sum(int(row["Request Count"]) for row in rows if row["Name"] == "Aggregated")
    if total == 0:
        print("FAIL: no request was made (see locust's output above)")
        return 1
    failed = False
    print(f"\n{'endpoint':45} {'requests':>9} {'failures':>9} {'p50 ms':>7} {'p99 ms':>7}")
    for row in rows:
        name, method = row["Name"], row["Type"]
        requests, failures = int(row["Request Count"]), int(row["Failure Count"])
        p50, p99 = (float(row[q]) if row[q] not in ("", "N/A") else 0.0 for q in ("50%", "99%"))
        print(f"{method + ' ' + name:45} {requests:>9} {failures:>9} {p50:>7.1f} {p99:>7.1f}")
        if name == "Aggregated":
            if failures > max_failures:
                print(f"FAIL: {failures} failed requests (allowed {max_failures})")
                failed = True
        elif method == "GET" and p99 > p99_ms:
            print(f"FAIL: {name} p99 {p99:.1f} ms > {p99_ms} ms")
            failed = True
    print("PASS" if not failed else "targets missed")
    return 1 if failed else 0


def server_latency(metrics_text: str) -> dict[str, list[tuple[float, int]]]:
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


def print_server_view(buckets: dict[str, list[tuple[float, int]]]) -> None:
    """Per route: the histogram bounds that its p50 and p99 lie under, and the share of
    requests answered within 5 and 10 ms."""
    print("\nAs the server timed the requests (its histogram, without the client's time):")
    header = ("route", "requests", "p50 under", "p99 under", "<= 5 ms", "<= 10 ms")
    print("{:45} {:>9} {:>10} {:>10} {:>8} {:>9}".format(*header))
    for route, counts in sorted(buckets.items()):
        total = counts[-1][1]
        if route in ("/metrics", "/readyz") or total == 0:
            continue
        at_or_under = dict(counts)
        p50, p99 = (next(bound for bound, n in counts if n >= q * total) for q in (0.5, 0.99))
        row = (
            route,
            total,
            f"{p50 * 1000:g} ms",
            f"{p99 * 1000:g} ms",
            f"{100 * at_or_under[0.005] / total:.1f} %",
            f"{100 * at_or_under[0.01] / total:.1f} %",
        )
        print("{:45} {:>9} {:>10} {:>10} {:>8} {:>9}".format(*row))


if __name__ == "__main__":
    raise SystemExit(main())
