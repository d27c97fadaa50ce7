"""Training benchmark: end-to-end ``train`` against reading the files plus a bare implicit fit.

    python benchmarks/training.py --config examples/online-retail.toml [--rounds 5]

The baseline reads every source file with pandas, builds a customer x item count matrix,
BM25-weights it and fits implicit's ALS with the config's parameters (the minimum any trainer
must do). Both run in this process, alternating, so machine noise hits both alike. Prints and
writes (--out, JSON) the times and their ratio, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.config import TrainConfig, load_config  # noqa: E402
from training.fit import fit_als  # noqa: E402
from training.pipeline import train  # noqa: E402


def bare(config: TrainConfig) -> float:
    started = time.perf_counter()
    frames = []
    for source in config.sources:
        for path in source.files():
            columns = [source.columns["customer_id"], source.columns["item_id"]]
            frame = pd.read_csv(path, usecols=columns, dtype=str)[columns]  # usecols: file order
            frame.columns = ["customer", "item"]
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True).dropna()
    customers, customer_index = pd.factorize(rows["customer"])
    items, item_index = pd.factorize(rows["item"])
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (customers, items)),
        shape=(len(customer_index), len(item_index)),
    )
    fit_als(matrix, config.model)  # the trainer's own fit: BM25 weighting, then ALS
    return time.perf_counter() - started


def full(config: TrainConfig) -> float:
    with tempfile.TemporaryDirectory() as models:
        started = time.perf_counter()
        train(config, Path(models))
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/training.json"))
    args = parser.parse_args()
    config = load_config(args.config)
    rounds = []
    for _ in range(args.rounds):
        baseline, recsvc = bare(config), full(config)
        rounds.append(
            {
                "read_and_fit_s": round(baseline, 2),
                "train_s": round(recsvc, 2),
                "ratio": round(recsvc / baseline, 2),
            }
        )
    result = {
        "config": str(args.config),
        "rounds": rounds,
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for number, entry in enumerate(rounds, start=1):
        print(
            f"round {number}: read + bare fit {entry['read_and_fit_s']} s, "
            f"recsvc train {entry['train_s']} s, ratio {entry['ratio']}"
        )
    print(
        f"ratio (median): {result['ratio_median']}  (target <= 1.5); "
        f"peak RSS {result['peak_rss_mb']} MB; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
