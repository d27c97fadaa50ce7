"""Scale benchmark: a synthetic history, trained and served, with time and peak memory.

    python benchmarks/scale.py [--purchases 20000000 --customers 1000000 --items 100000]
                               [--events 0] [--reuse-data] [--no-serving] [--rounds 1]

Generates purchases with power-law item popularity and skewed customer activity over a year,
split into three sources with different schemas (two Parquet files and a CSV; the partner
source keys customers by its own namespace, linked through a customer crosswalk for a tenth
of them), and with ``--events`` the service's event log as a fourth (views, cart adds,
purchases and sign-ins, a third under anonymous sessions), in one child process
(``--reuse-data``: keep what --work-dir already holds). Then
the bare path in another: reading the files, a customer x item matrix, the trainer's ALS fit
(BM25 weights, the config's factors and iterations) and implicit's ``recommend`` top-50 for
every customer. Then ``recsvc train`` in a third. Each child's peak RSS is measured with
wait4, for that process alone, and each runs with one OpenBLAS thread (implicit threads
itself). The targets (issue 26): training's peak RSS <= 4 GiB and its time <= 1.5 x the bare
path's, the bare path and the trainer run one after the other ``--rounds`` times and judged
by the median round's ratio (this machine's neighbours move one run by a third). Then
benchmarks/serving.py on the bundle (unless ``--no-serving``). Writes the
figures to --out (JSON).
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
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.config import load_config  # noqa: E402
from training.fit import als_model, confidences  # noqa: E402

TARGET_PEAK_GIB = 4.0
TARGET_RATIO = 1.5  # training's time over the bare path's
TOP = 50  # the bare path's list per customer
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

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


# With ``--events``: the service's event log as a fourth source, its views and cart adds
# weighted.
EVENTS_CONFIG = """
[model.weights]
view = 0.2
cart_add = 0.5

[[sources]]
name = "live"
kind = "events"
path = "events-*.jsonl"
"""
EVENT_LOG_FILES = 4  # a day's file each, as the service rotates them


def generate(
    directory: Path, purchases: int, customers: int, items: int, seed: int, events: int = 0
) -> None:
    """``events``: that many records of the service's event log too (``write_event_log``)."""
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
    if events:
        write_event_log(directory, events, customers, item_weights, rng)
    (directory / "scale.toml").write_text(CONFIG + (EVENTS_CONFIG if events else ""))


