"""Ranking for one customer: score the catalog, drop every owned item, fall back to popular.

A known customer's score for an item is their factor score standardised over the catalog
(zero mean, unit variance) plus the item's prior from the bundle; standardising puts every
customer's scores on the scale the prior was tuned for.

Pure numpy; no web framework. The evaluation tooling ranks through this same code, so offline
metrics describe what customers are served.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsvc.bundle import BundleArrays


@dataclass(frozen=True)
class RankedItem:
    index: int
    score: float


@dataclass(frozen=True)
class Ranking:
    """Items best first. ``fallback`` is true when the customer is unknown to the model."""

    items: list[RankedItem]
    fallback: bool


class Ranker:
    def __init__(self, arrays: BundleArrays) -> None:
        self.arrays = arrays
        self._customer_rows = {cid: row for row, cid in enumerate(arrays.customer_ids.tolist())}

    @property
    def n_items(self) -> int:
        return len(self.arrays.item_ids)

    def customer_row(self, customer_id: str) -> int | None:
        return self._customer_rows.get(customer_id)

    def owned(self, row: int) -> NDArray[np.int32]:
        start, end = self.arrays.owned_indptr[row], self.arrays.owned_indptr[row + 1]
        return self.arrays.owned_indices[start:end]

    def recommend(self, customer_id: str, n: int, also_owned: Iterable[int] = ()) -> Ranking:
        """Top ``n`` items the customer does not own; popular items when the model lacks them.

        ``also_owned`` adds item indices known to be owned beyond the bundle (e.g. purchases
        reported after training).
        """
        extra = np.fromiter(also_owned, dtype=np.int32)
        row = self.customer_row(customer_id)
        if row is None:
            return Ranking(items=self.popular(n, exclude=extra), fallback=True)
        excluded = np.concatenate([self.owned(row), extra])
        return Ranking(items=top_n(self.scores(row), n, excluded), fallback=False)

    def scores(self, row: int) -> NDArray[np.float64]:
        raw = (self.arrays.item_factors @ self.arrays.user_factors[row]).astype(np.float64)
        spread = raw.std()
        standardised = (raw - raw.mean()) / spread if spread > 0 else raw - raw.mean()
        scores: NDArray[np.float64] = standardised + self.arrays.item_prior
        return scores

    def popular(self, n: int, exclude: NDArray[np.int32] | None = None) -> list[RankedItem]:
        candidates = self.arrays.popular_items
        keep = np.ones(len(candidates), dtype=bool)
        if exclude is not None and len(exclude):
            keep = ~np.isin(candidates, exclude)
        chosen = np.flatnonzero(keep)[:n]
        return [
            RankedItem(int(candidates[i]), float(self.arrays.popular_scores[i])) for i in chosen
        ]


def top_n(scores: NDArray[np.floating], n: int, excluded: NDArray[np.int32]) -> list[RankedItem]:
    """The ``n`` highest-scoring indices outside ``excluded``, ties broken by index."""
    scores = scores.astype(np.float64, copy=True)  # the caller's array stays intact
    scores[excluded] = -np.inf
    eligible = len(scores) - len(np.unique(excluded))
    k = min(n, eligible)
    if k <= 0:
        return []
    candidates = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((candidates, -scores[candidates]))
    return [RankedItem(int(candidates[i]), float(scores[candidates[i]])) for i in order]
