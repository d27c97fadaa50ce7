"""Ranking for one customer: score the catalog, drop every owned item, fall back to popular.

A known customer's score for an item is their factor score standardised over the catalog
(zero mean, unit variance) plus the item's prior from the bundle; standardising puts every
customer's scores on the scale the prior was tuned for.

Tier policy, on top: items reserved for higher tiers are never shown; premium-priced items
get the tier's ``premium_boost``; and with ``price_affinity`` > 0 an item priced outside the
customer's usual band loses ``price_affinity`` per log unit it lies outside.

Fast path: the bundle holds each customer's top ``candidate_items`` under the policy of their
tier at training. A request filters them by purchases reported since; it scores the whole
catalog only when that is not enough: a return (an item may be eligible again), another
tier, or fewer than ``n`` candidates left, filters (category, price band) included.

Pure numpy; no web framework. The evaluation tooling ranks through this same code, so offline
metrics describe what customers are served.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsvc.bundle import OWNED_QUANTITY, BundleArrays
from recsvc.identity import AliasIndex, IdentityKey, IdentityRules
from recsvc.policy import TierTable

UNAVAILABLE_SHORTLIST = 256  # beyond this many hidden items, a mask is cheaper than asking more


# Not frozen: built for every request, and a frozen dataclass's __init__ costs about three
# times as much.
@dataclass(slots=True)
class RankedItem:
    index: int
    score: float  # rounded to 6 decimals


@dataclass(slots=True)
class Ranking:
    """Items best first. ``fallback`` is true when the customer is unknown to the model;
    ``scope`` then names the best sellers served: a segment ("country:Germany") or "all"."""

    items: list[RankedItem]
    fallback: bool
    scope: str | None = None


UNAVAILABLE_SHORTLIST = 256  # beyond this many hidden items, a mask is cheaper


class Ranker:
    def __init__(
        self,
        arrays: BundleArrays,
        rules: IdentityRules | None = None,
        namespaces: Iterable[str] = (),
        tiers: TierTable | None = None,
        key: IdentityKey | None = None,
    ) -> None:
        """``key``: the secret the bundle's alias digests were made with; the service passes
        its own. None: the development key (the trainer's evaluation ranks by row)."""
        self.arrays = arrays
        self.tiers = tiers or TierTable.of(None)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_prices = np.log(arrays.prices).astype(np.float32)
        # Items without a usable price (unknown, or zero) get no price penalty: weight 0.
        priced = np.isfinite(log_prices)
        self._log_prices = np.where(priced, log_prices, np.float32(0.0))
        self._price_weight = (priced * self.tiers.price_affinity).astype(np.float32)
        self.aliases = AliasIndex(
            arrays.alias_high,
            arrays.alias_low,
            arrays.alias_rows,
            rules or IdentityRules(),
            namespaces,
            key or IdentityKey.development_key(),
        )
        group_sizes = np.bincount(arrays.item_group, minlength=1)
        self._grouped = group_sizes[arrays.item_group] > 1
        self._boosts = np.array([level.premium_boost for level in self.tiers.levels])
        self._premium_items = np.flatnonzero(arrays.item_premium)
        # Best sellers per segment, by the segment's name in lower case.
        bounds = arrays.segment_indptr.tolist()
        self._segments: dict[str, tuple[str, NDArray[np.int32], NDArray[np.float32]]] = {
            str(name).lower(): (
                str(name),
                arrays.segment_items[bounds[i] : bounds[i + 1]],
                arrays.segment_scores[bounds[i] : bounds[i + 1]],
            )
            for i, name in enumerate(arrays.segment_names.tolist())
        }
        self.trained_tier = self.tiers.indices(arrays.window_spend)
        # Items reserved for higher tiers, per tier (usually none), listed once.
        self._hidden_items = [
            np.flatnonzero(arrays.item_min_tier > tier) for tier in range(len(self.tiers.levels))
        ]
        # Scores are standardised per customer (mean 0 and spread 1 over the catalog) before
        # the trending prior is added. The mean and spread of u·v over items follow from the
        # item factors' mean and covariance, and the shift and the prior ride along as two
        # extra factor columns: a batch is one matrix product, not five passes over it.
        item_factors = arrays.item_factors.astype(np.float64)
        self._item_mean = item_factors.mean(axis=0)
        self._item_covariance = np.atleast_2d(np.cov(item_factors, rowvar=False, bias=True))
        self._item_side = np.hstack(
            [
                arrays.item_factors,
                np.ones((len(arrays.item_ids), 1), np.float32),
                arrays.item_prior.reshape(-1, 1),
            ]
        ).astype(np.float32)

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
        scopes: tuple[str, ...] = (),
        unavailable: NDArray[np.int32] | None = None,
    ) -> Ranking:
        """``allowed`` (a mask over items) limits the candidates, e.g. to one category;
        ``unavailable`` (item indices) are never listed. ``scopes``: the segments whose best
        sellers a customer unknown to the model gets, the first the bundle has a list for
        ("country:Germany", any case); else all."""
        if unavailable is not None and len(unavailable):
            if allowed is None and len(unavailable) <= UNAVAILABLE_SHORTLIST:
                # Ask for more and drop the hidden ones; no more than the precomputed list
                # holds, which keeps the fast path, unless that leaves fewer than n.
                ask = n + len(unavailable)
                width = self.arrays.candidate_items.shape[1]
                if width >= n:
                    ask = min(ask, width)
                longer = self.recommend_row(row, ask, deltas, tier, policy, scopes=scopes)
                withdrawn = set(unavailable.tolist())
                kept = [item for item in longer.items if item.index not in withdrawn]
                if len(kept) >= n or len(longer.items) < ask:  # enough, or all there are
                    return Ranking(kept[:n], longer.fallback, longer.scope)
            if allowed is None:
                allowed = np.ones(len(self.arrays.item_ids), dtype=bool)
            else:
                allowed = allowed.copy()
            allowed[unavailable] = False
        deltas = deltas or {}
        if row is not None and policy and tier == self.trained_tier[row]:
            fast = self._from_candidates(row, n, deltas, allowed)
            if fast is not None:
                return fast
        excluded = self.excluded(row, deltas)
        hidden = self._hidden_items[tier]
        if row is None:  # the mask is read along the best sellers, not turned into indices
            if len(hidden):
                excluded = np.union1d(excluded, hidden).astype(np.int32)
            scope = next((s for s in scopes if s.lower() in self._segments), None)
            items = self.popular(n, excluded, scope, allowed)
            return Ranking(items, True, "all" if scope is None else self.segment_name(scope))
        if allowed is not None:
            hidden = np.union1d(hidden, np.flatnonzero(~allowed))
        if len(hidden):
            excluded = np.union1d(excluded, hidden).astype(np.int32)
        rows = np.array([row])
        scores = self.batch_scores(rows, np.array([tier]), policy)[0]
        return Ranking(top_n(scores, n, excluded), fallback=False)

    def _from_candidates(
        self,
        row: int,
        n: int,
        deltas: Mapping[int, float],
        allowed: NDArray[np.bool_] | None = None,
    ) -> Ranking | None:
        items = self.arrays.candidate_items[row]
        if not len(items) or any(change < 0 for change in deltas.values()):
            return None
        if not deltas and allowed is None:
            listed = items[:n].tolist()
            if -1 in listed:
                listed = listed[: listed.index(-1)]
            elif len(listed) < n:
                return None  # fewer candidates than asked and the list is not complete
            scores = self.arrays.candidate_scores[row, : len(listed)].tolist()
            return Ranking(ranked(listed, scores), fallback=False)
        keep = items >= 0
        complete = not keep.all()  # padded: every eligible item is in the list
        if deltas:
            keep &= ~np.isin(items, self.excluded(row, deltas))
        if allowed is not None:
            keep &= allowed[items]  # a padding -1 reads the last item: already not kept
        chosen = np.flatnonzero(keep)[:n]
        if len(chosen) < n and not complete:
            return None
        scores = self.arrays.candidate_scores[row, chosen].tolist()
        return Ranking(ranked(items[chosen].tolist(), scores), fallback=False)

    def batch_scores(
        self, rows: NDArray[np.intp], tiers: NDArray[np.intp], policy: bool = True
    ) -> NDArray[np.float32]:
        """Scores of every item for each of ``rows`` (a customer in each tier of ``tiers``).
        Float32 throughout: at a million customers this is the trainer's largest step."""
        arrays = self.arrays
        users = arrays.user_factors[rows].astype(np.float64)
        mean = users @ self._item_mean
        variance = np.einsum("ij,jk,ik->i", users, self._item_covariance, users)
        spread = np.sqrt(np.maximum(variance, 0.0))
        spread[spread == 0] = 1.0  # a zero factor vector: the prior alone ranks
        user_side = np.hstack(
            [users / spread[:, None], (-mean / spread)[:, None], np.ones((len(rows), 1))]
        ).astype(np.float32)
        scores: NDArray[np.float32] = user_side @ self._item_side.T
        if not policy:
            return scores
        boosts = self._boosts[tiers]
        if boosts.any():
            scores[:, self._premium_items] += boosts[:, None].astype(np.float32)
        low, high = arrays.price_low[rows], arrays.price_high[rows]
        banded = np.isfinite(low) & (low > 0)
        if self.tiers.price_affinity and banded.any():
            # Distance in log price outside [low, high]; customers without a band get an
            # infinite one, items without a price no penalty.
            with np.errstate(divide="ignore", invalid="ignore"):
                lower = np.where(banded, np.log(low), -np.inf).astype(np.float32)[:, None]
                upper = np.where(banded, np.log(high), np.inf).astype(np.float32)[:, None]
            prices = self._log_prices
            outside = np.clip(prices, lower, upper)
            np.subtract(prices, outside, out=outside)
            np.abs(outside, out=outside)
            outside *= self._price_weight
            scores -= outside
        return scores

    def candidate_lists(
        self,
        k: int,
        batch: int = 512,
        threads: int = 1,
        done: Callable[[int], None] | None = None,
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Every customer's top ``k`` items under their tier's policy, best first, padded
        with -1 when fewer items are eligible (the bundle's fast path). Batches of ``batch``
        customers are ranked on ``threads`` threads (numpy releases the GIL); ``done`` is
        told each batch's size as it finishes (progress)."""
        count, n_items = len(self.arrays.customer_ids), len(self.arrays.item_ids)
        k = min(k, n_items)
        items = np.full((count, k), -1, dtype=np.int32)
        scores = np.full((count, k), -np.inf, dtype=np.float32)
        if k == 0:
            return items, scores

        def rank(start: int) -> int:
            rows = np.arange(start, min(start + batch, count))
            items[rows], scores[rows] = self._top(rows, k)
            return start

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in pool.map(rank, range(0, count, batch)):
                if done is not None:
                    done(min(batch, count - start))
        return items, scores

    def _top(self, rows: NDArray[np.intp], k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """The top ``k`` eligible items of each of ``rows`` and their scores (-1 and -inf
        past the last eligible item)."""
        n_items = len(self.arrays.item_ids)
        block = self.batch_scores(rows, self.trained_tier[rows])
        if self._grouped.any():  # editions: each customer's owned set needs expanding
            for offset, row in enumerate(rows):
                block[offset, self.excluded(int(row), {})] = -np.inf
        else:
            indptr = self.arrays.owned_indptr
            counts = indptr[rows + 1] - indptr[rows]
            owned = self.arrays.owned_indices[indptr[rows[0]] : indptr[rows[-1] + 1]]
            block[np.repeat(np.arange(len(rows)), counts), owned] = -np.inf
        tiers = self.trained_tier[rows]
        for tier in np.unique(tiers):
            hidden = self._hidden_items[tier]
            if len(hidden):
                block[np.ix_(np.flatnonzero(tiers == tier), hidden)] = -np.inf
        top = np.argpartition(block, n_items - k, axis=1)[:, n_items - k :]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        valid = np.isfinite(top_scores)
        return np.where(valid, top, -1), np.where(valid, top_scores, -np.inf)

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
        held = np.fromiter((i for i, q in quantity.items() if q >= OWNED_QUANTITY), dtype=np.int32)
        return self.with_groups(held)

    def with_groups(self, items: NDArray[np.int32]) -> NDArray[np.int32]:
        """``items`` plus every item in the same group (editions of one work)."""
        if not len(items) or not self._grouped[items].any():
            return items
        groups = self.arrays.item_group
        return np.flatnonzero(np.isin(groups, groups[items])).astype(np.int32)

    def scores(self, row: int) -> NDArray[np.float32]:
        """A customer's item scores without the tier policy."""
        scores: NDArray[np.float32] = self.batch_scores(np.array([row]), np.array([0]), False)[0]
        return scores

    def segment_name(self, scope: str) -> str:
        """The segment ``scope`` names (any case) as the bundle spells it; KeyError if none."""
        return self._segments[scope.lower()][0]

    def popular(
        self,
        n: int,
        exclude: NDArray[np.int32] | None = None,
        scope: str | None = None,
        allowed: NDArray[np.bool_] | None = None,
    ) -> list[RankedItem]:
        """The best sellers outside ``exclude`` (and within ``allowed``): overall, or of the
        segment ``scope`` names, then (score 0: not sold in the segment) the overall best
        sellers it never sold."""
        overall, overall_scores = self.arrays.popular_items, self.arrays.popular_scores
        if scope is None:
            return _first(overall, overall_scores, n, exclude, allowed)
        _, items, scores = self._segments[scope.lower()]
        found = _first(items, scores, n, exclude, allowed)
        if len(found) < n:
            unsold = items if exclude is None else np.union1d(exclude, items)
            rest = _first(overall, overall_scores, n, unsold.astype(np.int32), allowed)
            found += [RankedItem(item.index, 0.0) for item in rest[: n - len(found)]]
        return found


def _first(
    items: NDArray[np.int32],
    scores: NDArray[np.float32],
    n: int,
    exclude: NDArray[np.int32] | None,
    allowed: NDArray[np.bool_] | None = None,
) -> list[RankedItem]:
    """The first ``n`` of ``items`` (best first) outside ``exclude`` and within ``allowed``."""
    keep = np.ones(len(items), dtype=bool) if allowed is None else allowed[items]
    if exclude is not None and len(exclude):
        keep &= ~np.isin(items, exclude)
    chosen = np.flatnonzero(keep)[:n]
    return ranked(items[chosen].tolist(), scores[chosen].tolist())


def top_n(scores: NDArray[np.floating], n: int, excluded: NDArray[np.int32]) -> list[RankedItem]:
    """The ``n`` highest-scoring indices outside ``excluded``, ties broken by index."""
    scores = scores.astype(np.float64, copy=True)  # the caller's array stays intact
    scores[excluded] = -np.inf
    eligible = len(scores) - len(np.unique(excluded))
    k = min(n, eligible)
    if k <= 0:
        return []
    candidates = np.argpartition(-scores, k - 1)[:k]
    best = candidates[np.lexsort((candidates, -scores[candidates]))]
    return ranked(best.tolist(), scores[best].tolist())


def ranked(indices: list[int], scores: list[float]) -> list[RankedItem]:
    """Ranked items from item indices and their scores, rounded to 6 decimals. Scaled to an
    integer and back rather than round(score, 6), which converts through decimal digits: the
    same double (the nearest to a 6-decimal number) at a fraction of the cost. A score that
    is not finite (a broken bundle) passes unchanged rather than failing the request."""
    return [
        RankedItem(i, round(s * 1e6) / 1e6 if -math.inf < s < math.inf else s)
        for i, s in zip(indices, scores, strict=True)
    ]
