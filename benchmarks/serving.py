"""Serving benchmark: read endpoints against a trivial endpoint on one gunicorn.

    python benchmarks/serving.py --models-dir models [--endpoint recommendations]
        [--endpoint similar] [--endpoint cart] [--rounds 5] [--duration 6]

Starts gunicorn with gunicorn.conf.py (API keys on, as in production) on the bundle, warms
it up, then, per round and per ``--endpoint`` (default: recommendations), runs /healthz and
the endpoint at maximum throughput one after the other (wrk, 8 connections), so the
machine's noise hits both alike. Every run uses the same wrk script and headers, so the load
generator, which shares the cores, does the same work per request for each. The requests
cycle through URLs made from the bundle (``ENDPOINTS``):

- ``recommendations``: every customer's recommendations (reasons included);
- ``similar``: items with neighbours, half drawn by how many customers bought them (popular
  items, as product pages are visited) and half uniformly (the long tail), every other one
  with ``customer=``;
- ``cart``: carts of 1 to 5 items one customer bought together, every other one with
  ``customer=`` another customer;
- ``sessions``: recommendations as ``recommendations`` asks them, with 30 % of the requests
  from anonymous sessions that viewed 3 to 8 items of one category (posted as view events
  before the runs): interaction-driven personalisation on;
- ``block``: every slot's JSON block for known customers;
- ``blocks``: the same with the same 30 % share of sessions as ``sessions``;
- ``email-picks``: three sends' picks for each of 1,666 customers, each asked once before the
  runs, so the runs read the kept snapshots (a send's picks are fixed at its first open);
- ``round-trip``: not a product endpoint, the floor under them (``benchmarks/round_trip_app.py``,
  served by the same gunicorn when it is asked for): every customer's key check, rate limit and
  state read, one store round trip, and no work after it. Its ratio is the most any customer
  endpoint can reach on the store; it has no target of its own.

``--store`` picks the real-time store: ``embedded`` (the default; RECSVC_REDIS_URL is
ignored), ``redis`` or ``cluster`` (``--redis-url``, or a private redis-server, or a private
3-master + 3-replica Redis Cluster, that the benchmark starts and stops). The private
servers are this process's children, so their CPU counts in the server's CPU per request.

Prints and writes (--out, JSON) each endpoint's requests/s against /healthz per round, their
ratio, and p50/p99 latency at half the endpoint's maximum rate, with the load average and
the targets (``targets``: with a Redis, p99 <= 5 ms; on a cluster, a ratio of 0.6). Each
run's CPU time per request (gunicorn's processes from /proc, so Linux only, and wrk's) gives
a second ratio, /healthz's over the endpoint's: what the requests/s ratio would be with the
cores to the benchmark alone, and much less disturbed than the requests/s when other work
shares the machine.
Needs wrk: ``apt-get install wrk`` (Debian and Ubuntu package wrk; https://github.com/wg/wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import RedisClusterProcess, RedisProcess, gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import Bundle, load_current  # noqa: E402

# One script drives every endpoint, so each request costs the client (which shares the
# machine's cores with the server) the same: the ratio compares the server's work only.
WRK_LUA = """
local paths = {}
for line in io.lines(os.getenv("RECSVC_BENCH_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
local pause = tonumber(os.getenv("RECSVC_BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end
end
"""
HEALTHZ = "/healthz"
URLS = 5000  # per endpoint (recommendations: one per customer)
MAX_CART = 5


def _recommendations(bundle: Bundle, _: np.random.Generator) -> list[str]:
    return [
        f"/v1/customers/{quote(str(c), safe='')}/recommendations?n=10"
        for c in bundle.arrays.customer_ids
    ]


def _similar(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    arrays = bundle.arrays
    linked = np.flatnonzero(np.diff(arrays.neighbour_indptr) > 0)
    buyers = np.bincount(arrays.owned_indices, minlength=len(arrays.item_ids))[linked]
    popular = rng.choice(linked, URLS // 2, p=buyers / buyers.sum())
    tail = rng.choice(linked, URLS - URLS // 2)
    items = np.column_stack((popular, tail)).ravel()  # alternate popular and long-tail
    customers = rng.choice(arrays.customer_ids, len(items))
    return [
        f"/v1/items/{quote(str(arrays.item_ids[item]), safe='')}/similar?n=10"
        + (f"&customer={quote(str(customers[k]), safe='')}" if k % 2 else "")
        for k, item in enumerate(items)
    ]


def _cart(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    arrays = bundle.arrays
    indptr = arrays.owned_indptr
    buyers = np.flatnonzero(np.diff(indptr) > 0)
    urls = []
    for k, row in enumerate(rng.choice(buyers, URLS)):
        owned = arrays.owned_indices[indptr[row] : indptr[row + 1]]
        cart = rng.choice(owned, min(int(rng.integers(1, MAX_CART + 1)), len(owned)), False)
        items = ",".join(quote(str(arrays.item_ids[item]), safe="") for item in cart)
        customer = quote(str(rng.choice(arrays.customer_ids)), safe="")
        urls.append(
            f"/v1/cart/recommendations?items={items}" + (f"&customer={customer}" if k % 2 else "")
        )
    return urls


SESSIONS = 1000  # anonymous sessions with recent views
SESSION_SHARE = 0.3  # of the requests, in the endpoints that mix them in


def _session_views(bundle: Bundle, rng: np.random.Generator) -> list[dict[str, Any]]:
    """View events of SESSIONS sessions, each 3 to 8 items that share a category (a visit
    browsing one department), the newest a minute ago."""
    arrays = bundle.arrays
    linked = np.flatnonzero(np.diff(arrays.neighbour_indptr) > 0)
    categories = arrays.item_categories[linked]
    now = time.time()
    events = []
    for session in range(SESSIONS):
        seed = int(rng.choice(linked))
        same = linked[(categories & arrays.item_categories[seed]) != 0]
        pool = same if len(same) >= 3 else linked
        viewed = rng.choice(pool, min(int(rng.integers(3, 9)), len(pool)), replace=False)
        for k, item in enumerate(viewed):
            moment = datetime.fromtimestamp(now - 60 * (len(viewed) - k), UTC)
            events.append(
                {
                    "event_id": f"bench-view-{session}-{k}",
                    "kind": "view",
                    "customer": f"session:bench-{session}",
                    "item_id": str(arrays.item_ids[item]),
                    "timestamp": moment.isoformat(),
                }
            )
    return events


def _mixed(paths: list[str], session_paths: list[str], rng: np.random.Generator) -> list[str]:
    """``paths`` with SESSION_SHARE of them replaced by ``session_paths``, spread evenly."""
    chosen = rng.random(len(paths)) < SESSION_SHARE
    picks = rng.choice(session_paths, int(chosen.sum()))
    mixed = list(paths)
    for position, path in zip(np.flatnonzero(chosen).tolist(), picks.tolist(), strict=True):
        mixed[position] = str(path)
    return mixed


def _sessions(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    sessions = [f"/v1/customers/session:bench-{k}/recommendations?n=10" for k in range(SESSIONS)]
    return _mixed(_recommendations(bundle, rng), sessions, rng)


def _block(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    slots = list(bundle.manifest.channels.slots)
    customers = rng.choice(bundle.arrays.customer_ids, URLS)
    return [
        f"/v1/customers/{quote(str(c), safe='')}/blocks/{slots[k % len(slots)]}"
        for k, c in enumerate(customers)
    ]


def _blocks(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    slots = list(bundle.manifest.channels.slots)
    sessions = [
        f"/v1/customers/session:bench-{k}/blocks/{slots[k % len(slots)]}" for k in range(SESSIONS)
    ]
    return _mixed(_block(bundle, rng), sessions, rng)


SENDS = 3  # email sends per customer in ``email-picks``


def _round_trip(bundle: Bundle, _: np.random.Generator) -> list[str]:
    return [
        f"/bench/customers/{quote(str(c), safe='')}/round-trip" for c in bundle.arrays.customer_ids
    ]


def _email_picks(bundle: Bundle, rng: np.random.Generator) -> list[str]:
    customers = rng.choice(bundle.arrays.customer_ids, URLS // SENDS)
    return [
        f"/v1/customers/{quote(str(c), safe='')}/email-picks?send_id=bench-{send}&n=4"
        for send in range(SENDS)
        for c in customers
    ]


@dataclass(frozen=True)
class Endpoint:
    urls: Callable[[Bundle, np.random.Generator], list[str]]
    p99_ms: float | None  # the target at half load (None: a measurement without targets)
    # Events posted before the runs (the sessions' views).
    events: Callable[[Bundle, np.random.Generator], list[dict[str, Any]]] | None = None
    # Every URL asked once before the runs: they measure the answers kept (email picks'
    # snapshot per send), as every later open of the same email finds them.
    prefetch: bool = False


ENDPOINTS = {
    "recommendations": Endpoint(_recommendations, 10.0),
    "similar": Endpoint(_similar, 5.0),
    "cart": Endpoint(_cart, 5.0),
    "sessions": Endpoint(_sessions, 10.0, _session_views),
    "blocks": Endpoint(_blocks, 10.0, _session_views),
    "block": Endpoint(_block, 10.0),
    "email-picks": Endpoint(_email_picks, 10.0, prefetch=True),
    "round-trip": Endpoint(_round_trip, None),
}
ROUND_TRIP_APP = "benchmarks.round_trip_app:app"  # recsvc's app and the round-trip route
RATIO = 0.75  # every endpoint's target: requests/s against /healthz's
STORES = ("embedded", "redis", "cluster")
# Issue 22's targets with a Redis: p99 at half load for every endpoint here, and the ratio on
# a 3-master cluster.
REDIS_P99_MS = 5.0
CLUSTER_RATIO = 0.6


def targets(store: str, endpoint: str) -> tuple[float, float] | None:
    """The (ratio, p99 ms at half load) targets of ``endpoint`` on ``store``, if it has any."""
    p99_ms = ENDPOINTS[endpoint].p99_ms
    if p99_ms is None:
        return None
    if store == "embedded":
        return RATIO, p99_ms
    return (CLUSTER_RATIO if store == "cluster" else RATIO), min(p99_ms, REDIS_P99_MS)


REDIS_URL = "RECSVC_REDIS_URL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument(
        "--endpoint",
        action="append",
        choices=list(ENDPOINTS),
        help="repeatable; default: recommendations",
    )
    # Many short rounds rather than a few long ones: on a shared machine a noisy stretch then
    # spoils one round, and the median drops it.
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: gunicorn.conf.py")
    parser.add_argument("--store", choices=STORES, default="embedded")
    parser.add_argument(
        "--redis-url", help="with --store redis (default: a private redis-server on a free port)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/serving.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    names: list[str] = list(dict.fromkeys(args.endpoint or ["recommendations"]))
    bundle = load_current(args.models_dir)
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-bench-"))
    paths = {HEALTHZ: scratch / "healthz.txt"}
    paths[HEALTHZ].write_text(HEALTHZ + "\n")
    for name in names:
        paths[name] = scratch / f"{name}.txt"
        urls = ENDPOINTS[name].urls(bundle, np.random.default_rng(0))  # the same every run
        paths[name].write_text("\n".join(urls) + "\n")
    script = scratch / "requests.lua"
    script.write_text(WRK_LUA)
    # A limit far above any rate here: the limiter runs on every request but never refuses.
    key, line = mint("bench", ["recs:read", "blocks:read", "events:write"], rate=1_000_000)
    env = {
        **{name: value for name, value in os.environ.items() if name != REDIS_URL},
        "RECSVC_MODELS_DIR": str(args.models_dir),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
    }
    if args.workers:
        env["RECSVC_WORKERS"] = str(args.workers)
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as servers:
        if args.store == "redis":
            env[REDIS_URL] = args.redis_url or _private_redis(servers, scratch)
        elif args.store == "cluster":
            env[REDIS_URL] = args.redis_url or _private_cluster(servers, scratch)
        app = ROUND_TRIP_APP if "round-trip" in names else "recsvc.wsgi:app"
        base = servers.enter_context(gunicorn(env, app=app))

        def run(name: str, duration: int, delay_ms: float = 0.0) -> dict[str, float]:
            run_env = {
                **env,
                "RECSVC_BENCH_PATHS": str(paths[name]),
                "RECSVC_BENCH_DELAY_MS": str(delay_ms),
            }
            target = ["-H", f"X-API-Key: {key}", "-s", str(script), base]
            server, client = _server_cpu(), _children_cpu()
            measured = _wrk(target, args.connections, duration, run_env)
            after = _server_cpu()
            spent = {pid: after[pid] - server.get(pid, 0.0) for pid in after}
            stores = _store_pids()
            requests = max(measured.pop("requests"), 1.0)
            measured["server_cpu_us"] = sum(spent.values()) / requests * 1e6
            # Of it, the private redis-server's (--store redis or cluster without a URL).
            measured["store_cpu_us"] = (
                sum(cpu for pid, cpu in spent.items() if pid in stores) / requests * 1e6
            )
            measured["wrk_cpu_us"] = (_children_cpu() - client) / requests * 1e6
            return measured

        posted: set[Callable[..., Any]] = set()
        for name in names:
            make_events = ENDPOINTS[name].events
            if make_events is not None and make_events not in posted:
                _post(base, key, make_events(bundle, np.random.default_rng(1)))
                posted.add(make_events)
            if ENDPOINTS[name].prefetch:
                _prefetch(base, key, paths[name])
        for name in names:
            run(name, 3)  # warm-up: caches, page cache, allocator
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                trivial, measured = run(HEALTHZ, args.duration), run(name, args.duration)
                rounds[name].append(
                    {
                        "healthz_rps": trivial["rps"],
                        "rps": measured["rps"],
                        "ratio": measured["rps"] / trivial["rps"],
                        "errors": trivial["errors"] + measured["errors"],
                        "healthz_server_cpu_us": trivial["server_cpu_us"],
                        "server_cpu_us": measured["server_cpu_us"],
                        "store_cpu_us": measured["store_cpu_us"],
                        "cpu_ratio": _cost(trivial) / _cost(measured),
                    }
                )
        for name in names:
            half = statistics.median(r["rps"] for r in rounds[name]) / 2
            # Each connection waits so that all together send about half the maximum rate.
            delay = max(args.connections / half * 1000.0 - 1.0, 0.0)
            goals = targets(args.store, name)
            results[name] = {
                "targets": None if goals is None else {"ratio": goals[0], "p99_ms": goals[1]},
                "rounds": rounds[name],
                "ratio_median": statistics.median(r["ratio"] for r in rounds[name]),
                "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rounds[name]),
                "half_load": {"target_rps": round(half, 1), **run(name, args.duration, delay)},
            }
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "bundle": bundle.version,
        "customers": len(bundle.arrays.customer_ids),
        "items": len(bundle.arrays.item_ids),
        "store": args.store,
        "connections": args.connections,
        "duration_s": args.duration,
        "endpoints": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average (1, 5, 15 min): before {load_before}, after {os.getloadavg()}")
    for name, measured in results.items():
        for number, entry in enumerate(measured["rounds"], start=1):
            print(
                f"{name} round {number}: /healthz {entry['healthz_rps']:.0f} req/s, "
                f"{name} {entry['rps']:.0f} req/s, ratio {entry['ratio']:.2f}, "
                f"errors {entry['errors']:.0f}; server CPU per request "
                f"{entry['healthz_server_cpu_us']:.0f} and {entry['server_cpu_us']:.0f} us "
                f"(redis-server {entry['store_cpu_us']:.0f}), CPU ratio {entry['cpu_ratio']:.2f}"
            )
        goals = measured["targets"]
        print(
            f"{name} ratio (median): {measured['ratio_median']:.2f}  "
            + (
                "(no target: the most a customer endpoint can reach on this store); "
                if goals is None
                else f"(target >= {goals['ratio']:g}); "
            )
            + f"CPU ratio (median) {measured['cpu_ratio_median']:.2f}"
        )
        paced = measured["half_load"]
        print(
            f"{name} at half load ({paced['rps']:.0f} req/s of a target "
            f"{paced['target_rps']:.0f}): p50 {paced['p50_ms']:.2f} ms, p99 "
            f"{paced['p99_ms']:.2f} ms"
            + ("" if goals is None else f" (target <= {goals['p99_ms']:g})")
            + f", errors {paced['errors']:.0f}"
        )
    print(f"written to {args.out}")
    return 0


def _post(base: str, key: str, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        body = json.dumps({"events": events[start : start + 1000]}).encode()
        request = urllib.request.Request(
            f"{base}/v1/events",
            body,
            {"X-API-Key": key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        if answer["rejected"]:
            raise RuntimeError(f"events rejected: {answer['rejected'][:3]}")


def _prefetch(base: str, key: str, paths: Path) -> None:
    for path in paths.read_text().split():
        request = urllib.request.Request(f"{base}{path}", headers={"X-API-Key": key})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def _private_redis(servers: ExitStack, scratch: Path) -> str:
    """Start a redis-server for the benchmark alone; it stops when ``servers`` closes."""
    process = RedisProcess(scratch)
    process.start()
    servers.callback(process.stop)
    return process.url


def _private_cluster(servers: ExitStack, scratch: Path) -> str:
    """Start a 3-master, 3-replica Redis Cluster for the benchmark alone."""
    cluster = RedisClusterProcess(scratch / "cluster")
    cluster.start()
    servers.callback(cluster.stop)
    return cluster.url


def _cost(run: dict[str, float]) -> float:
    """CPU seconds per request of a run, server and wrk together."""
    return run["server_cpu_us"] + run["wrk_cpu_us"]


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _server_cpu() -> dict[int, float]:
    """CPU seconds so far of each of this process's children (gunicorn's master, between wrk
    runs) and of theirs (its workers), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent: dict[int, float] = {}
    for master in _children(os.getpid()):
        for pid in (master, *_children(master)):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # exited since listed
                continue
            spent[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return spent


def _store_pids() -> set[int]:
    """This process's children that are redis-server (a private store)."""
    found = set()
    for pid in _children(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server":
                found.add(pid)
        except FileNotFoundError:
            continue
    return found


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    requests = re.search(r"(\d+) requests in", output)
    if rps is None or requests is None:
        raise RuntimeError(f"wrk printed no rate:\n{output}")
    return {
        "rps": float(rps[1]),
        "requests": float(requests[1]),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": float(errors[1] if errors else 0)
        + (sum(float(x) for x in socket_errors.groups()) if socket_errors else 0.0),
    }


if __name__ == "__main__":
    raise SystemExit(main())
