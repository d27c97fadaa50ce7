"""A checkerboard purchase matrix whose withheld item must rank first, trained end to end,
for every model variant the trainer serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.bundle import load_current
from recsvc.ranker import Ranker
from tests.helpers import (
    SHOP_COLUMNS,
    SHOP_HEADER,
    purchase_rows,
    source_toml,
    write_config,
    write_csv,
)
from training.config import load_config
from training.pipeline import train

BLOCK_A = [f"A{i}" for i in range(10)]
BLOCK_B = [f"B{i}" for i in range(10)]
WITHHELD = "A3"
MODEL_VARIANTS = {"als": "trend_weight = 0.0", "als+trend": ""}


def checkerboard(directory: Path, model: str = "") -> Path:
    baskets = {f"a{c:02d}": list(BLOCK_A) for c in range(20)}
    baskets |= {f"b{c:02d}": list(BLOCK_B) for c in range(20)}
    baskets["a00"] = [item for item in BLOCK_A if item != WITHHELD]
    write_csv(directory / "shop.csv", SHOP_HEADER, purchase_rows(baskets))
    return write_config(directory, source_toml("shop", "shop.csv", SHOP_COLUMNS), model=model)


@pytest.mark.parametrize("model", MODEL_VARIANTS.values(), ids=MODEL_VARIANTS.keys())
def test_withheld_item_ranks_first(tmp_path: Path, model: str) -> None:
    report = train(load_config(checkerboard(tmp_path, model)), tmp_path / "models")
    ranker = Ranker(load_current(tmp_path / "models").arrays)

    ranking = ranker.recommend("a00", n=5)

    assert not ranking.fallback
    item_ids = [str(ranker.arrays.item_ids[item.index]) for item in ranking.items]
    assert item_ids[0] == WITHHELD
    assert all(item in BLOCK_B for item in item_ids[1:])
    assert report.accounting["shop"]["used"] == 20 * 10 + 20 * 10 - 1


def test_unknown_customer_gets_best_sellers_minus_nothing(tmp_path: Path) -> None:
    train(load_config(checkerboard(tmp_path)), tmp_path / "models")
    ranker = Ranker(load_current(tmp_path / "models").arrays)

    ranking = ranker.recommend("stranger", n=19)

    assert ranking.fallback
    item_ids = [str(ranker.arrays.item_ids[item.index]) for item in ranking.items]
    assert WITHHELD not in item_ids  # the one item bought 19 times instead of 20 comes last
    assert len(set(item_ids)) == 19


def test_training_is_deterministic(tmp_path: Path) -> None:
    config = load_config(checkerboard(tmp_path))
    first = load_current(train(config, tmp_path / "one").path.parent).arrays
    second = load_current(train(config, tmp_path / "two").path.parent).arrays
    np.testing.assert_array_equal(first.user_factors, second.user_factors)
    np.testing.assert_array_equal(first.item_factors, second.item_factors)
    np.testing.assert_array_equal(first.item_prior, second.item_prior)
