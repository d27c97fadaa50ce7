"""A Parquet source's typed numbers and timestamps are merged as the same values written as
text would be: same parsed rows, same quarantine reasons, same accounting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import write_config
from training.check import check_sources
from training.config import load_config
from training.merge import merge_sources
from training.sources import read_source

CUSTOMERS = ["c1", "c1", "c2", "c2", "c3", "c3", "c4"]
ITEMS = ["A", "B", "A", "C", "B", "C", "A"]
ORDERS = ["o1", "o1", "o2", "o3", "o4", "o5", "o6"]
QUANTITIES = [2, 1, None, 0, 3, -1, 1]
PRICES = [2.5, None, 1.25, 4.0, 3.0, 3.0, 1.0]
# Wall time in Europe/London: 2011-03-27 01:30 does not exist there (clocks went forward).
STAMPS = [
    dt.datetime(2011, 3, 1, 9, 0),
    dt.datetime(2011, 3, 1, 9, 0),
    dt.datetime(2011, 3, 2, 10, 0),
    dt.datetime(2011, 6, 1, 12, 15, 30),
    None,
    dt.datetime(2011, 7, 2, 23, 59, 59),
    dt.datetime(2011, 3, 27, 1, 30),
]


def _table(quantity: pa.Array, price: pa.Array, at: pa.Array) -> pa.Table:
    return pa.table(
        {
            "customer": CUSTOMERS,
            "sku": ITEMS,
            "order": ORDERS,
            "qty": quantity,
            "price": price,
            "at": at,
        }
    )


def _text(values: list[object]) -> pa.Array:
    return pa.array(["" if v is None else str(v) for v in values], pa.string())


def _config(directory: Path, pattern: str) -> Path:
    source = f"""
[[sources]]
name = "shop"
kind = "parquet"
path = "{pattern}"
timezone = "Europe/London"
[sources.columns]
customer_id = "customer"
item_id = "sku"
order_id = "order"
quantity = "qty"
unit_price = "price"
timestamp = "at"
"""
    return write_config(directory, source)


def _merged(directory: Path, pattern: str) -> tuple[pd.DataFrame, dict[str, object], list[str]]:
    config = load_config(_config(directory, pattern))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    columns = ["customer_id", "item_id", "quantity", "unit_price", "timestamp", "outcome"]
    events = merged.events[columns].astype({"customer_id": str, "item_id": str, "outcome": str})
    events = events.sort_values(columns[:3], ignore_index=True)
    return events, merged.accounting["shop"], sorted(merged.quarantine.frame()["reason"])


def test_typed_columns_merge_as_their_text_does(tmp_path: Path) -> None:
    typed = tmp_path / "typed"
    text = tmp_path / "text"
    typed.mkdir()
    text.mkdir()
    pq.write_table(
        _table(
            pa.array(QUANTITIES, pa.int64()),
            pa.array(PRICES, pa.float64()),
            pa.array(STAMPS, pa.timestamp("us")),
        ),
        typed / "shop.parquet",
    )
    pq.write_table(_table(_text(QUANTITIES), _text(PRICES), _text(STAMPS)), text / "shop.parquet")

    assert (
        read_source(load_config(_config(typed, "shop.parquet")).sources[0])
        .frame["timestamp"]
        .dtype.kind
        == "M"
    )  # kept typed, not written out as text
    # `recsvc check` has nothing to parse in a typed column.
    assert [
        (c.errors, c.warnings) for c in check_sources(load_config(_config(typed, "shop.parquet")))
    ] == [([], [])]
    events, accounting, reasons = _merged(typed, "shop.parquet")
    expected_events, expected_accounting, expected_reasons = _merged(text, "shop.parquet")
    pd.testing.assert_frame_equal(events, expected_events)
    assert accounting == expected_accounting
    assert (
        reasons
        == expected_reasons
        == ["bad_price", "bad_quantity", "bad_timestamp", "bad_timestamp", "zero_quantity"]
    )


def test_zoned_timestamps_and_files_that_disagree_on_types(tmp_path: Path) -> None:
    """A column with a zone is an instant (the source's time zone does not apply); a source
    whose files type a column differently still reads every file."""
    london = pd.Series(STAMPS, dtype="datetime64[us]").dt.tz_localize(
        "Europe/London", nonexistent="NaT"
    )
    zoned = pa.Array.from_pandas(london.dt.tz_convert("UTC"))
    pq.write_table(
        _table(pa.array(QUANTITIES, pa.int32()), pa.array(PRICES, pa.float32()), zoned),
        tmp_path / "part-1.parquet",
    )
    pq.write_table(
        _table(_text(QUANTITIES), _text(PRICES), _text(STAMPS)), tmp_path / "part-2.parquet"
    )
    events, accounting, _ = _merged(tmp_path, "part-*.parquet")
    assert accounting["rows_read"] == 2 * len(CUSTOMERS)
    # Each line comes once from each file, typed and as text, and both parse the same.
    stamps = events.groupby(["customer_id", "item_id", "quantity"], dropna=False)["timestamp"]
    assert (stamps.nunique(dropna=False) == 1).all()
