"""Scale benchmark: a synthetic history, trained and served, with time and peak memory.

    python benchmarks/scale.py [--purchases 20000000 --customers 1000000 --items 100000]

Generates purchases with power-law item popularity and skewed customer activity over a year,
split into three sources with different schemas (two Parquet files and a CSV; the partner
source keys customers by its own namespace, linked through a customer crosswalk for a tenth
of them) in one child process, trains a bundle with ``recsvc train`` in another (its peak
RSS measured with wait4, for that process alone), then runs benchmarks/serving.py on it.
Writes the figures to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[model]
factors = 64
iterations = 15

[identity]
crosswalk = "crosswalk.csv"

[[sources]]
name = "shop"
kind = "parquet"
path = "shop.parquet"
[sources.columns]
customer_id = "customer"
item_id = "sku"
quantity = "qty"
unit_price = "price"
timestamp = "at"
order_id = "order"

[[sources]]
name = "app"
kind = "parquet"
path = "app.parquet"
[sources.columns]
customer_id = "user_id"
item_id = "product"
quantity = "units"
unit_price = "unit_price"
timestamp = "purchased_at"
order_id = "basket"

[[sources]]
name = "partner"
kind = "csv"
path = "partner.csv"
customer_namespace = "partner"
[sources.columns]
customer_id = "member"
item_id = "item"
timestamp = "date"
"""


def generate(directory: Path, purchases: int, customers: int, items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    item_weights = 1.0 / np.arange(1, items + 1) ** 1.05
    item = rng.choice(items, size=purchases, p=item_weights / item_weights.sum())
    activity = rng.lognormal(0.0, 1.2, customers)
    customer = rng.choice(customers, size=purchases, p=activity / activity.sum())
    start = np.datetime64("2024-01-01T00:00:00")
    seconds = np.sort(rng.integers(0, 365 * 86400, purchases))
    at = start + seconds.astype("timedelta64[s]")
    price = np.round(rng.lognormal(1.0, 0.8, items), 2)[item]
    source = rng.choice(3, size=purchases, p=[0.6, 0.3, 0.1])
    order = (customer.astype(np.int64) * 400 + seconds // 86400).astype(str)
    sku = np.char.add("P", item.astype(str))
    for index, (name, columns) in enumerate(
        [
            ("shop", ("customer", "sku", "qty", "price", "at", "order")),
            ("app", ("user_id", "product", "units", "unit_price", "purchased_at", "basket")),
        ]
    ):
        mask = source == index
        table = pa.table(
            {
                columns[0]: customer[mask].astype(str),
                columns[1]: sku[mask],
                columns[2]: np.ones(mask.sum(), np.int32),
                columns[3]: price[mask],
                columns[4]: at[mask],
                columns[5]: np.char.add(f"{name[0]}", order[mask]),
            }
        )
        pq.write_table(table, directory / f"{name}.parquet")
    mask = source == 2
    pd.DataFrame(
        {
            "member": np.char.add("M", customer[mask].astype(str)),
            "item": sku[mask],
            "date": at[mask],
        }
    ).to_csv(directory / "partner.csv", index=False)
    linked = np.unique(customer[mask])[::10]
    pd.DataFrame(
        {"left": [f"shop:{c}" for c in linked], "right": [f"partner:M{c}" for c in linked]}
    ).to_csv(directory / "crosswalk.csv", index=False)
    (directory / "scale.toml").write_text(CONFIG)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--purchases", type=int, default=20_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/scale-data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Generated in a process of its own: a child's peak RSS counts the memory its parent held
    # when it was started, so this process must stay small for the training figure to be the
    # trainer's own.
    generator = multiprocessing.get_context("spawn").Process(
        target=generate,
        args=(args.work_dir, args.purchases, args.customers, args.items, args.seed),
    )
    generator.start()
    generator.join()
    if generator.exitcode != 0:
        sys.exit(f"generating the data failed (exit code {generator.exitcode})")
    generated = time.perf_counter() - started
    models = args.work_dir / "models"
    started = time.perf_counter()
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.cli",
            "train",
            "--config",
            str(args.work_dir / "scale.toml"),
            "--models-dir",
            str(models),
            "--no-progress",
        ],
        cwd=ROOT,
        env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    _, status, usage = os.wait4(trainer.pid, 0)  # this child's own resource usage
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"training failed (exit code {os.waitstatus_to_exitcode(status)})")
    trained = time.perf_counter() - started
    peak_gb = usage.ru_maxrss / 1024 / 1024
    serving_out = args.out.with_name("scale-serving.json")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serving.py"),
            "--models-dir",
            str(models),
            "--rounds",
            "1",
            "--duration",
            "10",
            "--out",
            str(serving_out),
        ],
        check=True,
    )
    result = {
        "purchases": args.purchases,
        "customers": args.customers,
        "items": args.items,
        "generate_s": round(generated, 1),
        "train_s": round(trained, 1),
        "train_peak_rss_gb": round(peak_gb, 2),
        "serving": json.loads(serving_out.read_text()),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.purchases:,} purchases: generated in {generated:.0f} s, trained in "
        f"{trained:.0f} s with peak RSS {peak_gb:.2f} GiB (target < 8 GB = 7.45 GiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
