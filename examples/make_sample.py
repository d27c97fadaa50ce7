"""Regenerate training/sample/ (the demo's data) from the reference exports in ../shared.

Keeps every line of the orders of a seeded random choice of customers who appear in both
exports, plus a share of anonymous orders, so the sample has the reference data's features:
the nine-day overlap, cancellations, anonymous sales and non-product lines.

    python examples/make_sample.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "datasets" / "online-retail"
FILES = {  # reference file -> (sample file, invoice column, customer column)
    "online_retail_II_2009-2010.csv.gz": ("legacy.csv.gz", "Invoice", "Customer ID"),
    "online_retail_2010-2011.csv.gz": ("shop.csv.gz", "InvoiceNo", "CustomerID"),
}
CUSTOMERS = 250
ANONYMOUS_ORDER_SHARE = 0.03
SEED = 7


def main() -> None:
    frames = {
        name: pd.read_csv(REFERENCE / name, dtype=str, keep_default_na=False) for name in FILES
    }
    customer_sets = [set(frames[name][cust]) - {""} for name, (_, _, cust) in FILES.items()]
    both = sorted(set.intersection(*customer_sets))
    rng = np.random.default_rng(SEED)
    chosen = set(rng.choice(both, size=CUSTOMERS, replace=False))
    for name, (sample_name, invoice, customer) in FILES.items():
        frame = frames[name]
        anonymous_orders = sorted(set(frame.loc[frame[customer] == "", invoice]))
        keep_anonymous = set(
            rng.choice(
                anonymous_orders,
                size=int(len(anonymous_orders) * ANONYMOUS_ORDER_SHARE),
                replace=False,
            )
        )
        orders = set(frame.loc[frame[customer].isin(chosen), invoice]) | keep_anonymous
        sample = frame[frame[invoice].isin(orders)]
        target = ROOT / "training" / "sample" / sample_name
        sample.to_csv(target, index=False, compression={"method": "gzip", "mtime": 0})
        print(f"{target}: {len(sample)} rows, {target.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
