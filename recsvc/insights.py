"""What the dashboard shows beyond the API's answers: what a customer holds in each source,
their spend over time as far as the bundle can tell, how many aliases it links to them; each
tier's customers and spend, and how customers moved between tiers since the previous bundle.

Part of the core (it reads the model's arrays); no web framework. Figures over all customers
are computed once per bundle (or pair of bundles), never per request.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from recsvc.bundle import OWNED_QUANTITY, bundle_versions, load_arrays
from recsvc.errors import BundleError
from recsvc.policy import TierLevel, tier_indices
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel

log = logging.getLogger(__name__)

UNKNOWN_SOURCE = "unknown"  # a purchase whose source the bundle does not record


@dataclass(frozen=True, slots=True)
class Holding:
    """An item a customer holds now (net quantity of at least ``OWNED_QUANTITY``)."""

    item_id: str
    title: str | None  # None: an item the catalog does not know
    quantity: float
    source: str  # of their latest purchase of it
    since_training: bool  # bought through POST /v1/events after the bundle was trained


def holdings(model: ServedModel, view: CustomerView, titles: list[str]) -> dict[str, list[Holding]]:
    """What the customer holds, by the source of their latest purchase of each item (sources
    in name order, items by title): the bundle's owned items brought up to date by the
    purchases and returns reported since training."""
    arrays = model.ranker.arrays
    held: dict[str, tuple[float, str, bool]] = {}
    if view.row is not None:
        start, end = int(arrays.owned_indptr[view.row]), int(arrays.owned_indptr[view.row + 1])
        names = arrays.source_names.tolist()
        for item, quantity, source in zip(
            arrays.owned_indices[start:end].tolist(),
            arrays.owned_quantity[start:end].tolist(),
            arrays.owned_source[start:end].tolist(),
            strict=True,
        ):
            held[model.item_ids[item]] = (
                float(quantity),
                str(names[source]) if source >= 0 else UNKNOWN_SOURCE,
                False,
            )
    for event in sorted(view.events, key=lambda e: e.timestamp):
        quantity, source, since = held.get(event.item_id, (0.0, event.source, True))
        if event.quantity > 0:
            source, since = event.source, True
        held[event.item_id] = (quantity + event.quantity, source, since)
    grouped: dict[str, list[Holding]] = {}
    for item_id, (quantity, source, since) in held.items():
        if quantity < OWNED_QUANTITY:
            continue
        index = model.item_index.get(item_id)
        title = titles[index] if index is not None else None
        grouped.setdefault(source, []).append(Holding(item_id, title, quantity, source, since))
    return {
        source: sorted(items, key=lambda h: (h.title or "", h.item_id))
        for source, items in sorted(grouped.items())
    }


class SpendPoint(NamedTuple):
    at: float  # seconds since the epoch
    spend: float  # lifetime spend up to then
    label: str


def spend_history(model: ServedModel, view: CustomerView) -> list[SpendPoint]:
    """The customer's lifetime spend over time, as far as it is known: the bundle keeps each
    customer's totals, not their orders, so it gives three points (nothing before the first
    purchase, the spend before the tier window began, the total at training); every purchase
    and return reported since adds one."""
    arrays = model.ranker.arrays
    points: list[SpendPoint] = []
    spend = 0.0
    row = view.row
    if row is not None:
        first, last = int(arrays.first_purchase[row]), int(arrays.last_purchase[row])
        spend = float(arrays.customer_spend[row])
        before_window = spend - float(arrays.window_spend[row])
        if first:
            points.append(SpendPoint(float(first), 0.0, "first purchase"))
        if first and first < model.window_start < last and before_window > 0:
            points.append(
                SpendPoint(model.window_start, round(before_window, 2), "tier window starts")
            )
        if last:
            points.append(SpendPoint(float(last), round(spend, 2), "last purchase at training"))
    for event in sorted(view.events, key=lambda e: e.timestamp):
        spend = max(spend + event.quantity * event.price, 0.0)
        moment = datetime.fromisoformat(event.timestamp).timestamp()
        label = f"{event.kind} reported since training ({event.source})"
        points.append(SpendPoint(moment, round(spend, 2), label))
    return points


def alias_count(model: ServedModel, row: int | None) -> int:
    """How many aliases (ids, addresses, numbers) the bundle links to the customer; the
    bundle keeps only their keyed digests, so it cannot say which."""
    return 0 if row is None else len(model.ranker.aliases.of_row(row))


@dataclass(frozen=True, slots=True)
class TierRow:
    name: str
    min_spend: float
    perks: tuple[str, ...]
    customers: int
    window_spend: float  # the tier's customers' spend in the tier window, summed


class Member(NamedTuple):
    customer_id: str
    window_spend: float
    spend: float  # lifetime
    orders: int


class TierFigures:
    """Each tier's customers and spend as trained (the bundle's window spend; purchases
    reported since move single customers, not these figures), and the customers of a tier
    by spend, a page at a time. Built once per bundle."""

    def __init__(self, model: ServedModel) -> None:
        arrays = model.ranker.arrays
        levels = model.ranker.tiers.levels
        self.version = model.version
        self._arrays = arrays
        self._tiers = tier_indices(levels, arrays.window_spend)
        counts = np.bincount(self._tiers, minlength=len(levels))
        sums = np.bincount(self._tiers, weights=arrays.window_spend, minlength=len(levels))
        self.rows = [
            TierRow(level.name, level.min_spend, level.perks, int(count), float(total))
            for level, count, total in zip(levels, counts.tolist(), sums.tolist(), strict=True)
        ]
        self.customers = len(arrays.customer_ids)

    @functools.cached_property
    def _order(self) -> NDArray[np.intp]:
        """Every customer by window spend, highest first: each tier is one run of it."""
        order: NDArray[np.intp] = np.argsort(-self._arrays.window_spend, kind="stable")
        return order

    def members(self, tier: int, offset: int, limit: int) -> list[Member]:
        """Customers of tier ``tier`` (an index), by window spend, highest first."""
        start = sum(row.customers for row in self.rows[tier + 1 :]) + offset
        end = min(start + limit, start - offset + self.rows[tier].customers)
        arrays = self._arrays
        rows = self._order[start:end]
        return [
            Member(str(customer), round(window, 2), round(spend, 2), int(orders))
            for customer, window, spend, orders in zip(
                arrays.customer_ids[rows].tolist(),
                arrays.window_spend[rows].tolist(),
                arrays.customer_spend[rows].tolist(),
                arrays.customer_orders[rows].tolist(),
                strict=True,
            )
        ]


@dataclass(frozen=True)
class TierMovements:
    """How the customers of the previous bundle moved between tiers by the current one, each
    bundle's tiers as its own policy drew them (at its own data's end)."""

    previous: str  # bundle version
    current: str
    previous_as_of: str | None
    current_as_of: str | None
    previous_tiers: tuple[str, ...]
    current_tiers: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # [previous tier][current tier]: customers in both
    new: tuple[int, ...]  # per current tier: customers the previous bundle did not have
    gone: tuple[int, ...]  # per previous tier: customers the current bundle does not have

    def moved(self, direction: Literal["up", "down"]) -> int:
        """Customers in a higher (``up``) or lower tier than before, by tier position."""
        return sum(
            count
            for before, row in enumerate(self.counts)
            for after, count in enumerate(row)
            if (after > before if direction == "up" else after < before)
        )


def tier_movements(
    previous: str,
    previous_as_of: str | None,
    previous_levels: tuple[TierLevel, ...],
    previous_ids: NDArray[np.str_],
    previous_spend: NDArray[np.float64],
    model: ServedModel,
) -> TierMovements:
    arrays = model.ranker.arrays
    current_levels = model.ranker.tiers.levels
    before = tier_indices(previous_levels, previous_spend)
    after = tier_indices(current_levels, arrays.window_spend)
    _, in_previous, in_current = np.intersect1d(
        previous_ids, arrays.customer_ids, assume_unique=True, return_indices=True
    )
    width = len(current_levels)
    pairs = before[in_previous] * width + after[in_current]
    matrix = np.bincount(pairs, minlength=len(previous_levels) * width).reshape(-1, width)
    kept_current = np.zeros(len(arrays.customer_ids), dtype=bool)
    kept_current[in_current] = True
    kept_previous = np.zeros(len(previous_ids), dtype=bool)
    kept_previous[in_previous] = True
    new = np.bincount(after[~kept_current], minlength=width)
    gone = np.bincount(before[~kept_previous], minlength=len(previous_levels))
    return TierMovements(
        previous=previous,
        current=model.version,
        previous_as_of=previous_as_of,
        current_as_of=model.bundle.manifest.data_as_of,
        previous_tiers=tuple(level.name for level in previous_levels),
        current_tiers=tuple(level.name for level in current_levels),
        counts=tuple(tuple(int(c) for c in row) for row in matrix.tolist()),
        new=tuple(int(c) for c in new.tolist()),
        gone=tuple(int(c) for c in gone.tolist()),
    )


def previous_version(models_dir: Path, current: str) -> str | None:
    """The bundle published before ``current`` in ``models_dir`` (None: none is left)."""
    versions = bundle_versions(models_dir)
    if current not in versions:
        return None
    earlier = versions[versions.index(current) + 1 :]
    return earlier[0] if earlier else None


class MovementState(NamedTuple):
    status: Literal["none", "pending", "ready", "failed"]
    movements: TierMovements | None = None
    detail: str = ""  # why there are none, or what failed


class Movements:
    """Tier movements per pair of bundles, computed once per pair on a background thread
    (comparing a million customers' ids takes seconds, more than a page may)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], MovementState] = {}
        self._threads: list[threading.Thread] = []

    def of(self, model: ServedModel, models_dir: Path) -> MovementState:
        """The movements from the previous bundle to ``model``'s; a pending state starts
        computing them."""
        previous = previous_version(models_dir, model.version)
        if previous is None:
            return MovementState("none", detail="no earlier bundle in the models directory")
        pair = (previous, model.version)
        with self._lock:
            state = self._states.get(pair)
            if state is not None:
                return state
            state = self._states[pair] = MovementState("pending")
        thread = threading.Thread(
            target=self._compute,
            args=(pair, models_dir / previous, model),
            name="recsvc-tier-movements",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()
        return state

    def wait(self, timeout: float) -> None:
        """Until every computation started so far is done (for tests and benchmarks)."""
        for thread in list(self._threads):
            thread.join(timeout)

    def _compute(self, pair: tuple[str, str], path: Path, model: ServedModel) -> None:
        try:
            manifest, arrays = load_arrays(path, ("customer_ids", "window_spend"))
            found = MovementState(
                "ready",
                tier_movements(
                    pair[0],
                    manifest.data_as_of,
                    manifest.tiers.levels,
                    arrays["customer_ids"],
                    arrays["window_spend"],
                    model,
                ),
            )
        except (BundleError, ValueError) as error:
            log.warning("tier movements from bundle %s: %s", pair[0], error)
            found = MovementState("failed", detail=str(error))
        with self._lock:
            self._states[pair] = found
