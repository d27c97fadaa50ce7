"""Run the locust suite against a local gunicorn and check the targets.

    python loadtests/run.py --models-dir models [--rate 300] [--users 30] [--duration 60]

Starts gunicorn (gunicorn.conf.py, API keys on) on the bundle, runs locust headless at
``--rate`` requests/s in total for ``--duration`` seconds, writes locust's CSV and HTML
reports to --out-dir, and exits 1 when a read endpoint's p99 exceeds --p99-ms or more than
--max-failures requests failed. Needs locust (``pip install -e '.[load]'``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s in total")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--p99-ms", type=float, default=10.0, help="target for reads")
    parser.add_argument("--max-failures", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    args = parser.parse_args()
    locust_command()
    # A limit far above the test rate: the limiter runs on every request but never refuses.
    key, line = mint("loadtest", ["recs:read", "events:write"], rate=1_000_000)
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
        env=env,
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


if __name__ == "__main__":
    raise SystemExit(main())
