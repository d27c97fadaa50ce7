"""Ranking metrics with binary relevance, shared by the customer and basket evaluations."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

import numpy as np

H = TypeVar("H", bound=Hashable)


def metrics_at_k(recommended: Sequence[H], relevant: AbstractSet[H], k: int) -> dict[str, float]:
    """Binary-relevance precision, recall, NDCG, average precision and hit at k."""
    top = list(recommended[:k])
    hits = [item in relevant for item in top]
    dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    precisions = [sum(hits[: rank + 1]) / (rank + 1) for rank, hit in enumerate(hits) if hit]
    found = sum(hits)
    return {
        f"precision@{k}": found / k,
        f"recall@{k}": found / len(relevant),
        f"ndcg@{k}": dcg / ideal,
        f"map@{k}": sum(precisions) / min(len(relevant), k),
        f"hit_rate@{k}": float(found > 0),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over ``rows`` (all with the same keys); {} for none."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
