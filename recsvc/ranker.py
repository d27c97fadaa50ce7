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
from recsvc.identity import AliasIndex, IdentityRules


@dataclass(frozen=True)
class RankedItem:
    index: int
    score: float


@dataclass(frozen=True)
class Ranking:
    """Items best first. ``fallback`` is true when the customer is unknown to the model;
    ``customer_id`` is then None, else the customer's canonical id."""

    items: list[RankedItem]
    fallback: bool
    customer_id: str | None = None


class Ranker:
    def __init__(
        self,
        arrays: BundleArrays,
        rules: IdentityRules | None = None,
        namespaces: Iterable[str] = (),
    ) -> None:
        self.arrays = arrays
        self.aliases = AliasIndex(
            arrays.alias_high,
            arrays.alias_low,
            arrays.alias_rows,
            rules or IdentityRules(),
            namespaces,
        )

    def customer_row(self, key: str) -> int | None:
        """The row of the customer a key names: canonical id, <source>:<id>, email:, phone:."""
        return self.aliases.row(key)

    def owned(self, row: int) -> NDArray[np.int32]:
        start, end = self.arrays.owned_indptr[row], self.arrays.owned_indptr[row + 1]
        return self.arrays.owned_indices[start:end]

    def recommend(self, key: str, n: int, also_owned: Iterable[int] = ()) -> Ranking:
        """Top ``n`` items the customer does not own; popular items when the model lacks them.

        ``also_owned`` adds item indices known to be owned beyond the bundle (e.g. purchases
        reported after training); items grouped with them are excluded too.
        """
        extra = self.with_groups(np.fromiter(also_owned, dtype=np.int32))
        row = self.customer_row(key)
        if row is None:
            return Ranking(items=self.popular(n, exclude=extra), fallback=True)
        excluded = np.concatenate([self.owned(row), extra])
        customer_id = str(self.arrays.customer_ids[row])
        return Ranking(
            top_n(self.scores(row), n, excluded), fallback=False, customer_id=customer_id
        )

    def with_groups(self, items: NDArray[np.int32]) -> NDArray[np.int32]:
        """``items`` plus every item in the same group (editions of one work)."""
        if not len(items):
            return items
        groups = self.arrays.item_group
        return np.flatnonzero(np.isin(groups, groups[items])).astype(np.int32)

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
