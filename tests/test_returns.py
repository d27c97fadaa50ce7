"""Returns are bounded by what happened: they never take an item's net quantity or a
customer's spend below zero, and count in the tier window of the purchase they return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.config import load_config
from training.dataset import TrainingData, build_dataset
from training.merge import merge_sources
from training.sources import read_source
from training.tiers import CustomerLines, TierConfig, customer_signals


def trained(tmp_path: Path, rows: list[list[object]]) -> tuple[TrainingData, np.ndarray]:
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, rows)
    source = source_toml("shop", "shop.csv", SHOP_COLUMNS, cancellation_prefix="C")
    config = load_config(write_config(tmp_path, source))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    data = build_dataset(merged.events, 30.0, 14.0)
    lines = CustomerLines.of(merged.events, data.customer_ids)
    signals = customer_signals(lines, len(data.customer_ids), data.as_of, TierConfig())
    return data, signals.window_spend


def row(order: str, item: str, quantity: float, when: str, customer: str) -> list[object]:
    return [order, item, "Thing", quantity, when, 10.0, customer, "UK"]


def spend_of(data: TrainingData, values: np.ndarray, customer: str) -> float:
    return float(values[list(data.customer_ids).index(customer)])


def test_a_return_counts_in_the_window_of_the_purchase_it_returns(tmp_path: Path) -> None:
    data, window = trained(
        tmp_path,
        [
            row("1", "A", 3, "2010-06-01 10:00:00", "old"),  # outside the 365-day window
            row("C2", "A", -3, "2011-10-01 10:00:00", "old"),  # inside it
            row("3", "B", 1, "2011-11-01 10:00:00", "old"),
            row("4", "B", 2, "2011-12-01 10:00:00", "recent"),
        ],
    )
    assert spend_of(data, window, "old") == 10.0  # B only: A's refund went back to 2010
    assert spend_of(data, data.spend, "old") == 10.0
    assert data.settlement.report["charged_to_purchase_date"] == 1


def test_a_return_cannot_take_quantity_or_spend_below_zero(tmp_path: Path) -> None:
    data, window = trained(
        tmp_path,
        [
            row("1", "A", 2, "2011-06-01 10:00:00", "over"),
            row("C2", "A", -5, "2011-07-01 10:00:00", "over"),  # 3 more than bought
            row("3", "A", 1, "2011-08-01 10:00:00", "over"),  # bought again: holds 1
            row("C4", "B", -4, "2011-08-01 10:00:00", "over"),  # never bought: unmatched
            row("5", "B", 1, "2011-12-01 10:00:00", "other"),
        ],
    )
    assert spend_of(data, data.spend, "over") == 10.0
    assert spend_of(data, window, "over") == 10.0
    held = pd.DataFrame.sparse.from_spmatrix(data.held, columns=data.item_ids)
    assert held.loc[list(data.customer_ids).index("over"), "A"] == 1.0
    report = data.settlement.report
    assert report["returns"] == 2 and report["unmatched"] == 1
    assert report["clamped"] == 2 and report["clamped_quantity"] == 7.0


def test_a_fraction_of_a_unit_does_not_make_an_item_owned(tmp_path: Path) -> None:
    data, _ = trained(
        tmp_path,
        [
            row("1", "A", 0.0001, "2011-06-01 10:00:00", "tiny"),
            row("2", "B", 0.5, "2011-06-01 10:00:00", "tiny"),
            row("3", "A", 1, "2011-06-01 10:00:00", "other"),
        ],
    )
    owned = data.owned.toarray()[list(data.customer_ids).index("tiny")]
    assert dict(zip(data.item_ids, owned, strict=True)) == {"A": 0.0, "B": 1.0}
