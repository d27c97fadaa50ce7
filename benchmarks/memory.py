"""Memory benchmark: what two gunicorn workers serving one bundle cost the host, and how soon
a worker serves.

    python benchmarks/memory.py [--models-dir DIR] [--purchases 2000000 --customers 100000
        --items 10000] [--workers 2] [--warm-seconds 10]

Without --models-dir, generates a history with benchmarks/scale.py's ``generate`` and trains
a bundle from it in --work-dir (kept, and reused when there). Then:

1. times a fresh process loading the bundle and building what it serves
   (``ModelRegistry.load``, imports excluded): once verifying it in full (no record of it on
   the host), once trusting the host's record;
2. starts gunicorn (--workers, API keys on) with a verification directory of its own and
   times the start until /readyz answers (the master verifies, then forks the workers);
3. warms the workers with every customer's recommendations (wrk, --warm-seconds) and reads
   each process's PSS from /proc/<pid>/smaps_rollup: shared pages count a share per process
   that maps them, so the workers' sum is what they add to the host;
4. publishes the same bundle again under a new version (hard links: the same files, a new
   directory), points ``current`` at it, times until both workers log that they serve it (one
   verifies, the other trusts its record; ``RECSVC_RELOAD_SECONDS`` is 1, so up to a second
   of it is the watcher's pause), warms them again and reads the PSS again: now each worker
   mapped the files itself, with nothing inherited from the master.

Prints the figures and writes them to --out (JSON): the workers' summed PSS over the bundle's
size on disk (target <= 1.3 at 20 M purchases) and the times to ready (target <= 2 s). Linux
only (/proc); needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from benchmarks.scale import generate_apart  # noqa: E402
from benchmarks.serving import WRK_LUA, _children, _recommendations, _wrk  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import MANIFEST_FILE, load_current, point_current  # noqa: E402
from recsvc.manifest import Manifest  # noqa: E402

PSS_RATIO = 1.3  # target: the workers' summed PSS over the bundle's size on disk
READY_S = 2.0  # target: a worker serving
# Loads and serves the bundle in a fresh interpreter; prints the seconds it took.
LOAD_SCRIPT = """
import os, sys, time
from pathlib import Path
from recsvc.bundle import VerificationRecords
from recsvc.identity import IdentityKey
from recsvc.registry import ModelRegistry
key = IdentityKey.from_environment(os.environ)  # None: the development key
started = time.perf_counter()
records = VerificationRecords(Path(sys.argv[2]))
registry = ModelRegistry(Path(sys.argv[1]), key, records=records)
assert registry.load(), registry.last_error
print(time.perf_counter() - started, registry.model.bundle.verified_now)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, help="an existing models directory")
    parser.add_argument("--purchases", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/memory-data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/memory.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    models = args.models_dir or trained(args)
    bundle = load_current(models)
    size = bundle_bytes(bundle.path)
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-memory-"))
    # The run's own models directory: the bundle hard-linked (its pages are the bundle's),
    # so that the reload below publishes into it and leaves --models-dir as it was.
    served = scratch / "models"
    link_bundle(bundle.path, served, bundle.version)
    point_current(served, bundle.version)
    verified = scratch / "verified"
    load = {
        "verifying_s": load_seconds(served, verified, expect_verified=True),
        "trusting_s": load_seconds(served, verified, expect_verified=False),
    }
    shutil.rmtree(verified)  # gunicorn's master verifies it again
    paths = scratch / "recommendations.txt"
    paths.write_text("\n".join(_recommendations(bundle, np.random.default_rng(0))) + "\n")
    script = scratch / "requests.lua"
    script.write_text(WRK_LUA)
    key, line = mint("bench", ["recs:read"], rate=1_000_000)
    log_path = scratch / "gunicorn.log"
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(served),
        "RECSVC_VERIFIED_DIR": str(verified),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_WORKERS": str(args.workers),
        "RECSVC_RELOAD_SECONDS": "1",
    }
    load_before = os.getloadavg()
    started = time.perf_counter()
    with gunicorn(env, log_path) as base:
        start_s = time.perf_counter() - started
        run_env = {**env, "RECSVC_BENCH_PATHS": str(paths)}
        target = ["-H", f"X-API-Key: {key}", "-s", str(script), base]

        def warm() -> dict[str, float]:
            return _wrk(target, 4, args.warm_seconds, run_env)

        warmed = warm()
        at_start = memory(args.workers)
        version = f"{bundle.version}-reloaded"
        link_bundle(bundle.path, served, version)
        started = time.perf_counter()
        point_current(served, version)
        serving = wait_for_workers(log_path, version, args.workers)
        reload_s = time.perf_counter() - started
        rewarmed = warm()
        after_reload = memory(args.workers)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "bundle": bundle.version,
        "models_dir": str(models),
        "customers": len(bundle.arrays.customer_ids),
        "items": len(bundle.arrays.item_ids),
        "purchases": int(bundle.arrays.owned_indptr[-1]),
        "bundle_bytes": size,
        "workers": args.workers,
        "load": load,
        "gunicorn_start_to_ready_s": round(start_s, 3),
        "reload_to_both_workers_s": round(reload_s, 3),
        "reload_log_lines": serving,
        "warm": {"start": warmed, "after_reload": rewarmed},
        "at_start": at_start | {"ratio": at_start["workers_pss"] / size},
        "after_reload": after_reload | {"ratio": after_reload["workers_pss"] / size},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    report(result)
    return 0


