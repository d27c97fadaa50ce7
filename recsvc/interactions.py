"""What a customer's interactions since training say: the items they viewed lately, what is
in their cart, and the interest both give the ranker (``Ranker.recommend_row``'s
``interest``). Pure functions of the events the store holds; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from recsvc.defaults import RECENTLY_VIEWED_MAX
from recsvc.store import StoredEvent

# The last distinct items viewed or carted that count towards interest: a visit's trail, not
# a month of browsing.
INTEREST_ITEMS = 20
VIEW_WEIGHT = 1.0
CART_WEIGHT = 3.0  # an item put in the cart says more than a look
RECENCY_DECAY = 0.9  # each older item counts this much of the one after it
INTEREST_HALF_LIFE_HOURS = 24.0
INTEREST_FLOOR = 0.1  # of a fresh view's weight: a view about three days old


@dataclass(frozen=True, slots=True)
class Viewed:
    item_id: str
    viewed_at: str  # ISO 8601, UTC: the latest view
    views: int


def recently_viewed(
    events: Iterable[StoredEvent], limit: int = RECENTLY_VIEWED_MAX
) -> list[Viewed]:
    """Items viewed, latest view first, each once."""
    latest: dict[str, tuple[float, str]] = {}
    counts: dict[str, int] = {}
    for event in events:
        if event.kind != "view":
            continue
        counts[event.item_id] = counts.get(event.item_id, 0) + 1
        moment = (event.received_at, event.timestamp)
        if event.item_id not in latest or moment >= latest[event.item_id]:
            latest[event.item_id] = moment
    order = sorted(latest, key=lambda item: latest[item], reverse=True)[:limit]
    return [Viewed(item, latest[item][1], counts[item]) for item in order]


def cart(events: Iterable[StoredEvent]) -> dict[str, float]:
    """Units of each item in the cart: added, less removed (a removal without a quantity
    empties the line), emptied by a purchase of the item."""
    lines: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e.received_at):
        if event.kind == "cart_add":
            lines[event.item_id] = lines.get(event.item_id, 0.0) + event.quantity
        elif event.kind == "cart_remove":
            left = lines.get(event.item_id, 0.0) - (event.quantity or float("inf"))
            lines[event.item_id] = max(left, 0.0)
        elif event.kind == "purchase":
            lines.pop(event.item_id, None)
    return {item: units for item, units in lines.items() if units > 0}


def interest(
    events: list[StoredEvent], item_index: Mapping[str, int], now: float
) -> dict[int, float]:
    """Weights by bundle item index of the last ``INTEREST_ITEMS`` distinct items viewed or
    carted (``now``: seconds since the epoch). Each counts ``VIEW_WEIGHT`` (``CART_WEIGHT``
    while in the cart), ``RECENCY_DECAY`` less for each later item, and halves every
    ``INTEREST_HALF_LIFE_HOURS`` since it was viewed; below ``INTEREST_FLOOR`` it no longer
    counts, so interest is the visit and the days around it. Empty without such events (most
    requests)."""
    if not any(event.kind in ("view", "cart_add") for event in events):
        return {}
    in_cart = cart(events)
    weights: dict[int, float] = {}
    order = sorted(
        (e for e in events if e.kind in ("view", "cart_add")),
        key=lambda e: e.received_at,
        reverse=True,
    )
    for event in order:
        index = item_index.get(event.item_id)
        if index is None or index in weights:
            continue
        kind_weight = CART_WEIGHT if event.item_id in in_cart else VIEW_WEIGHT
        age_hours = max(now - event.received_at, 0.0) / 3600.0
        fresh = 0.5 ** (age_hours / INTEREST_HALF_LIFE_HOURS)
        if CART_WEIGHT * fresh < INTEREST_FLOOR:
            break  # every earlier one weighs less still
        weight = kind_weight * RECENCY_DECAY ** len(weights) * fresh
        if weight < INTEREST_FLOOR:
            continue
        weights[index] = weight
        if len(weights) >= INTEREST_ITEMS:
            break
    return weights
