"""Faults under load: locust traffic while Redis dies, a bundle is swapped, a corrupt one lands.

    python loadtests/faults.py --models-dir models [--scenario redis|cluster|swap|corrupt|all]
        [--duration 30] [--rate 100] [--users 10] [--out-dir loadtests/results/faults]

Each scenario starts its own gunicorn (on a copy of the bundle; with a private redis-server
for ``redis``, a private 3-master + 3-replica Redis Cluster for ``cluster``), runs the locust
suite for ``--duration`` seconds, injects the fault after a third of it, and meanwhile probes
the service from this process every 50 ms. It passes when:

- redis: no read request failed (writes may get 503 while Redis is down), answers said
  ``degraded`` while it was down and stopped saying so after it came back, without a restart;
- cluster: a master is stopped, then started again (it comes back as a replica): no read
  request failed (writes may get 503 while its slots have no master, and while the replica
  that took over has no replica of its own), answers stopped saying ``degraded`` after it came
  back, and every event the service acknowledged is on the cluster (not only in the durable
  log: a replica confirmed it before the answer);
- swap: no request failed, every answer's titles belong to the version it names (the new
  bundle's titles are marked), and ``/v1/model`` named the new version within the poll
  interval (plus one second);
- corrupt: no request failed, the old version kept answering, ``/metrics`` shows the refusal
  and the log says ``bundle refused`` (once per worker).

In every scenario the locust mix writes every kind of event (purchases, views, cart changes,
email opens and clicks, logins); each write's outcome is recorded, and the scenario fails
when an event the service acknowledged is missing from the durable event log, or one it
refused (503) is in it (half applied).

Results go to ``--out-dir/<scenario>/`` (locust's reports, the service log, faults.json).
Needs locust (``pip install -e '.[load]'``) and, for ``redis`` and ``cluster``, redis-server
(and redis-cli).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import RedisClusterProcess, RedisProcess, gunicorn  # noqa: E402
from loadtests.run import locust_command, locust_run  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import ARRAY_FILES, load_current, publish_bundle  # noqa: E402

RELOAD_SECONDS = 2
Server = RedisProcess | RedisClusterProcess
NEW_TITLE_MARK = " ·v2"


@dataclasses.dataclass
class Probe:
    """One answer seen by the prober."""

    at: float
    status: int
    version: str | None = None
    degraded: bool | None = None
    titles: list[str] = dataclasses.field(default_factory=list)


class Prober:
    """Asks for one customer's recommendations every 50 ms from a thread."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(self.url, headers={"X-API-Key": self.key})
            at = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = json.loads(response.read())
                    self.probes.append(
                        Probe(
                            at,
                            response.status,
                            body["model_version"],
                            body["degraded"],
                            [item["title"] for item in body["items"]],
                        )
                    )
            except urllib.error.HTTPError as error:
                self.probes.append(Probe(at, error.code))
            except OSError:
                self.probes.append(Probe(at, 0))
            time.sleep(0.05)


