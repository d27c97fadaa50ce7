"""Merge benchmark: reading the sources and merging them with one engine, time and peak RSS.

    python benchmarks/merge.py --config examples/online-retail.toml --engine duckdb [--rounds 3]
    python benchmarks/merge.py --config examples/online-retail.toml --engine spark \
        [--master local[2]] [--conf spark.driver.memory=4g ...]

Run one engine per process: the peak RSS is the process's own (``VmHWM``) and, for Spark, that
of the JVM it started (its driver, which with a local master is also its executors). The Spark
session is started once, before the rounds, and its start time reported apart. Prints and
writes (--out, JSON) each round's read and merge times and the accounting, which must be the
same for every engine. With Spark, the executors read the file sources within the merge: the
read time is then the driver's (event logs, databases) only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.config import EngineConfig, load_config  # noqa: E402
from training.engine import spark_session  # noqa: E402
from training.merge import merge_sources  # noqa: E402
from training.pipeline import read_sources  # noqa: E402
from training.progress import Progress  # noqa: E402


def peak_rss_mb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def children(pid: int) -> list[int]:
    """Every process started by ``pid``, at any depth."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = load_config(args.config)
    engine = (
        EngineConfig(
            kind="spark",
            master=args.master,
            conf=dict(setting.split("=", 1) for setting in args.conf),
        )
        if args.engine == "spark"
        else EngineConfig()
    )
    session_start_s = None
    if engine.kind == "spark":
        started = time.perf_counter()
        spark_session(engine.master, tuple(sorted(engine.conf.items())))
        session_start_s = round(time.perf_counter() - started, 2)
    rounds = []
    accounting = None
    for _ in range(args.rounds):
        started = time.perf_counter()
        sources = read_sources(dataclasses.replace(config, engine=engine), Progress.silent())
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        merged = merge_sources(sources, config.items, config.identity, engine)
        merge_s = time.perf_counter() - started
        rounds.append({"read_s": round(read_s, 2), "merge_s": round(merge_s, 2)})
        accounting = merged.accounting
        del merged
    result = {
        "config": str(args.config),
        "engine": args.engine,
        "master": args.master if args.engine == "spark" else None,
        "conf": engine.conf,
        "session_start_s": session_start_s,
        "rounds": rounds,
        "merge_s_median": statistics.median(r["merge_s"] for r in rounds),
        "peak_rss_mb": peak_rss_mb(os.getpid()),
        "peak_rss_mb_children": sum(peak_rss_mb(pid) for pid in children(os.getpid())),
        "accounting": accounting,
    }
    out = args.out or Path(f"benchmarks/merge-{args.engine}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for number, entry in enumerate(rounds, start=1):
        print(f"round {number}: read {entry['read_s']} s, merge {entry['merge_s']} s")
    print(
        f"{args.engine}: merge {result['merge_s_median']} s (median), peak RSS "
        f"{result['peak_rss_mb']} MB (+ {result['peak_rss_mb_children']} MB in child "
        f"processes); session start {session_start_s} s; written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
