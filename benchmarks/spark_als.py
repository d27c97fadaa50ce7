"""The served model on the evaluation protocol with its ALS fitted by each engine: NDCG@k and
fit time, implicit in this process against Spark MLlib.

    python benchmarks/spark_als.py --config examples/online-retail.toml --cutoff 2011-11-09 \
        [--master local[2]] [--k 10]

Merges once (DuckDB; ``tests/test_engines.py`` checks Spark SQL merges alike), builds the
evaluation's training history, then fits and scores ``training.recommenders.ServedModel`` with
each engine as ``recsvc evaluate`` scores its ``recsvc`` model. A fit is ALS and the
item-item model; the Spark fit's time includes starting the session. Prints one JSON line per
engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.policy import TierTable  # noqa: E402
from training.config import EngineConfig, load_config  # noqa: E402
from training.evaluate import relevant_items, score_model, split_at  # noqa: E402
from training.pipeline import merged_history  # noqa: E402
from training.recommenders import History, ServedModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--cutoff", type=pd.Timestamp, required=True)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    config = load_config(args.config)
    merged = merged_history(config)
    holdout = split_at(merged.events, args.cutoff, None)
    history = History.build(holdout.train, config.model, merged.item_groups, config.tiers)
    assert history.crm is not None  # built with the config's tiers
    relevant = relevant_items(history.data, holdout.test)
    tiers = TierTable.of(history.crm.policy)
    tier_of = tiers.indices(history.crm.arrays["window_spend"])
    engines = {
        "implicit": EngineConfig(),
        "spark": EngineConfig(kind="spark", master=args.master),
    }
    for name, engine in engines.items():
        started = time.perf_counter()
        model = ServedModel(config.model, engine=engine)
        model.fit(history)
        seconds = time.perf_counter() - started
        report = score_model(model, history.data, relevant, args.k, tiers.names, tier_of)
        line = {
            "als": name,
            "fit_seconds": round(seconds, 1),
            f"ndcg@{args.k}": round(report[f"ndcg@{args.k}"], 4),
            "test_customers": report["test_customers"],
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
