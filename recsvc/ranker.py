"""Ranking for one customer: score the catalog, drop every owned item, fall back to popular.

A known customer's score for an item is their factor score standardised over the catalog
(zero mean, unit variance), plus ``item_item_weight`` times their item-item score
standardised the same way (the sum, over their purchases, of the purchase's decayed weight
times the item's weight among its neighbours; see training.itemitem), plus the item's prior
from the bundle; standardising puts every customer's scores on the scale the prior was tuned
for.

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
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from recsvc.bundle import OWNED_QUANTITY, BundleArrays
from recsvc.identity import AliasIndex, IdentityKey, IdentityRules
from recsvc.policy import TierTable

TRENDING_SHARE = 0.05  # of the catalog: the items with the largest trend prior
# A customer's strongest purchases (by decayed weight) a reason is looked for among: a
# wholesaler's thousands of lines would cost a millisecond and name an old order anyway.
REASON_PURCHASES = 200
# The item-item scores and reasons take a batch's customers a chunk at a time: about this many
# of their purchases' neighbours, so that a chunk's arrays stay under glibc's mmap threshold
# as the trainer sets it (1 MB) and are not mapped, faulted and unmapped every chunk; and at
# most ``_SUM_CELLS`` customers x items (the reasons' table of a byte a cell). At 100,000
# items the cells alone had made chunks of 5 customers, and the calls per chunk (holding the
# GIL) slowed the two threads' candidate lists by 15 %.
_SUM_ENTRIES = 1 << 16
_SUM_CELLS = 1 << 22
# Scores a pass over a block takes a few rows at a time (2 MB), read again while cached: the
# price penalty's, the top k's floor's.
_ROW_CELLS = 1 << 19
# The candidate lists score a batch of customers against the catalog at a time, a block of
# float32 per thread (128 MB: at 100,000 items, 335 customers). BLAS packs the item side once
# per product, so larger batches cost less per customer: 5 % less time there than 1 << 24.
BATCH_SCORES = 1 << 25
MAX_BATCH = 512
UNAVAILABLE_SHORTLIST = 256  # beyond this many hidden items, a mask is cheaper than asking more
# In an interest score, sharing a category with everything viewed is worth this much; being
# the strongest neighbour of what was viewed, 1: a visitor browsing one department sees it
# first.
CATEGORY_AFFINITY = 2.0
POPULARITY_TIEBREAK = 0.01  # orders a visitor's items that interest alone cannot tell apart
_NONE = np.zeros(0, dtype=np.int32)


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
    # Per item, the position in the owned arrays of the purchase that explains it (-1:
    # none), when the bundle's candidate lists already said; None: not looked up.
    contributors: list[int] | None = None
    # Per item, the viewed or carted item (an index) that lifted it most (-1: none); None:
    # the ranking had no interactions.
    viewed: list[int] | None = None


@dataclass(frozen=True, slots=True)
class Spread:
    """Weighted items' neighbours, one entry per (source item, neighbour): the neighbour
    (``targets``), the source's weight times the neighbour's (``values``) and the source's
    position in the items spread (``sources``)."""

    targets: NDArray[np.int32]
    values: NDArray[np.float32]
    sources: NDArray[np.intp]


class HistoryChunk(NamedTuple):
    """Some of a batch's customers and their owned items: ``rows[start:start + len(rows)]``
    of the batch, where each one's owned items start (``firsts``) and how many there are, and
    all their positions in the owned arrays (``positions``, row after row)."""

    start: int
    rows: NDArray[np.intp]
    firsts: NDArray[np.int64]
    counts: NDArray[np.int64]
    positions: NDArray[np.int64]


class ItemItemTerms(NamedTuple):
    """A batch's weighted, standardised item-item scores: ``shift`` (per row of the batch)
    on every item, plus ``values`` on the cells the rows' purchases' neighbours reach
    (``cells``: row of the batch times the item count plus item, ascending), a list per
    history chunk of the batch: arrays of a few hundred KB, where batch-sized ones are
    mapped and unmapped (page faults) every batch."""

    shift: NDArray[np.float64]
    cells: list[NDArray[np.int64]]
    values: list[NDArray[np.float32]]


class Ranker:
    def __init__(
        self,
        arrays: BundleArrays,
        rules: IdentityRules | None = None,
        namespaces: Iterable[str] = (),
        tiers: TierTable | None = None,
        key: IdentityKey | None = None,
        item_item_weight: float = 0.0,
    ) -> None:
        """``key``: the secret the bundle's alias digests were made with; the service passes
        its own. None: the development key (the trainer's evaluation ranks by row).
        ``item_item_weight``: the item-item model's weight in the blend (the bundle's
        ``item_item_weight`` parameter)."""
        self.arrays = arrays
        self.item_item_weight = item_item_weight
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
        prior = arrays.item_prior
        threshold = np.quantile(prior, 1.0 - TRENDING_SHARE) if len(prior) else 0.0
        self.trending: NDArray[np.bool_] = (prior > 0) & (prior >= threshold)
        group_sizes = np.bincount(arrays.item_group, minlength=1)
        self._grouped = group_sizes[arrays.item_group] > 1
        self._boosts = np.array([level.premium_boost for level in self.tiers.levels])
        self._neighbours_per_item = len(arrays.neighbour_items) / max(len(arrays.item_ids), 1)
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
        self._popularity_of: dict[str, NDArray[np.float64]] = {}
        self._category_members: dict[int, NDArray[np.float64]] = {}
        # Items reserved for higher tiers, per tier (usually none), listed once.
        self._hidden_items = [
            np.flatnonzero(arrays.item_min_tier > tier).astype(np.int32)
            for tier in range(len(self.tiers.levels))
        ]
        # Scores are standardised per customer (mean 0 and spread 1 over the catalog) before
        # the trending prior is added. The mean and spread of u·v over items follow from the
        # item factors' mean and covariance, and the shift and the prior ride along as two
        # extra factor columns: a batch is one matrix product, not five passes over it.
        item_factors = arrays.item_factors.astype(np.float64)
        self._item_mean = item_factors.mean(axis=0)
        self._item_covariance = np.atleast_2d(np.cov(item_factors, rowvar=False, bias=True))
        # ... and so does a tier's premium boost, a fourth column.
        self._item_side = np.hstack(
            [
                arrays.item_factors,
                np.ones((len(arrays.item_ids), 1), np.float32),
                arrays.item_prior.reshape(-1, 1),
                arrays.item_premium.reshape(-1, 1),
            ]
        ).astype(np.float32)

    def customer_row(self, key: str) -> int | None:
        """The row of the customer a key names: canonical id, <source>:<id>, email:, phone:."""
        return self.aliases.row(key)

    def trained_tier(self, row: int) -> int:
        """The customer's tier at training: the one their candidate list was ranked for.
        Looked up per customer, not kept for all: the per-customer arrays are mapped files."""
        return self.tiers.index(float(self.arrays.window_spend[row]))

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
        interest: Mapping[int, float] | None = None,
    ) -> Ranking:
        """``allowed`` (a mask over items) limits the candidates, e.g. to one category;
        ``unavailable`` (item indices) are never listed. ``scopes``: the segments whose best
        sellers a customer unknown to the model gets, the first the bundle has a list for
        ("country:Germany", any case); else all. ``interest``: weights of the items the
        customer viewed or put in their cart lately (``recsvc.interactions``): items of the
        same departments, and those bought with them, lead the list."""
        if unavailable is not None and len(unavailable):
            if allowed is None and not interest and len(unavailable) <= UNAVAILABLE_SHORTLIST:
                # Ask for more and drop the hidden ones; no more than the precomputed list
                # holds, which keeps the fast path, unless that leaves fewer than n.
                ask = n + len(unavailable)
                width = self.arrays.candidate_items.shape[1]
                if width >= n:
                    ask = min(ask, width)
                longer = self.recommend_row(row, ask, deltas, tier, policy, scopes=scopes)
                withdrawn = set(unavailable.tolist())
                shown = [i for i, item in enumerate(longer.items) if item.index not in withdrawn]
                if len(shown) >= n or len(longer.items) < ask:  # enough, or all there are
                    shown = shown[:n]
                    found = longer.contributors
                    return Ranking(
                        [longer.items[i] for i in shown],
                        longer.fallback,
                        longer.scope,
                        None if found is None else [found[i] for i in shown],
                    )
            if allowed is None:
                allowed = np.ones(len(self.arrays.item_ids), dtype=bool)
            else:
                allowed = allowed.copy()
            allowed[unavailable] = False
        deltas = deltas or {}
        if interest:
            return self._with_interest(row, n, deltas, tier, policy, allowed, scopes, interest)
        if row is not None and policy and tier == self.trained_tier(row):
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

    def _with_interest(
        self,
        row: int | None,
        n: int,
        deltas: Mapping[int, float],
        tier: int,
        policy: bool,
        allowed: NDArray[np.bool_] | None,
        scopes: tuple[str, ...],
        interest: Mapping[int, float],
    ) -> Ranking:
        """A ranking led by what the customer looks at now (``interest_scores``), without
        the items they viewed or carted. A visitor the model does not know is ranked by it
        alone (the best sellers of their segment where it says nothing); a known customer by
        it plus their own scores scaled to [0, 1]: the department they browse first, in the
        order of what goes with what they viewed and of their tastes, then the rest of their
        own list."""
        items = np.fromiter(interest.keys(), dtype=np.int32, count=len(interest))
        weights = np.fromiter(interest.values(), dtype=np.float32, count=len(interest))
        excluded = np.concatenate((self.excluded(row, deltas), self._hidden_items[tier], items))
        ineligible = ~self._eligible(excluded, allowed)
        driven, spread = self.interest_scores(items, weights)
        if row is None:
            scope = self.known_segment(scopes)
            scores = driven + POPULARITY_TIEBREAK * self._popularity(scope)
            scores[ineligible] = -np.inf
            listed = [item for item in top_n(scores, n, _NONE) if item.score > -np.inf]
        else:
            own = self.batch_scores(np.array([row]), np.array([tier]), policy)[0]
            low, high = float(own.min()), float(own.max())
            scores = driven + (own - low) / (high - low if high > low else 1.0)
            listed = top_n(scores, n, np.flatnonzero(ineligible).astype(np.int32))
        indices = [item.index for item in listed]
        viewed = self._viewed(items, spread, indices)
        fallback = row is None and not any(driven[index] > 0 for index in indices)
        return Ranking(listed, fallback, None if row is not None else scope or "all", None, viewed)

    def interest_scores(
        self, items: NDArray[np.int32], weights: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], Spread]:
        """How much each catalog item matches what the customer looks at (``items`` with
        their ``weights``, from ``recsvc.interactions``): ``CATEGORY_AFFINITY`` times the
        share of the weight on items in its category (its best, if several), plus the sum of its
        weights among their neighbours as a share of the largest such sum. A browser of one
        department sees that department first, in the order of what goes with what they
        viewed. Also the neighbours' spread, for the reasons."""
        arrays = self.arrays
        spread = self.spread(items, weights)
        reached = np.bincount(spread.targets, spread.values, minlength=len(arrays.item_ids))
        largest = float(reached.max()) if len(reached) else 0.0
        scores: NDArray[np.float64] = reached / largest if largest > 0 else reached.astype(float)
        total = float(weights.sum())
        shares: dict[int, float] = {}  # category bit -> share of the weight on items in it
        categories = arrays.item_categories[items].tolist()
        for bits, weight in zip(categories, weights.tolist(), strict=True):
            while bits:
                bit = bits & -bits
                shares[bit] = shares.get(bit, 0.0) + weight / total
                bits ^= bit
        if shares:
            affinity = np.zeros(len(arrays.item_ids))
            for bit, share in shares.items():  # an item's best category counts
                np.maximum(affinity, share * self._in_category(bit), out=affinity)
            scores += CATEGORY_AFFINITY * affinity
        return scores, spread

    def _in_category(self, bit: int) -> NDArray[np.float64]:
        """1.0 for the items in the category of ``bit``, else 0.0; made once per category."""
        found = self._category_members.get(bit)
        if found is None:
            found = ((self.arrays.item_categories & bit) != 0).astype(np.float64)
            self._category_members[bit] = found
        return found

    def _viewed(self, items: NDArray[np.int32], spread: Spread, listed: list[int]) -> list[int]:
        """For each listed item, the interest item that explains it: the one that adds most
        to its neighbour sum, else the latest that shares a category with it; -1: none."""
        sources = strongest_sources(spread, listed, len(self.arrays.item_ids))
        categories = self.arrays.item_categories
        interest_categories = categories[items].tolist()
        found = []
        for item, source in zip(listed, sources, strict=True):
            if source < 0:
                mine = int(categories[item])
                source = next((j for j, b in enumerate(interest_categories) if b & mine), -1)
            found.append(int(items[source]) if source >= 0 else -1)
        return found

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
            why = self._candidate_contributors(row, slice(0, len(listed)))
            return Ranking(ranked(listed, scores), False, None, why)
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
        why = self._candidate_contributors(row, chosen)
        return Ranking(ranked(items[chosen].tolist(), scores), False, None, why)

    def _candidate_contributors(
        self, row: int, chosen: slice | NDArray[np.intp]
    ) -> list[int] | None:
        """The bundle's reasons for the candidates ``chosen``, as owned positions."""
        if self.arrays.candidate_reasons.shape != self.arrays.candidate_items.shape:
            return None
        offsets = self.arrays.candidate_reasons[row, chosen].tolist()
        start = int(self.arrays.owned_indptr[row])
        return [start + offset if offset >= 0 else -1 for offset in offsets]

    def batch_scores(
        self,
        rows: NDArray[np.intp],
        tiers: NDArray[np.intp],
        policy: bool = True,
        out: NDArray[np.float32] | None = None,
    ) -> NDArray[np.float32]:
        """Scores of every item for each of ``rows`` (a customer in each tier of ``tiers``).
        Float32 throughout: at a million customers this is the trainer's largest step.
        ``out``: a C-contiguous float32 array of len(rows) x items to write them into
        (returned); the candidate lists reuse one per thread, where a new block of tens of
        MB costs its page faults every batch."""
        arrays = self.arrays
        user_side, terms = self._user_side(rows, tiers, policy)
        scores: NDArray[np.float32] = np.matmul(user_side, self._item_side.T, out=out)
        for cells, values in zip(terms.cells, terms.values, strict=True):
            np.add.at(scores.reshape(-1), cells, values)  # cells are distinct
        if not policy:
            return scores
        low, high = arrays.price_low[rows], arrays.price_high[rows]
        banded = np.isfinite(low) & (low > 0)
        if self.tiers.price_affinity and banded.any():
            # Distance in log price outside [low, high]; customers without a band get an
            # infinite one, items without a price no penalty.
            with np.errstate(divide="ignore", invalid="ignore"):
                lower = np.where(banded, np.log(low), -np.inf).astype(np.float32)[:, None]
                upper = np.where(banded, np.log(high), np.inf).astype(np.float32)[:, None]
            prices = self._log_prices
            step = max(1, _ROW_CELLS // max(len(prices), 1))
            outside = np.empty((min(step, len(rows)), len(prices)), dtype=np.float32)
            for first in range(0, len(rows), step):  # a few rows at a time, in cache
                part = outside[: min(step, len(rows) - first)]
                np.clip(prices, lower[first : first + step], upper[first : first + step], part)
                np.subtract(prices, part, out=part)
                np.abs(part, out=part)
                part *= self._price_weight
                scores[first : first + step] -= part
        return scores

    def _user_side(
        self, rows: NDArray[np.intp], tiers: NDArray[np.intp], policy: bool
    ) -> tuple[NDArray[np.float32], ItemItemTerms]:
        """The customer side of the score product (``user_side @ self._item_side.T``): the
        standardised factors, the shift (the factor score's and the item-item score's),
        the prior's weight and the tier's premium boost (0 without ``policy``); and the
        item-item terms the product leaves out."""
        users = self.arrays.user_factors[rows].astype(np.float64)
        mean = users @ self._item_mean
        variance = np.einsum("ij,jk,ik->i", users, self._item_covariance, users)
        spread = np.sqrt(np.maximum(variance, 0.0))
        spread[spread == 0] = 1.0  # a zero factor vector: the prior alone ranks
        terms = self._item_item_terms(rows)
        boosts = self._boosts[tiers] if policy else np.zeros(len(rows))
        user_side = np.hstack(
            [
                users / spread[:, None],
                (terms.shift - mean / spread)[:, None],
                np.ones((len(rows), 1)),
                boosts.reshape(-1, 1),
            ]
        ).astype(np.float32)
        return user_side, terms

    def _item_item_terms(self, rows: NDArray[np.intp]) -> ItemItemTerms:
        """Each of ``rows``' item-item scores, standardised over the catalog and weighted by
        ``item_item_weight`` (0 for a customer whose purchases have no neighbours). Only the
        items their purchases' neighbours reach score anything, so the catalog's mean and
        spread follow from those cells: the rest is one shift per row."""
        arrays = self.arrays
        n_items = len(arrays.item_ids)
        terms = ItemItemTerms(np.zeros(len(rows)), [], [])
        if not self.item_item_weight:
            return terms
        for start, chunk, _, counts, positions in self._history_chunks(rows):
            spread = self.spread(arrays.owned_indices[positions], arrays.owned_weight[positions])
            owners = np.repeat(np.arange(len(chunk)), counts)[spread.sources]
            found, order, group = _grouped(owners * n_items + spread.targets)
            summed = np.bincount(group, spread.values[order], minlength=len(found))
            row = found // max(n_items, 1)
            mean = np.bincount(row, summed, minlength=len(chunk)) / n_items
            variance = np.bincount(row, summed * summed, minlength=len(chunk)) / n_items - mean**2
            deviation = np.sqrt(np.maximum(variance, 0.0))
            scale = np.divide(
                self.item_item_weight, deviation, out=np.zeros(len(chunk)), where=deviation > 0
            )
            terms.shift[start : start + len(chunk)] = -mean * scale
            terms.cells.append(found + start * n_items)
            terms.values.append((summed * scale[row]).astype(np.float32))
        return terms

    def _history_chunks(self, rows: NDArray[np.intp]) -> Iterator[HistoryChunk]:
        """``rows`` a few at a time (about ``_SUM_ENTRIES`` neighbours of their purchases,
        as the catalog's mean neighbours per item estimates them; ``_SUM_CELLS`` customers x
        items at most), with their owned items."""
        firsts = self.arrays.owned_indptr[rows]
        counts = self.arrays.owned_indptr[rows + 1] - firsts
        reach = np.cumsum(counts) * self._neighbours_per_item
        total, most_rows = (float(reach[-1]) if len(reach) else 0.0), self._chunk_rows()
        # A batch that fits one chunk (a single customer's request) is not cut: the cuts
        # took one customer's chunks from 10.5 to 15.2 µs.
        starts = [0] if len(rows) else []
        if total > _SUM_ENTRIES or len(rows) > most_rows:
            starts = np.union1d(
                np.searchsorted(reach, np.arange(_SUM_ENTRIES, total, _SUM_ENTRIES)),
                np.arange(0, len(rows), most_rows),
            ).tolist()
        for start, end in zip(starts, [*starts[1:], len(rows)], strict=True):
            yield HistoryChunk(
                start,
                rows[start:end],
                firsts[start:end],
                counts[start:end],
                _ranges(firsts[start:end], counts[start:end]),
            )

    def _chunk_rows(self) -> int:
        """Customers per history chunk: ``_SUM_CELLS`` customers x items at most."""
        return max(1, _SUM_CELLS // max(len(self.arrays.item_ids), 1))

    def spread(self, items: NDArray[np.int32], weights: NDArray[np.float32]) -> Spread:
        """The neighbours of ``items``, each weighted by its item's weight."""
        indptr = self.arrays.neighbour_indptr
        starts = indptr[items]
        counts = indptr[items + 1] - starts
        positions = _ranges(starts, counts)
        sources = np.repeat(np.arange(len(items)), counts)
        values = self.arrays.neighbour_scores[positions] * weights[sources]
        return Spread(self.arrays.neighbour_items[positions], values, sources)

    def contributors(self, row: int, items: list[int], limit: int = REASON_PURCHASES) -> list[int]:
        """For each of ``items``, the position in the owned arrays of the customer's
        purchase that adds most to its item-item score, among their ``limit`` purchases of
        the largest weight (ties: the first position); -1 where none adds anything."""
        arrays = self.arrays
        start, end = int(arrays.owned_indptr[row]), int(arrays.owned_indptr[row + 1])
        positions = start + strongest(arrays.owned_weight[start:end], limit)
        spread = self.spread(arrays.owned_indices[positions], arrays.owned_weight[positions])
        best = strongest_sources(spread, items, len(arrays.item_ids))
        return [int(positions[source]) if source >= 0 else -1 for source in best]

    def _candidate_reasons(
        self, rows: NDArray[np.intp], candidates: NDArray[np.int32]
    ) -> NDArray[np.int32]:
        """``contributors`` of every row's ``candidates`` (-1 padded) at once, as offsets
        into the row's owned items (-1: none), for the bundle."""
        arrays = self.arrays
        n_items, width = len(arrays.item_ids), candidates.shape[1]
        found = np.full(candidates.shape, -1, dtype=np.int32)
        # Each (row, item) cell of a chunk's: its slot in the row's candidates, or -1. As
        # large as the item-item sums' chunks, in the narrowest type that holds the slots
        # (a byte, for lists under 128), and cleared after each: read once per neighbour
        # reached, it costs less than a search among the candidates.
        slot_of = np.full(
            min(len(rows), self._chunk_rows()) * n_items, -1, dtype=np.min_scalar_type(-width)
        )
        for start, chunk, firsts, counts, positions in self._history_chunks(rows):
            owner = np.repeat(np.arange(len(chunk)), counts)
            if (counts > REASON_PURCHASES).any():  # only their strongest purchases count
                kept = np.ones(len(positions), dtype=bool)
                segments = np.cumsum(counts) - counts  # each row's place in ``positions``
                for local in np.flatnonzero(counts > REASON_PURCHASES).tolist():
                    begin, head = int(segments[local]), int(firsts[local])
                    weights = arrays.owned_weight[head : head + int(counts[local])]
                    kept[begin : begin + len(weights)] = False
                    kept[begin + strongest(weights, REASON_PURCHASES)] = True
                positions, owner = positions[kept], owner[kept]
            # Each purchase's neighbours; only those among the row's candidates matter.
            bought = arrays.owned_indices[positions]
            starts = arrays.neighbour_indptr[bought]
            reach = arrays.neighbour_indptr[bought + 1] - starts
            entries = _ranges(starts, reach)
            purchase = np.repeat(np.arange(len(positions)), reach)
            listed = candidates[start : start + len(chunk)]
            at = np.nonzero(listed >= 0)
            cells = at[0] * n_items + listed[at]
            slot_of[cells] = at[1]
            found_slots = slot_of[owner[purchase] * n_items + arrays.neighbour_items[entries]]
            slot_of[cells] = -1
            hit = np.flatnonzero(found_slots >= 0)
            purchase, slots = purchase[hit], found_slots[hit]
            values = (
                arrays.neighbour_scores[entries[hit]] * arrays.owned_weight[positions][purchase]
            )
            useful = values > 0
            purchase, slots, values = purchase[useful], slots[useful], values[useful]
            keys = owner[purchase] * width + slots
            order = np.lexsort((positions[purchase], -values, keys))
            leading = np.ones(len(order), dtype=bool)
            leading[1:] = keys[order][1:] != keys[order][:-1]
            chosen = order[leading]
            offsets = positions[purchase[chosen]] - firsts[owner[purchase[chosen]]]
            found[start : start + len(chunk)].reshape(-1)[keys[chosen]] = offsets
        return found

    def similar(
        self,
        item: int,
        n: int,
        excluded: NDArray[np.int32],
        allowed: NDArray[np.bool_] | None = None,
    ) -> list[RankedItem]:
        """The item's strongest neighbours, best first, outside ``excluded`` and within
        ``allowed``; fewer than ``n`` when it has fewer."""
        start, end = self.arrays.neighbour_indptr[item], self.arrays.neighbour_indptr[item + 1]
        items = self.arrays.neighbour_items[start:end]
        chosen = np.flatnonzero(self._eligible(excluded, allowed)[items])[:n]
        return ranked(
            items[chosen].tolist(), self.arrays.neighbour_scores[start:end][chosen].tolist()
        )

    def complements(
        self,
        items: NDArray[np.int32],
        n: int,
        excluded: NDArray[np.int32],
        allowed: NDArray[np.bool_] | None = None,
        weights: NDArray[np.float32] | None = None,
    ) -> tuple[list[RankedItem], list[int]]:
        """Items bought with ``items`` (a cart; or what a visitor viewed, each with its
        ``weights``): each scores the sum of its weights among their neighbours, times the
        item's weight. Best first, outside ``excluded`` and within ``allowed``, with the
        position in ``items`` of the one that adds most to each."""
        if len(items) == 1:  # its neighbours, already in this order
            found = self.similar(int(items[0]), n, excluded, allowed)
            return found, [0] * len(found)
        if weights is None:
            weights = np.ones(len(items), np.float32)
        spread = self.spread(items, weights)
        # Only the items reached are scored: a cart's few hundred neighbours, not the catalog.
        reached, entry_of = np.unique(spread.targets, return_inverse=True)
        scores = np.bincount(entry_of, spread.values, minlength=len(reached))
        order = np.lexsort((reached, -scores))
        order = order[self._eligible(excluded, allowed)[reached[order]]][:n]
        found = ranked(reached[order].tolist(), scores[order].tolist())
        # Each reached item's strongest cart item: the first entry by (item, -value, source).
        by_entry = np.lexsort((spread.sources, -spread.values, entry_of))
        leading = np.ones(len(by_entry), dtype=bool)
        leading[1:] = entry_of[by_entry][1:] != entry_of[by_entry][:-1]
        strongest_of = spread.sources[by_entry[leading]]  # by reached item
        return found, strongest_of[order].tolist()

    def _eligible(
        self, excluded: NDArray[np.int32], allowed: NDArray[np.bool_] | None
    ) -> NDArray[np.bool_]:
        """A mask over the catalog: within ``allowed``, outside ``excluded``. Cheaper than
        np.isin, which sorts ``excluded`` (a customer's purchases: up to thousands) every
        time."""
        eligible = (
            np.ones(len(self.arrays.item_ids), dtype=bool) if allowed is None else allowed.copy()
        )
        eligible[excluded] = False
        return eligible

    def candidate_lists(
        self,
        k: int,
        batch: int | None = None,
        threads: int = 1,
        done: Callable[[int], None] | None = None,
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.int32]]:
        """Every customer's top ``k`` items under their tier's policy, best first, padded
        with -1 when fewer items are eligible, and each item's reason (``contributors``, as
        an offset into the customer's owned items): the bundle's fast path. Batches of
        ``batch`` customers (default: as many as ``BATCH_SCORES`` scores hold) are ranked on
        ``threads`` threads (numpy releases the GIL); ``done`` is told each batch's size as
        it finishes (progress)."""
        count, n_items = len(self.arrays.customer_ids), len(self.arrays.item_ids)
        batch = batch or min(MAX_BATCH, max(1, BATCH_SCORES // max(n_items, 1)))
        k = min(k, n_items)
        items = np.full((count, k), -1, dtype=np.int32)
        scores = np.full((count, k), -np.inf, dtype=np.float32)
        reasons = np.full((count, k), -1, dtype=np.int32)
        if k == 0:
            return items, scores, reasons

        blocks = threading.local()  # each thread's block of scores, reused batch after batch

        def rank(start: int) -> int:
            rows = np.arange(start, min(start + batch, count))
            if not hasattr(blocks, "scores"):
                blocks.scores = np.empty((min(batch, count), n_items), dtype=np.float32)
            items[rows], scores[rows] = self._top(rows, k, blocks.scores[: len(rows)])
            reasons[rows] = self._candidate_reasons(rows, items[rows])
            return start

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for start in pool.map(rank, range(0, count, batch)):
                if done is not None:
                    done(min(batch, count - start))
        return items, scores, reasons

    def _top(
        self, rows: NDArray[np.intp], k: int, block: NDArray[np.float32]
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """The top ``k`` eligible items of each of ``rows`` and their scores (-1 and -inf
        past the last eligible item), their scores computed in ``block``."""
        tiers = self.tiers.indices(self.arrays.window_spend[rows])
        self.batch_scores(rows, tiers, out=block)
        indptr, excluded = self._excluded_rows(rows)
        block[np.repeat(np.arange(len(rows)), np.diff(indptr)), excluded] = -np.inf
        for tier in np.unique(tiers):
            hidden = self._hidden_items[tier]
            if len(hidden):
                block[np.ix_(np.flatnonzero(tiers == tier), hidden)] = -np.inf
        return _best(block, k)

    def _excluded_rows(self, rows: NDArray[np.intp]) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
        """Each of ``rows``' items never to list (owned, with their editions), as CSR: the
        row's items are ``indices[indptr[i]:indptr[i + 1]]``, ascending."""
        if self._grouped.any():
            held = [self.excluded(int(row), {}) for row in rows]
            counts = np.array([len(items) for items in held], dtype=np.int64)
            indices = np.concatenate(held) if held else _NONE
        else:
            owned_indptr = self.arrays.owned_indptr
            counts = (owned_indptr[rows + 1] - owned_indptr[rows]).astype(np.int64)
            indices = self.arrays.owned_indices[_ranges(owned_indptr[rows], counts)]
        indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        return indptr, indices.astype(np.int32)

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

    def hidden(self, tier: int) -> NDArray[np.int32]:
        """Items reserved for tiers above ``tier``."""
        return self._hidden_items[tier]

    def _popularity(self, scope: str | None) -> NDArray[np.float64]:
        """Each item's sales share among the best sellers of ``scope`` (None: all), scaled
        to 1 for the best; computed once per scope."""
        key = "" if scope is None else scope.lower()
        found = self._popularity_of.get(key)
        if found is None:
            items, scores = (
                (self.arrays.popular_items, self.arrays.popular_scores)
                if scope is None
                else self._segments[key][1:]
            )
            found = np.zeros(len(self.arrays.item_ids))
            largest = float(scores.max()) if len(scores) else 0.0
            if largest > 0:
                found[items] = scores / largest
            self._popularity_of[key] = found
        return found

    def known_segment(self, scopes: tuple[str, ...]) -> str | None:
        """The first of ``scopes`` the bundle has best sellers for, as it spells it."""
        found = next((s for s in scopes if s.lower() in self._segments), None)
        return None if found is None else self.segment_name(found)

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


def _best(block: NDArray[np.float32], k: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Each row's ``k`` largest finite scores and their columns, best first (ties: the lower
    column), -1 and -inf past the last finite score. Only the scores that reach the smallest
    of the maxima of ``k`` column blocks are sorted: that maximum is at most the row's k-th
    largest score, and one pass finds them, where argpartition costs ten."""
    count, n_items = block.shape
    starts = np.arange(0, n_items, max(n_items // max(k, 1), 1))[:k]
    step = max(1, _ROW_CELLS // max(n_items, 1))
    found = []
    for first in range(0, count, step):  # a few rows at a time: read again while cached
        rows = block[first : first + step]
        floor = np.maximum.reduceat(rows, starts, axis=1).min(axis=1)
        found.append(np.flatnonzero(rows >= floor[:, None]) + first * n_items)
    at = np.concatenate(found) if found else np.zeros(0, np.intp)
    owner, column = _by_row_then_score(at, block.reshape(-1)[at], count, n_items)
    scores = block[owner, column]
    counts = np.bincount(owner, minlength=count)
    rank = np.arange(len(at)) - np.repeat(np.cumsum(counts) - counts, counts)
    kept = (rank < k) & np.isfinite(scores)
    top = np.full((count, k), -1, dtype=np.int32)
    top_scores = np.full((count, k), -np.inf, dtype=np.float32)
    top[owner[kept], rank[kept]] = column[kept]
    top_scores[owner[kept], rank[kept]] = scores[kept]
    return top, top_scores


def _by_row_then_score(
    at: NDArray[np.intp], scores: NDArray[np.float32], count: int, n_items: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The rows and columns of the cells ``at`` (ascending flat positions in a block of
    ``count`` rows of ``n_items``; ``scores`` not NaN) by row, then score descending, then
    column: np.lexsort((column, -scores, row))'s order. Sorting one 64-bit key per cell
    (row, score, column) with np.sort is several times faster than that lexsort; the rows
    are keyed as many at a time as fit beside the score's 32 bits and the column's."""
    column_bits = max(n_items - 1, 1).bit_length()
    rows_at_once = 1 << (32 - column_bits)
    row_shift, column_mask = np.uint64(32 + column_bits), np.uint64((1 << column_bits) - 1)
    rows, columns = np.divmod(at, n_items)
    # +0.0 makes -0.0 into 0.0, which the comparison holds equal: the column decides.
    bits = (scores + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    # Bits that grow as the float falls: a negative float's do already (and its sign bit
    # puts it after every positive); a positive one's, flipped.
    descending = np.where(bits >> np.uint64(31) == 1, bits, ~bits & np.uint64(0x7FFFFFFF))
    keys = (descending << np.uint64(column_bits)) | columns.astype(np.uint64)
    found_rows, found_columns = [], []
    for first in range(0, count, rows_at_once):
        begin, end = np.searchsorted(rows, [first, first + rows_at_once])
        local = (rows[begin:end] - first).astype(np.uint64)
        ordered = np.sort(keys[begin:end] | (local << row_shift))
        found_rows.append((ordered >> row_shift).astype(np.int64) + first)
        found_columns.append((ordered & column_mask).astype(np.int64))
    if not found_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_rows), np.concatenate(found_columns)


def _grouped(
    keys: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.intp], NDArray[np.int64]]:
    """``keys`` (each in [0, 2**32), fewer than 2**32 of them) grouped: the distinct ones
    ascending, the positions of all in ascending order of key (equal keys in their order),
    and which distinct key each of those is. What np.unique's inverse gives, to sum by key
    in the same order, from one np.sort of (key, position) pairs in 64 bits: three times
    faster than np.unique's argsort."""
    packed = keys.astype(np.uint64)  # in place from here: each pass is a few MB
    packed <<= np.uint64(32)
    packed |= np.arange(len(keys), dtype=np.uint64)
    packed.sort()
    ordered = (packed >> np.uint64(32)).view(np.int64)
    order = (packed & np.uint64(0xFFFFFFFF)).view(np.intp)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return ordered[first], order, np.cumsum(first) - 1


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


def strongest(weights: NDArray[np.float32], limit: int) -> NDArray[np.int64]:
    """The positions of the ``limit`` largest ``weights`` (all when fewer), ascending."""
    if len(weights) <= limit:
        return np.arange(len(weights), dtype=np.int64)
    return np.sort(np.argpartition(-weights, limit - 1)[:limit]).astype(np.int64)


def strongest_sources(spread: Spread, items: list[int], n_items: int) -> list[int]:
    """For each of ``items`` (each listed once), the source in ``spread`` with the largest
    positive value for it (ties: the first source); -1 where no source adds to it."""
    if not len(spread.sources):
        return [-1] * len(items)
    slot = np.full(n_items, -1, dtype=np.intp)
    slot[items] = np.arange(len(items))
    slots = slot[spread.targets]
    hit = slots >= 0
    # A source reaches a neighbour once: one cell per (source, item).
    values = np.zeros((int(spread.sources[-1]) + 1, len(items)), dtype=np.float32)
    values[spread.sources[hit], slots[hit]] = spread.values[hit]
    best = values.argmax(axis=0)  # the first of equal values
    best[values[best, np.arange(len(items))] <= 0] = -1
    found: list[int] = best.tolist()
    return found


def _ranges(starts: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """The concatenated ranges [start, start + count) (CSR slices gathered in one go)."""
    total = int(counts.sum())
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    positions: NDArray[np.int64] = np.arange(total, dtype=np.int64) + offsets
    return positions
