"""The precomputed candidate lists answer exactly as scoring the whole catalog would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flask import Flask

from recsvc.ranker import Ranker


def slow(ranker: Ranker) -> Ranker:
    """The same model without candidate lists: every request scores the whole catalog."""
    count = len(ranker.arrays.customer_ids)
    arrays = dataclasses.replace(
        ranker.arrays,
        candidate_items=np.zeros((count, 0), np.int32),
        candidate_scores=np.zeros((count, 0), np.float32),
    )
    return Ranker(arrays, ranker.aliases.rules, ranker.aliases.namespaces, ranker.tiers)


def test_candidates_match_full_scoring(sample_app: Flask) -> None:
    fast = sample_app.extensions["recsvc.registry"].model.ranker
    full = slow(fast)
    assert fast.arrays.candidate_items.shape[1] == 50
    for row in range(len(fast.arrays.customer_ids)):
        tier = int(fast.trained_tier[row])
        quick = fast.recommend_row(row, 10, None, tier)
        thorough = full.recommend_row(row, 10, None, tier)
        assert [i.index for i in quick.items] == [i.index for i in thorough.items], row
        np.testing.assert_allclose(
            [i.score for i in quick.items], [i.score for i in thorough.items], rtol=1e-5
        )


def test_purchases_filter_candidates_and_returns_rescore(sample_app: Flask) -> None:
    fast = sample_app.extensions["recsvc.registry"].model.ranker
    full = slow(fast)
    row, tier = 7, int(fast.trained_tier[7])
    top = fast.recommend_row(row, 10, None, tier).items
    bought = {top[0].index: 1.0, top[3].index: 2.0}
    quick = fast.recommend_row(row, 10, bought, tier)
    assert [i.index for i in quick.items] == [
        i.index for i in full.recommend_row(row, 10, bought, tier).items
    ]
    assert top[0].index not in [i.index for i in quick.items]
    held = int(fast.owned(row)[0])
    returned = {held: -1000.0}  # a full return: held at training, eligible again
    assert [i.index for i in fast.recommend_row(row, 40, returned, tier).items] == [
        i.index for i in full.recommend_row(row, 40, returned, tier).items
    ]


def test_a_list_too_short_falls_back(sample_app: Flask, tmp_path: Path) -> None:
    fast = sample_app.extensions["recsvc.registry"].model.ranker
    full = slow(fast)
    row, tier = 3, int(fast.trained_tier[3])
    many = fast.recommend_row(row, 80, None, tier)  # more than the 50 candidates
    assert len(many.items) == 80
    assert [i.index for i in many.items] == [
        i.index for i in full.recommend_row(row, 80, None, tier).items
    ]
