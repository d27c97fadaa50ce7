"""Serving benchmark: the recommendation endpoint against a trivial endpoint on one gunicorn.

    python benchmarks/serving.py --models-dir models [--rounds 5] [--duration 6]

Starts gunicorn with gunicorn.conf.py (API keys on, as in production) on the bundle, warms
it up, then alternates maximum-throughput runs of /healthz and of
/v1/customers/<id>/recommendations over every customer in the bundle (wrk, 8 connections),
so the machine's noise hits both alike. Both runs use the same wrk script and headers, so
the load generator, which shares the cores, does the same work per request for each.
Prints and writes (--out, JSON) the requests/s of each, their ratio, and p50/p99 latency at
half the recommendation endpoint's maximum rate.
Needs wrk (Debian package wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import load_current  # noqa: E402

# One script drives both endpoints, so each request costs the client (which shares the
# machine's cores with the server) the same: the ratio compares the server's work only.
WRK_LUA = """
local ids = {}
for line in io.lines(os.getenv("RECSVC_BENCH_IDS")) do ids[#ids + 1] = line end
local path = os.getenv("RECSVC_BENCH_PATH")
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", (path:gsub("{id}", ids[(i % #ids) + 1])))
end
local pause = tonumber(os.getenv("RECSVC_BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end
end
"""
HEALTHZ = "/healthz"
RECOMMENDATIONS = "/v1/customers/{id}/recommendations?n=10"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    # Many short rounds rather than a few long ones: on a shared machine a noisy stretch then
    # spoils one round, and the median drops it.
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: gunicorn.conf.py")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/serving.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    bundle = load_current(args.models_dir)
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-bench-"))
    ids = scratch / "ids.txt"
    ids.write_text("\n".join(str(c) for c in bundle.arrays.customer_ids) + "\n")
    script = scratch / "requests.lua"
    script.write_text(WRK_LUA)
    # A limit far above any rate here: the limiter runs on every request but never refuses.
    key, line = mint("bench", ["recs:read"], rate=1_000_000)
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(args.models_dir),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_BENCH_IDS": str(ids),
    }
    if args.workers:
        env["RECSVC_WORKERS"] = str(args.workers)
    with gunicorn(env) as base:

        def run(path: str, duration: int, delay_ms: float = 0.0) -> dict[str, float]:
            run_env = {**env, "RECSVC_BENCH_PATH": path, "RECSVC_BENCH_DELAY_MS": str(delay_ms)}
            target = ["-H", f"X-API-Key: {key}", "-s", str(script), base]
            return _wrk(target, args.connections, duration, run_env)

        def healthz(duration: int) -> dict[str, float]:
            return run(HEALTHZ, duration)

        def recommendations(duration: int, delay_ms: float = 0.0) -> dict[str, float]:
            return run(RECOMMENDATIONS, duration, delay_ms)

        recommendations(3)  # warm-up: caches, page cache, allocator
        rounds = []
        for _ in range(args.rounds):
            trivial, recs = healthz(args.duration), recommendations(args.duration)
            rounds.append(
                {
                    "healthz_rps": trivial["rps"],
                    "recommendations_rps": recs["rps"],
                    "ratio": recs["rps"] / trivial["rps"],
                }
            )
        best = statistics.median(r["recommendations_rps"] for r in rounds)
        half = best / 2
        # Each connection waits so that all together send about half the maximum rate.
        delay = max(args.connections / half * 1000.0 - 1.0, 0.0)
        paced = recommendations(args.duration, delay)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "bundle": bundle.version,
        "customers": len(bundle.arrays.customer_ids),
        "items": len(bundle.arrays.item_ids),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": rounds,
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "half_load": {"target_rps": round(half, 1), **paced},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for number, entry in enumerate(rounds, start=1):
        print(
            f"round {number}: /healthz {entry['healthz_rps']:.0f} req/s, recommendations "
            f"{entry['recommendations_rps']:.0f} req/s, ratio {entry['ratio']:.2f}"
        )
    print(f"ratio (median): {result['ratio_median']:.2f}  (target >= 0.75)")
    print(
        f"at half load ({paced['rps']:.0f} req/s of a target {half:.0f}): "
        f"p50 {paced['p50_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms (target <= 10), "
        f"errors {paced['errors']:.0f}"
    )
    print(f"written to {args.out}")
    return 0


def _wrk(
    target: list[str], connections: int, duration: int, env: dict[str, str]
) -> dict[str, float]:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *target],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        return float(match[1]) * scale

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    return {
        "rps": float(rps[1]),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": float(errors[1] if errors else 0)
        + (sum(float(x) for x in socket_errors.groups()) if socket_errors else 0.0),
    }


if __name__ == "__main__":
    raise SystemExit(main())