def write_event_log(
    directory: Path,
    records: int,
    customers: int,
    item_weights: NDArray[np.float64],
    rng: np.random.Generator,
) -> None:
    """The service's event log (``EVENT_LOG_FILES`` files) after the purchases' year: views,
    cart adds, purchases and sign-ins, a third of them made under an anonymous session (a
    twentieth as many sessions as records), which a sign-in links to its customer."""
    kind = rng.choice(
        ["view", "cart_add", "purchase", "login"], records, p=[0.75, 0.15, 0.06, 0.04]
    )
    customer = rng.choice(customers, records).astype(str)
    session = np.char.add("session:s", rng.integers(0, max(records // 20, 1), records).astype(str))
    anonymous = (rng.random(records) < 1 / 3) & (kind != "login")
    item = np.char.add(
        "P", rng.choice(len(item_weights), records, p=item_weights / item_weights.sum()).astype(str)
    )
    received = 1_735_689_600.0 + np.arange(records) * (4 * 86400 / records)  # from 2025-01-01
    bought = kind == "purchase"
    log = pd.DataFrame(
        {
            "event_id": np.char.add("e", np.arange(records).astype(str)),
            "kind": kind,
            "customer": np.where(anonymous, session, customer),
            "session": np.where(kind == "login", session, ""),
            "item_id": np.where(kind == "login", "", item),
            "quantity": np.where(bought, 1, 0),
            "price": np.where(bought, 9.99, 0.0),
            "timestamp": pd.to_datetime(received, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "received_at": received,
        }
    )
    for index, part in enumerate(np.array_split(np.arange(records), EVENT_LOG_FILES)):
        log.iloc[part].to_json(
            directory / f"events-{index + 1}.jsonl", orient="records", lines=True
        )


def generate_apart(
    directory: Path, purchases: int, customers: int, items: int, seed: int, events: int = 0
) -> None:
    """``generate`` in a process of its own, which exits when done (its memory with it)."""
    generator = multiprocessing.get_context("spawn").Process(
        target=generate, args=(directory, purchases, customers, items, seed, events)
    )
    generator.start()
    generator.join()
    if generator.exitcode != 0:
        sys.exit(f"generating the data failed (exit code {generator.exitcode})")


def bare_path(config_path: Path) -> dict[str, float]:
    """Read the files, build the matrix, fit ALS as the trainer does, and take implicit's
    top-50 for every customer: the least any trainer does. Returns each step's seconds."""
    config = load_config(config_path)
    steps: dict[str, float] = {}
    started = time.perf_counter()
    frames = []
    for source in config.sources:
        columns = [source.columns["customer_id"], source.columns["item_id"]]
        for path in source.files():
            if source.kind == "parquet":
                frame = pd.read_parquet(path, columns=columns)
            else:
                frame = pd.read_csv(path, usecols=columns, dtype=str)[columns]
            frame.columns = ["customer", "item"]
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    del frames
    steps["read_s"] = time.perf_counter() - started
    started = time.perf_counter()
    customers, customer_index = pd.factorize(rows["customer"])
    items, item_index = pd.factorize(rows["item"])
    del rows
    matrix = sp.csr_matrix(
        (np.ones(len(customers), np.float32), (customers, items)),
        shape=(len(customer_index), len(item_index)),
    )
    del customers, items
    steps["matrix_s"] = time.perf_counter() - started
    started = time.perf_counter()
    params = config.model
    model = als_model(params)
    model.fit(confidences(matrix, params).astype(np.float32), show_progress=False)
    steps["fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    model.recommend(np.arange(matrix.shape[0]), matrix, N=TOP)
    steps["top_s"] = time.perf_counter() - started
    steps["customers"] = matrix.shape[0]
    return steps


def run_child(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` (cwd: the project), returning its seconds, its own peak RSS (GiB) and
    its standard output."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{command[1:4]} failed (exit code {child.returncode})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024 / 1024, output


def run_round(config: Path, models: Path) -> dict[str, Any]:
    """The bare path, then ``recsvc train``, each in a child of its own: their times, peaks
    and the ratio."""
    bare_s, bare_peak, output = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--bare-only", str(config)]
    )
    bare_steps = json.loads(output)
    trained, peak, _ = run_child(
        [
            sys.executable,
            "-m",
            "training.cli",
            "train",
            "--config",
            str(config),
            "--models-dir",
            str(models),
            "--no-progress",
        ]
    )
    result = {
        "bare_s": round(bare_s, 1),
        "bare_steps_s": {name: round(value, 1) for name, value in bare_steps.items()},
        "bare_peak_rss_gb": round(bare_peak, 2),
        "train_s": round(trained, 1),
        "train_peak_rss_gb": round(peak, 2),
        "ratio": round(trained / bare_s, 2),
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--purchases", type=int, default=20_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--events",
        type=int,
        default=0,
        help="records of the service's event log as a fourth source (views and cart adds "
        "weighted; the bare path reads the purchases only)",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/scale-data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    parser.add_argument(
        "--reuse-data", action="store_true", help="keep the data --work-dir already holds"
    )
    parser.add_argument("--no-serving", action="store_true", help="skip benchmarks/serving.py")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="bare path and train, one after the other, this many times; the verdict is the "
        "median round's ratio",
    )
    parser.add_argument("--bare-only", type=Path, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.bare_only is not None:
        print(json.dumps(bare_path(args.bare_only)))
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    config = args.work_dir / "scale.toml"
    load_before = os.getloadavg()
    started = time.perf_counter()
    # Generated in a process of its own: a child's peak RSS counts the memory its parent held
    # when it was started, so this process must stay small for the training figure to be the
    # trainer's own.
    reused = args.reuse_data and config.is_file()
    if not reused:
        generate_apart(
            args.work_dir, args.purchases, args.customers, args.items, args.seed, args.events
        )
    generated = time.perf_counter() - started
    models = args.work_dir / "models"
    rounds = [run_round(config, models) for _ in range(args.rounds)]
    # The verdict is the median round's (of an even count, the worse middle one): on this
    # shared machine one run's ratio moved between 1.41 and 1.97 with the same code
    # (docs/scaling.md).
    median = sorted(rounds, key=lambda round_: round_["ratio"])[len(rounds) // 2]
    bare_s, bare_peak = median["bare_s"], median["bare_peak_rss_gb"]
    bare_steps, trained = median["bare_steps_s"], median["train_s"]
    ratio = median["ratio"]
    peak = max(round_["train_peak_rss_gb"] for round_ in rounds)
    result: dict[str, object] = {
        "purchases": args.purchases,
        "customers": args.customers,
        "items": args.items,
        "events": args.events,
        "generate_s": round(generated, 1),
        "reused_data": reused,
        "bare_s": bare_s,
        "bare_steps_s": bare_steps,
        "bare_peak_rss_gb": bare_peak,
        "train_s": trained,
        "train_peak_rss_gb": peak,
        "ratio": ratio,
        "rounds": rounds,
        "peak_target_met": peak <= TARGET_PEAK_GIB,
        "ratio_target_met": ratio <= TARGET_RATIO,
        "load_average_before": [round(load, 1) for load in load_before],
        "load_average_after": [round(load, 1) for load in os.getloadavg()],
    }
    if not args.no_serving:
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
        result["serving"] = json.loads(serving_out.read_text())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.purchases:,} purchases, median of {len(rounds)} round(s) (ratios "
        f"{', '.join(str(round_['ratio']) for round_ in rounds)}): "
        f"bare path {bare_s:.0f} s at {bare_peak:.2f} GiB peak "
        f"RSS ({', '.join(f'{k} {v:.0f}' for k, v in bare_steps.items())}); trained in "
        f"{trained:.0f} s at {peak:.2f} GiB: ratio {ratio:.2f} (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'not met'}), peak (target <= "
        f"{TARGET_PEAK_GIB} GiB: {'met' if peak <= TARGET_PEAK_GIB else 'not met'}); load "
        f"average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