def trained(args: argparse.Namespace) -> Path:
    """--work-dir/models, generated and trained unless already there."""
    models = args.work_dir / "models"
    if (models / "current").exists():
        return models
    args.work_dir.mkdir(parents=True, exist_ok=True)
    generate_apart(args.work_dir, args.purchases, args.customers, args.items, args.seed)
    command = [sys.executable, "-m", "training.cli", "train", "--no-progress"]
    command += ["--config", str(args.work_dir / "scale.toml"), "--models-dir", str(models)]
    subprocess.run(command, cwd=ROOT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, check=True)
    return models


def bundle_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.iterdir() if file.is_file())


def link_bundle(source: Path, models: Path, version: str) -> None:
    """``source``'s files hard-linked into ``models/version``, its manifest renamed to it."""
    target = models / version
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name != MANIFEST_FILE:
            os.link(file, target / file.name)
    manifest = Manifest.decode((source / MANIFEST_FILE).read_bytes())
    (target / MANIFEST_FILE).write_bytes(
        msgspec.structs.replace(manifest, version=version).encode()
    )


def load_seconds(models: Path, verified: Path, expect_verified: bool) -> float:
    output = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(models), str(verified)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if (output[1] == "True") != expect_verified:
        raise RuntimeError(f"expected verified_now={expect_verified}, got {output[1]}")
    return round(float(output[0]), 3)


def wait_for_workers(log_path: Path, version: str, workers: int, seconds: float = 120) -> list[str]:
    """The workers' "serving bundle <version>" log lines, once each has written one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = []
        for line in log_path.read_text().splitlines():
            if line.startswith("{") and f"serving bundle {version} " in line:
                found.append(json.loads(line)["msg"])
        if len(found) >= workers:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"the workers did not all serve {version} within {seconds} s")


def memory(workers: int) -> dict[str, Any]:
    """PSS, RSS and their anonymous and file-backed parts (bytes) of gunicorn's master and
    each worker, and the workers' summed PSS."""
    # gunicorn's master among this process's children (multiprocessing may have started its
    # resource tracker too)
    (master,) = [
        pid
        for pid in _children(os.getpid())
        if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    pids = _children(master)
    if len(pids) != workers:
        raise RuntimeError(f"gunicorn runs {len(pids)} workers, expected {workers}")
    found = {"master": smaps_rollup(master), "workers": [smaps_rollup(pid) for pid in pids]}
    found["workers_pss"] = sum(worker["Pss"] for worker in found["workers"])
    return found


def smaps_rollup(pid: int) -> dict[str, int]:
    wanted = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Dirty")
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        if name in wanted:
            values[name] = int(rest.split()[0]) * 1024  # kB
    return values


def report(result: dict[str, Any]) -> None:
    mib = 1 << 20
    print(
        f"load average (1, 5, 15 min): before {result['load_average']['before']}, after "
        f"{result['load_average']['after']}"
    )
    print(
        f"bundle {result['bundle']}: {result['purchases']:,} purchases, "
        f"{result['customers']:,} customers, {result['items']:,} items, "
        f"{result['bundle_bytes'] / mib:.0f} MiB on disk"
    )
    load = result["load"]
    print(
        f"a fresh process loads and serves it in {load['verifying_s']:.2f} s verifying it, "
        f"{load['trusting_s']:.2f} s trusting the host's record (target <= {READY_S:g} s)"
    )
    print(
        f"gunicorn ({result['workers']} workers) start to /readyz: "
        f"{result['gunicorn_start_to_ready_s']:.2f} s; a new bundle served by every worker "
        f"{result['reload_to_both_workers_s']:.2f} s after `current` moved (watcher every 1 s)"
    )
    for line in result["reload_log_lines"]:
        print(f"  {line}")
    for phase in ("at_start", "after_reload"):
        figures = result[phase]
        workers = ", ".join(
            f"PSS {w['Pss'] / mib:.0f} MiB (anon {w['Pss_Anon'] / mib:.0f}, file "
            f"{w['Pss_File'] / mib:.0f}; RSS {w['Rss'] / mib:.0f})"
            for w in figures["workers"]
        )
        print(
            f"{phase.replace('_', ' ')}: workers {workers}; master PSS "
            f"{figures['master']['Pss'] / mib:.0f} MiB; workers' sum "
            f"{figures['workers_pss'] / mib:.0f} MiB = {figures['ratio']:.2f}x the bundle "
            f"(target <= {PSS_RATIO:g})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
