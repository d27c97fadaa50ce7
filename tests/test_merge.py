"""Merging two sources with different schemas: every row accounted for, exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.config import load_config
from training.dataset import build_dataset
from training.merge import merge_sources
from training.sources import read_source

LEGACY_COLUMNS = {
    "order_id": "Invoice",
    "item_id": "StockCode",
    "description": "Description",
    "quantity": "Quantity",
    "timestamp": "InvoiceDate",
    "unit_price": "Price",
    "customer_id": "Customer ID",
    "country": "Country",
}
ITEMS = '[items]\nnon_product_ids = ["POST", "M"]\nnon_product_pattern = "^GIFT_"\n'


@pytest.fixture
def merged(tmp_path: Path):  # type: ignore[no-untyped-def]
    write_csv(
        tmp_path / "legacy.csv",
        list(LEGACY_COLUMNS.values()),
        [
            ["100", "85123A", "HEART HOLDER", "6", "2010-11-30 09:00:00", "2.55", "17850.0", "UK"],
            ["100", "71053", "LANTERN", "2", "2010-11-30 09:00:00", "3.39", "17850.0", "UK"],
            ["100", "POST", "POSTAGE", "1", "2010-11-30 09:00:00", "18", "17850.0", "UK"],
            # in both exports (the overlap); repeated twice in this one
            ["200", "22041", "FRAME", "4", "2010-12-02 10:00:00", "2.1", "13085", "UK"],
            ["200", "22041", "FRAME", "4", "2010-12-02 10:00:00", "2.1", "13085", "UK"],
            ["C300", "71053", "LANTERN", "-2", "2010-12-03 11:00:00", "3.39", "17850", "UK"],
            ["400", "21232", "CUPS", "12", "2010-12-03 12:00:00", "0.85", "", "UK"],
            ["401", "", "NO ITEM", "1", "2010-12-03 12:00:00", "1", "13085", "UK"],
            ["402", "21232", "CUPS", "many", "2010-12-03 12:00:00", "0.85", "13085", "UK"],
            ["403", "22960", "JAM SET", "1", "2010-11-20 12:00:00", "4.25", "12346", "UK"],
        ],
    )
    write_csv(
        tmp_path / "shop.csv",
        SHOP_HEADER,
        [
            ["200", "22041", "FRAME", "4", "2010-12-02 10:00:00", "2.1", "13085", "UK"],
            ["500", "22041", "FRAME", "1", "2011-01-10 10:00:00", "2.5", "13085", "UK"],
            ["500", "gift_0001_20", "VOUCHER", "1", "2011-01-10 10:00:00", "20", "13085", "UK"],
            ["501", "M", "Manual", "1", "not a date", "-5", "13085", "UK"],
            ["502", "21232", "CUPS", "3", "31/01/2011", "0.85", "13085", "UK"],
            ["503", "21232", "CUPS", "3", "2011-01-31 09:00:00", "abc", "13085", "UK"],
            ["504", "21232", "CUPS", "0", "2011-01-31 09:00:00", "0.85", "13085", "UK"],
            ["505", "21232", "CUPS", "2", "2011-02-01 09:00:00", "0.85", "12346", "UK"],
            # cancels, in the new system, a purchase recorded only in the old one
            ["C506", "22960", "JAM SET", "-1", "2011-02-02 09:00:00", "4.25", "12346", "UK"],
        ],
    )
    config = load_config(
        write_config(
            tmp_path,
            source_toml("legacy", "legacy.csv", LEGACY_COLUMNS),
            source_toml("shop", "shop.csv", SHOP_COLUMNS),
            items=ITEMS,
        )
    )
    return merge_sources([read_source(s) for s in config.sources], config.items)


def test_accounting_is_exact(merged) -> None:  # type: ignore[no-untyped-def]
    assert merged.accounting == {
        "legacy": {
            "rows_read": 10,
            "used": 5,
            "duplicate": 0,
            "cancellation": 1,
            "anonymous": 1,
            "adjustment": 1,
            "erased": 0,
            "quarantined": {"missing_item": 1, "bad_quantity": 1},
        },
        "shop": {
            "rows_read": 9,
            "used": 2,
            "duplicate": 1,
            "cancellation": 1,
            "anonymous": 0,
            "adjustment": 2,
            "erased": 0,
            "quarantined": {"bad_timestamp": 1, "bad_price": 1, "zero_quantity": 1},
        },
    }
    for counts in merged.accounting.values():
        parts = sum(v for k, v in counts.items() if k not in ("rows_read", "quarantined"))
        assert parts + sum(counts["quarantined"].values()) == counts["rows_read"]


def test_quarantine_keeps_reason_and_location(merged) -> None:  # type: ignore[no-untyped-def]
    found = {(r.source, r.record, r.reason) for r in merged.quarantine.frame().itertuples()}
    assert found == {
        ("legacy", 8, "missing_item"),
        ("legacy", 9, "bad_quantity"),
        ("shop", 5, "bad_timestamp"),
        ("shop", 6, "bad_price"),
        ("shop", 7, "zero_quantity"),
    }
    quarantine = merged.quarantine.frame()
    row = quarantine[quarantine["reason"] == "bad_quantity"].iloc[0]
    assert row["quantity"] == "many" and row["file"].endswith("legacy.csv")


def test_ids_are_normalised_and_cancellations_negative(merged) -> None:  # type: ignore[no-untyped-def]
    events = merged.events
    assert set(events["customer_id"]) == {"17850", "13085", "12346", ""}
    cancellation = events[events["outcome"] == "cancellation"].iloc[0]
    assert cancellation["quantity"] == -2 and cancellation["item_id"] == "71053"


def test_cancellation_removes_ownership_and_overlap_counts_once(merged) -> None:  # type: ignore[no-untyped-def]
    data = build_dataset(merged.events, half_life_days=90.0, trend_half_life_days=14.0)
    owned = {
        (str(data.customer_ids[row]), str(data.item_ids[col]))
        for row, col in zip(*data.owned.nonzero(), strict=True)
    }
    # 17850 returned both lanterns; 13085's frame lines: two in legacy (a within-source repeat
    # is kept) plus the 2011 order, while shop's copy of the overlap line is a duplicate.
    # 12346's jam set nets to zero when merged, but the old system still lists it: owned.
    assert owned == {
        ("17850", "85123A"),
        ("13085", "22041"),
        ("12346", "21232"),
        ("12346", "22960"),
    }
    frames = merged.events[merged.events["customer_id"] == "13085"]
    assert frames.loc[frames["outcome"] != "duplicate", "quantity"].sum() == 9
    # Anonymous cups count for popularity only.
    assert "21232" in set(data.item_ids)
    assert data.popularity[list(data.item_ids).index("21232")] > 0
    assert data.prices[list(data.item_ids).index("22041")] == pytest.approx(2.5)
    assert isinstance(data.as_of, pd.Timestamp)


def test_anonymous_lines_in_both_sources_belong_to_nobody(tmp_path: Path) -> None:
    line = ["900", "21232", "CUPS", "12", "2010-12-03 12:00:00", "0.85", "", "UK"]
    bought = ["901", "22041", "FRAME", "1", "2010-12-03 12:00:00", "2.1", "13085", "UK"]
    write_csv(tmp_path / "legacy.csv", list(LEGACY_COLUMNS.values()), [line, bought])
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, [line])
    config = load_config(
        write_config(
            tmp_path,
            source_toml("legacy", "legacy.csv", LEGACY_COLUMNS),
            source_toml("shop", "shop.csv", SHOP_COLUMNS),
        )
    )
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["shop"]["duplicate"] == 1  # an anonymous copy, still a duplicate
    data = build_dataset(merged.events, half_life_days=90.0, trend_half_life_days=14.0)
    assert list(data.customer_ids) == ["13085"]
