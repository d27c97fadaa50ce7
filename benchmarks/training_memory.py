"""The trainer's memory, step by step, in one ``recsvc train``.

    python benchmarks/training_memory.py --config examples/online-retail.toml \
        [--engine duckdb | spark] [--master local[2] | --standalone] \
        [--conf spark.driver.memory=6g] [--models-dir DIR] [--out training-memory.json]

Trains once in this process (by default on the engine the config names; with ``--engine
spark`` or ``--standalone``, the Spark driver) and reports its peak RSS (``ru_maxrss``:
memory-mapped bundle arrays it reads count while their pages are in memory) and the peak of
its anonymous memory (``RssAnon``, sampled every 0.1 s: what it holds itself, not file pages
the kernel can drop), the time, and the bundle's counts; logs each training step's end (on
stderr, with the time since the start) and writes the anonymous memory's peak in each step.
The JVM (on ``local[N]`` the executors too) is another process and is not counted.

``--standalone``: a Spark standalone cluster started on this host for the run (a master and
one worker of ``--worker-cores`` cores and 2 GiB, ``benchmarks.local_server.spark_standalone``),
the driver on the loopback interface, the checkpoints and the executors' part files in a
temporary directory; the time does not include the cluster's start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import spark_standalone  # noqa: E402
from training.config import EngineConfig, TrainConfig, load_config  # noqa: E402
from training.engine import stop_spark_sessions  # noqa: E402
from training.pipeline import TrainReport, train  # noqa: E402


def anonymous_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def measured_train(
    config: TrainConfig, models: Path
) -> tuple[TrainReport, float, int, list[dict[str, object]]]:
    """One train: its report, seconds, peak anonymous KiB, and each step's end and peak."""
    peak = [anonymous_kib()]
    stop = threading.Event()
    started = time.perf_counter()
    steps: list[dict[str, object]] = []

    class StepPeaks(logging.Handler):
        """Each step's closing line ends the interval whose peak it is given."""

        def emit(self, record: logging.LogRecord) -> None:
            at = round(time.perf_counter() - started, 1)
            steps.append({"step": record.getMessage(), "ended_s": at, "peak_mb": peak[1] // 1024})
            peak[1] = anonymous_kib()

    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)9.0f ms %(message)s")
    logging.getLogger("recsvc.progress").addHandler(StepPeaks())
    peak.append(peak[0])  # [whole run, current step]

    def sample() -> None:
        while not stop.wait(0.1):
            now = anonymous_kib()
            peak[0], peak[1] = max(peak[0], now), max(peak[1], now)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = train(config, models)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    return report, seconds, peak[0], steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--engine", choices=("config", "duckdb", "spark"), default="config")
    parser.add_argument("--master", default="local[2]", help="with --engine spark")
    parser.add_argument("--standalone", action="store_true", help="Spark, instead of --master")
    parser.add_argument("--worker-cores", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, help="keep the bundle there")
    parser.add_argument("--conf", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    conf = dict(item.split("=", 1) for item in args.conf)
    config = load_config(args.config)
    with contextlib.ExitStack() as stack:
        master = args.master
        kind = "spark" if args.standalone else args.engine
        if args.standalone:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cluster = stack.enter_context(spark_standalone(work, cores=args.worker_cores))
            master, conf = cluster.master, {**cluster.conf, **conf}
        if kind != "config":
            config = replace(config, engine=EngineConfig(kind=kind, master=master, conf=conf))
        models = args.models_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        report, seconds, peaks, steps = measured_train(config, models)
        manifest = json.loads((report.path / "manifest.json").read_text())
        stop_spark_sessions()  # before the cluster stops
    result = {
        "config": str(args.config),
        "engine": config.engine.kind,
        "master": config.engine.master if config.engine.kind == "spark" else None,
        "bundle": str(report.path) if args.models_dir else None,
        "train_seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_anonymous_mb": round(peaks / 1024),
        "customers": manifest["counts"]["customers"],
        "items": manifest["counts"]["items"],
        "accounting": report.accounting,
        "steps": steps,
    }
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
