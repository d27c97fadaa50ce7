"""The precomputed candidate lists answer exactly as scoring the whole catalog would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flask import Flask

from recsvc.api.context import service_of
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
