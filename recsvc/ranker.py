"""Ranking for one customer: score the catalog, drop every owned item, fall back to popular.

A known customer's score for an item is their factor score standardised over the catalog
(zero mean, unit variance) plus the item's prior from the bundle; standardising puts every
customer's scores on the scale the prior was tuned for.

Tier policy, on top: items reserved for higher tiers are never shown; premium-priced items
get the tier's ``premium_boost``; and with ``price_affinity`` > 0 an item priced outside the
customer's usual band loses ``price_affinity`` per log unit it lies outside.

Pure numpy; no web framework. The evaluation tooling ranks through this same code, so offline
metrics describe what customers are served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsvc.bundle import BundleArrays
from recsvc.identity import AliasIndex, IdentityRules
from recsvc.tiers import TierTable

HELD = 1e-9  # net quantities are sums of decimals; above this the customer holds the item


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
        tiers: TierTable | None = None,
    ) -> None:
        self.arrays = arrays
        self.tiers = tiers or TierTable.from_manifest(None)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._log_prices = np.log(arrays.prices)
        self.aliases = AliasIndex(
            arrays.alias_high,
            arrays.alias_low,
            arrays.alias_rows,
            rules or IdentityRules(),
            namespaces,
        )
        group_sizes = np.bincount(arrays.item_group, minlength=1)
        self._grouped = group_sizes[arrays.item_group] > 1

    def customer_row(self, key: str) -> int | None:
        """The row of the customer a key names: canonical id, <source>:<id>, email:, phone:."""
        return self.aliases.row(key)

    def owned(self, row: int) -> NDArray[np.int32]:
        """Items the customer held at training time (without their editions)."""
        start, end = self.arrays.owned_indptr[row], self.arrays.owned_indptr[row + 1]
        return self.arrays.owned_indices[start:end]

    def recommend(self, key: str, n: int, deltas: Mapping[int, float] | None = None) -> Ranking:
        """Top ``n`` items the customer does not own; popular items when the model lacks them.

        ``deltas`` are net quantity changes per item index since the bundle was trained
        (purchases positive, returns negative), as the store reports them.
        """
        row = self.customer_row(key)
        tier = 0 if row is None else self.tiers.index(float(self.arrays.window_spend[row]))
        return self.recommend_row(row, n, deltas, tier)

    def recommend_row(
        self,
        row: int | None,
        n: int,
        deltas: Mapping[int, float] | None = None,
        tier: int = 0,
        policy: bool = True,
        allowed: NDArray[np.bool_] | None = None,
    ) -> Ranking:
        """``allowed`` (a mask over items) limits the candidates, e.g. to one category."""
        excluded = self.excluded(row, deltas or {})
        hidden = self.arrays.item_min_tier > tier
        if allowed is not None:
            hidden = hidden | ~allowed
        if hidden.any():
            excluded = np.union1d(excluded, np.flatnonzero(hidden)).astype(np.int32)
        if row is None:
            return Ranking(items=self.popular(n, exclude=excluded), fallback=True)
        customer_id = str(self.arrays.customer_ids[row])
        scores = self.scores(row)
        if policy:
            scores = self.with_policy(scores, row, tier)
        return Ranking(top_n(scores, n, excluded), fallback=False, customer_id=customer_id)

    def with_policy(self, scores: NDArray[np.float64], row: int, tier: int) -> NDArray[np.float64]:
        boost = float(self.tiers.levels[tier].get("premium_boost", 0.0))
        if boost:
            scores = scores + boost * self.arrays.item_premium
        low, high = self.arrays.price_low[row], self.arrays.price_high[row]
        if self.tiers.price_affinity and np.isfinite(low) and low > 0:
            prices = self._log_prices
            outside = np.maximum(np.log(low) - prices, prices - np.log(high)).clip(0.0)
            scores = scores - self.tiers.price_affinity * np.nan_to_num(outside)
        return scores

    def excluded(self, row: int | None, deltas: Mapping[int, float]) -> NDArray[np.int32]:
        """Items never to show: what the customer holds after ``deltas``, and its editions."""
        quantity: dict[int, float] = {}
        if row is not None:
            start, end = self.arrays.owned_indptr[row], self.arrays.owned_indptr[row + 1]
            if not deltas:
                return self.with_groups(self.arrays.owned_indices[start:end])
            quantity = dict(
                zip(
                    self.arrays.owned_indices[start:end].tolist(),
                    self.arrays.owned_quantity[start:end].tolist(),
                    strict=True,
                )
            )
        for item, change in deltas.items():
            quantity[item] = quantity.get(item, 0.0) + change
        held = np.fromiter((i for i, q in quantity.items() if q > HELD), dtype=np.int32)
        return self.with_groups(held)

    def with_groups(self, items: NDArray[np.int32]) -> NDArray[np.int32]:
        """``items`` plus every item in the same group (editions of one work)."""
        if not len(items) or not self._grouped[items].any():
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