def scenario(
    name: str,
    models_dir: Path,
    out_dir: Path,
    duration: int,
    rate: float,
    users: int,
    fault: Callable[[Path, Server | None], dict[str, Any]],
    restore: Callable[[Path, Server | None], None] | None,
    judge: Callable[[dict[str, Any]], list[str]],
) -> dict[str, Any]:
    """Run locust with one fault injected at a third of the run (and undone at two thirds)."""
    out = out_dir / name
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"recsvc-fault-{name}-"))
    models = scratch / "models"
    shutil.copytree(models_dir, models, symlinks=True)
    key, line = mint("faults", ["recs:read", "events:write", "metrics:read"], rate=1_000_000)
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_RELOAD_SECONDS": str(RELOAD_SECONDS),
        "RECSVC_LOADTEST_KEY": key,
        "RECSVC_LOADTEST_RATE_PER_USER": str(rate / users),
        # The traffic is drawn from the bundle served at the start: locust can take longer to
        # start than the fault takes to land, and a corrupt bundle must not stop the load.
        "RECSVC_LOADTEST_BUNDLE": str(load_current(models).path),
        "RECSVC_LOADTEST_WRITES": str(scratch / "writes"),
    }
    (scratch / "writes").mkdir()
    redis_server: Server | None = None
    if name in ("redis", "cluster"):
        redis_server = RedisProcess(scratch) if name == "redis" else RedisClusterProcess(scratch)
        redis_server.start()
        env["RECSVC_REDIS_URL"] = redis_server.url
    customer = str(load_current(models).arrays.customer_ids[0])
    log_path = out / "service.log"
    log_path.unlink(missing_ok=True)
    try:
        with gunicorn(env, log_path=log_path) as base:
            probe_url = f"{base}/v1/customers/{customer}/recommendations?n=5"
            with Prober(probe_url, key) as prober:
                locust = locust_run(base, env, users, duration, out)
                time.sleep(duration / 3)
                started = time.monotonic()
                facts = fault(models, redis_server)
                facts["fault_at"] = started
                if restore is not None:
                    time.sleep(duration / 3)
                    facts["restored_at"] = time.monotonic()
                    restore(models, redis_server)
                locust.wait()
                time.sleep(RELOAD_SECONDS + 1)
            facts["metrics"] = _get(f"{base}/metrics", key)
            facts["model"] = json.loads(_get(f"{base}/v1/model", key))
        if isinstance(redis_server, RedisClusterProcess):
            facts["stored"] = redis_server.event_ids()
    finally:
        if redis_server is not None:
            redis_server.stop()
    facts["probes"] = prober.probes
    facts["failures"] = _failures(out / "locust_stats.csv")
    facts["log"] = log_path.read_text()
    writes = written(scratch / "writes", scratch / "events", facts.get("stored"))
    problems = judge(facts) + judge_writes(writes)
    result = {
        "scenario": name,
        "passed": not problems,
        "problems": problems,
        "requests": facts["failures"]["requests"],
        "failed_reads": facts["failures"]["reads"],
        "failed_writes": facts["failures"]["writes"],
        "probes": len(prober.probes),
        "writes": writes,
    }
    (out / "faults.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def written(outcomes: Path, events_dir: Path, stored: set[str] | None = None) -> dict[str, Any]:
    """What locust's event writes got (per kind: acknowledged, refused with 503, other
    failures), and which acknowledged ones the durable event log lacks or refused ones it
    holds; with the event ids ``stored`` in the store, which acknowledged ones it lacks."""
    logged = {
        json.loads(line)["event_id"]
        for path in events_dir.glob("events-*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    }
    by_kind: dict[str, dict[str, int]] = {}
    lost: list[str] = []
    not_stored: list[str] = []
    half_applied: list[str] = []
    for path in outcomes.glob("writes-*.txt"):
        for line in path.read_text().splitlines():
            status, kind, event_id = line.split(" ")
            counts = by_kind.setdefault(kind, {"acknowledged": 0, "refused": 0, "failed": 0})
            if status == "200":
                counts["acknowledged"] += 1
                if event_id not in logged:
                    lost.append(event_id)
                if stored is not None and event_id not in stored:
                    not_stored.append(event_id)
            elif status == "503":
                counts["refused"] += 1
                if event_id in logged:
                    half_applied.append(event_id)
            else:
                counts["failed"] += 1
    return {
        "by_kind": by_kind,
        "lost": lost,
        "not_stored": not_stored,
        "half_applied": half_applied,
    }


def judge_writes(writes: dict[str, Any]) -> list[str]:
    problems = []
    if writes["lost"]:
        problems.append(f"{len(writes['lost'])} acknowledged events are not in the event log")
    if writes["not_stored"]:
        problems.append(f"{len(writes['not_stored'])} acknowledged events are not in the store")
    if writes["half_applied"]:
        problems.append(f"{len(writes['half_applied'])} refused events are in the event log")
    failed = sum(counts["failed"] for counts in writes["by_kind"].values())
    if failed:
        problems.append(f"{failed} event writes failed with neither 200 nor 503")
    if not writes["by_kind"]:
        problems.append("locust wrote no events")
    return problems


def _get(url: str, key: str) -> str:
    request = urllib.request.Request(url, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _failures(stats: Path) -> dict[str, int]:
    with stats.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] != "Aggregated"]
    return {
        "requests": sum(int(row["Request Count"]) for row in rows),
        "reads": sum(int(row["Failure Count"]) for row in rows if row["Type"] == "GET"),
        "writes": sum(int(row["Failure Count"]) for row in rows if row["Type"] != "GET"),
    }


# Redis killed and restarted


def kill_redis(models: Path, redis_server: Server | None) -> dict[str, Any]:
    assert redis_server is not None
    redis_server.stop()
    return {}


def restart_redis(models: Path, redis_server: Server | None) -> None:
    assert redis_server is not None
    redis_server.start()


def judge_redis(facts: dict[str, Any]) -> list[str]:
    problems = []
    if facts["failures"]["reads"]:
        problems.append(f"{facts['failures']['reads']} read requests failed")
    down = [p for p in facts["probes"] if facts["fault_at"] + 1.5 < p.at < facts["restored_at"]]
    after = [p for p in facts["probes"] if p.at > facts["restored_at"] + 3]
    if not down or not all(p.status == 200 and p.degraded for p in down):
        problems.append("answers while Redis was down were not all 200 with degraded true")
    if not after or not all(p.status == 200 and p.degraded is False for p in after):
        problems.append("answers did not recover to degraded false after Redis came back")
    if "recsvc_degraded_total" not in facts["metrics"]:
        problems.append("/metrics has no degraded count")
    return problems


# A Redis Cluster master stopped and started again


def stop_master(models: Path, cluster: Server | None) -> dict[str, Any]:
    assert isinstance(cluster, RedisClusterProcess)
    cluster.stop_node(cluster.master_ports()[0])
    return {}


def restart_node(models: Path, cluster: Server | None) -> None:
    assert isinstance(cluster, RedisClusterProcess)
    cluster.wait_for_failover()
    cluster.start_stopped()


def judge_cluster(facts: dict[str, Any]) -> list[str]:
    problems = []
    if facts["failures"]["reads"]:
        problems.append(f"{facts['failures']['reads']} read requests failed")
    if any(p.status != 200 for p in facts["probes"]):
        problems.append("a probe of recommendations did not get 200")
    after = [p for p in facts["probes"] if p.at > facts["restored_at"] + 3]
    if not after or not all(p.degraded is False for p in after):
        problems.append("answers did not recover to degraded false after the node came back")
    return problems


# A new bundle published


def publish_marked_copy(models: Path, redis_server: Server | None) -> dict[str, Any]:
    """Publish the current bundle again under a new version, every title marked."""
    bundle = load_current(models)
    arrays = dataclasses.replace(
        bundle.arrays, titles=np.char.add(bundle.arrays.titles.astype(str), NEW_TITLE_MARK)
    )
    version = bundle.version + "-swapped"
    publish_bundle(models, version, arrays, bundle.manifest, bundle.attachments)
    return {"old": bundle.version, "new": version}


def judge_swap(facts: dict[str, Any]) -> list[str]:
    problems = []
    failed = facts["failures"]["reads"] + facts["failures"]["writes"]
    if failed:
        problems.append(f"{failed} requests failed")
    for probe in facts["probes"]:
        if probe.status != 200:
            problems.append(f"a probe got {probe.status}")
            break
        marked = [title.endswith(NEW_TITLE_MARK) for title in probe.titles]
        expected = probe.version == facts["new"]
        if probe.version not in (facts["old"], facts["new"]) or any(m != expected for m in marked):
            problems.append(f"an answer mixed versions: {probe.version} with {probe.titles}")
            break
    late = [
        p
        for p in facts["probes"]
        if p.at > facts["fault_at"] + RELOAD_SECONDS + 1 and p.version != facts["new"]
    ]
    if late:
        problems.append(f"{len(late)} answers named the old version after the poll interval")
    if facts["model"]["version"] != facts["new"]:
        problems.append(f"/v1/model says {facts['model']['version']}")
    return problems


# A corrupt bundle published


def publish_corrupt(models: Path, redis_server: Server | None) -> dict[str, Any]:
    facts = publish_marked_copy(models, redis_server)
    (models / facts["new"] / next(iter(ARRAY_FILES))).write_bytes(b"not a numpy archive")
    return facts


def judge_corrupt(facts: dict[str, Any]) -> list[str]:
    problems = []
    failed = facts["failures"]["reads"] + facts["failures"]["writes"]
    if failed:
        problems.append(f"{failed} requests failed")
    if any(p.status != 200 or p.version != facts["old"] for p in facts["probes"]):
        problems.append("an answer did not come from the old bundle")
    if f'recsvc_bundle_refused{{version="{facts["new"]}"}} 1.0' not in facts["metrics"]:
        problems.append("/metrics does not show the refusal")
    refusals = [line for line in facts["log"].splitlines() if "bundle refused" in line]
    if not refusals:
        problems.append("no 'bundle refused' log line")
    if facts["model"]["version"] != facts["old"] or not facts["model"]["last_error"]:
        problems.append(f"/v1/model: {facts['model']}")
    return problems


SCENARIOS: dict[str, tuple[Any, Any, Any]] = {
    "redis": (kill_redis, restart_redis, judge_redis),
    "cluster": (stop_master, restart_node, judge_cluster),
    "swap": (publish_marked_copy, None, judge_swap),
    "corrupt": (publish_corrupt, None, judge_corrupt),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per scenario")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s in total")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results/faults"))
    args = parser.parse_args()
    locust_command()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        fault, restore, judge = SCENARIOS[name]
        result = scenario(
            name,
            args.models_dir,
            args.out_dir,
            args.duration,
            args.rate,
            args.users,
            fault,
            restore,
            judge,
        )
        results.append(result)
        verdict = "PASS" if result["passed"] else "FAIL: " + "; ".join(result["problems"])
        print(
            f"{name:8} requests {result['requests']:>6}  failed reads {result['failed_reads']}  "
            f"failed writes {result['failed_writes']}  probes {result['probes']}  {verdict}"
        )
    (args.out_dir / "faults.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(result["passed"] for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
