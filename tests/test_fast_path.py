"""The precomputed candidate lists answer exactly as scoring the whole catalog would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import numpy as np
import pytest
from flask import Flask

import recsvc.ranker
from recsvc.api.context import service_of
from recsvc.policy import TierLevel, TierTable
from recsvc.ranker import Ranker, Ranking


def slow(ranker: Ranker) -> Ranker:
    """The same model without candidate lists: every request scores the whole catalog."""
    count = len(ranker.arrays.customer_ids)
    arrays = dataclasses.replace(
        ranker.arrays,
        candidate_items=np.zeros((count, 0), np.int32),
        candidate_scores=np.zeros((count, 0), np.float32),
    )
    return Ranker(
        arrays,
        ranker.aliases.rules,
        ranker.aliases.namespaces,
        ranker.tiers,
        item_item_weight=ranker.item_item_weight,
    )


def assert_same_answer(quick: Ranking, thorough: Ranking) -> None:
    """The same items with the same scores, in the same order up to float32 ties: two items
    whose scores differ in the last bit may come out either way round from the two paths."""
    assert len(quick.items) == len(thorough.items)
    np.testing.assert_allclose(
        [i.score for i in quick.items], [i.score for i in thorough.items], rtol=1e-5
    )
    scores = {item.index: item.score for item in thorough.items}
    for item in quick.items:
        # An item missing from the thorough list ties with its last one.
        expected = scores.get(item.index, thorough.items[-1].score)
        np.testing.assert_allclose(item.score, expected, rtol=1e-5, err_msg=str(item.index))


def test_candidates_match_full_scoring(sample_app: Flask) -> None:
    fast = service_of(sample_app).registry.model.ranker
    full = slow(fast)
    assert fast.arrays.candidate_items.shape[1] == 50
    for row in range(len(fast.arrays.customer_ids)):
        tier = fast.trained_tier(row)
        quick = fast.recommend_row(row, 10, None, tier)
        assert_same_answer(quick, full.recommend_row(row, 10, None, tier))


def test_purchases_filter_candidates_and_returns_rescore(sample_app: Flask) -> None:
    fast = service_of(sample_app).registry.model.ranker
    full = slow(fast)
    row, tier = 7, fast.trained_tier(7)
    top = fast.recommend_row(row, 10, None, tier).items
    bought = {top[0].index: 1.0, top[3].index: 2.0}
    quick = fast.recommend_row(row, 10, bought, tier)
    assert_same_answer(quick, full.recommend_row(row, 10, bought, tier))
    assert top[0].index not in [i.index for i in quick.items]
    held = int(fast.owned(row)[0])
    returned = {held: -1000.0}  # a full return: held at training, eligible again
    assert_same_answer(
        fast.recommend_row(row, 40, returned, tier), full.recommend_row(row, 40, returned, tier)
    )


def test_a_list_too_short_falls_back(sample_app: Flask, tmp_path: Path) -> None:
    fast = service_of(sample_app).registry.model.ranker
    full = slow(fast)
    row, tier = 3, fast.trained_tier(3)
    many = fast.recommend_row(row, 80, None, tier)  # more than the 50 candidates
    assert len(many.items) == 80
    assert_same_answer(many, full.recommend_row(row, 80, None, tier))


def _with_price_affinity(ranker: Ranker, affinity: float) -> Ranker:
    """The same model under two tiers (the higher boosting premium items) and ``affinity``."""
    levels = (
        TierLevel(name="standard", min_spend=0.0),
        TierLevel(name="gold", min_spend=float(np.median(ranker.arrays.window_spend))),
    )
    levels = (levels[0], msgspec.structs.replace(levels[1], premium_boost=0.3))
    return Ranker(
        ranker.arrays,
        tiers=TierTable(365.0, levels, affinity),
        item_item_weight=ranker.item_item_weight,
    )


def test_the_price_penalty_is_the_distance_outside_the_band(sample_app: Flask) -> None:
    base = service_of(sample_app).registry.model.ranker
    penalised, plain = _with_price_affinity(base, 0.5), _with_price_affinity(base, 0.0)
    arrays = base.arrays
    rows = np.arange(len(arrays.customer_ids))
    tiers = penalised.tiers.indices(arrays.window_spend[rows])
    low, high = arrays.price_low[rows].astype(float), arrays.price_high[rows].astype(float)
    banded = np.isfinite(low) & (low > 0)
    assert banded.any()
    prices = np.log(arrays.prices)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(banded, np.log(low), -np.inf)[:, None]
        upper = np.where(banded, np.log(high), np.inf)[:, None]
    expected = 0.5 * (np.maximum(lower - prices, 0) + np.maximum(prices - upper, 0))
    expected[:, ~np.isfinite(prices)] = 0.0
    found = plain.batch_scores(rows, tiers) - penalised.batch_scores(rows, tiers)
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_candidate_lists_do_not_depend_on_how_a_batch_is_cut(
    sample_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes over a batch's scores and its customers' histories go a few rows at a time;
    cut finer (into uneven pieces), the lists stay the same to the bit."""
    ranker = _with_price_affinity(service_of(sample_app).registry.model.ranker, 0.5)
    n_items = len(ranker.arrays.item_ids)
    whole = ranker.candidate_lists(20, batch=64, threads=2)
    # Chunks of histories by their purchases' neighbours: a few customers each, unevenly.
    monkeypatch.setattr(recsvc.ranker, "_SUM_ENTRIES", 300 * int(ranker._neighbours_per_item) + 7)
    by_purchases = ranker.candidate_lists(20, batch=64, threads=2)
    # And by customers x items, with the passes over scores a few rows at a time.
    monkeypatch.setattr(recsvc.ranker, "_SUM_ENTRIES", 1 << 30)
    monkeypatch.setattr(recsvc.ranker, "_ROW_CELLS", 3 * n_items + 1)
    monkeypatch.setattr(recsvc.ranker, "_SUM_CELLS", 5 * n_items - 1)
    by_cells = ranker.candidate_lists(20, batch=64, threads=2)
    for expected, first, second in zip(whole, by_purchases, by_cells, strict=True):
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)
    assert (whole[0][:, 0] >= 0).all() and (whole[2] >= 0).any()
