"""Products bought together: the items similar to one item, and the complements of a cart.

Both read the item-item model's neighbours (``Ranker.similar``, ``Ranker.complements``) and
never list the item itself or the cart's items, their editions, what the customer holds
(purchases reported since training included), items reserved for a tier above the
customer's, unavailable items, or items outside the request's filters. Too few neighbours
are topped up with best sellers: of the item's category for similar items, of the
customer's segment (country, then tier, as recommendations do) for a cart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsvc import channels, reasons
from recsvc.catalog import ServedCatalog
from recsvc.ranker import RankedItem
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel
from recsvc.schemas import Reason


@dataclass(frozen=True)
class Listing:
    items: list[RankedItem]
    reasons: list[Reason]
    fallback: bool  # the model had nothing for the item or cart: best sellers only
    scope: str | None  # with fallback: whose best sellers ("category:<name>", "all")


def similar(
    model: ServedModel,
    view: CustomerView,
    catalog: ServedCatalog,
    item_id: str,
    n: int,
    allowed: NDArray[np.bool_] | None,
    tier: int,
) -> Listing:
    """Items bought with ``item_id``: an item of the bundle or one the catalog added since
    training (which the model cannot know: best sellers of its category)."""
    ranker = model.ranker
    index = model.item_index.get(item_id)
    excluded = _excluded(model, view, catalog, tier)
    found: list[RankedItem] = []
    why: list[Reason] = []
    if index is not None:
        excluded = np.concatenate((excluded, ranker.with_groups(np.array([index], np.int32))))
        found = ranker.similar(index, n, excluded, allowed)
        why = reasons.similar_to(model, [index] * len(found), catalog.titles)
        categories = model.item_categories[index]
    else:
        categories = _known_categories(model, catalog.added.get(item_id, []))
    fallback = not found
    scope = f"category:{categories[0]}" if categories else "all"
    if categories and len(found) < n:
        in_category = channels.category_mask(model, categories[0])
        if allowed is not None:
            in_category &= allowed
        found, why = _top_up(model, found, why, n, excluded, in_category, scope)
    found, why = _top_up(model, found, why, n, excluded, allowed, "all")
    return Listing(found, why, fallback, scope if fallback else None)


def complements(
    model: ServedModel,
    view: CustomerView,
    catalog: ServedCatalog,
    cart: list[int],
    n: int,
    allowed: NDArray[np.bool_] | None,
    tier: int,
    scopes: tuple[str, ...],
) -> Listing:
    """Items bought with the cart's items (bundle indices), each with the cart item it goes
    with most."""
    ranker = model.ranker
    items = np.array(cart, dtype=np.int32)
    excluded = np.concatenate((_excluded(model, view, catalog, tier), ranker.with_groups(items)))
    found, sources = ranker.complements(items, n, excluded, allowed)
    why = reasons.similar_to(model, [cart[source] for source in sources], catalog.titles)
    fallback = not found
    scope = ranker.known_segment(scopes) or "all"
    found, why = _top_up(model, found, why, n, excluded, allowed, scope)
    return Listing(found, why, fallback, scope if fallback else None)


def _excluded(
    model: ServedModel, view: CustomerView, catalog: ServedCatalog, tier: int
) -> NDArray[np.int32]:
    """Items never to list (repeats included: only membership matters, and a union sorts)."""
    ranker = model.ranker
    owned = ranker.excluded(view.row, view.deltas)
    return np.concatenate((owned, ranker.hidden(tier), catalog.unavailable)).astype(np.int32)


def _top_up(
    model: ServedModel,
    found: list[RankedItem],
    why: list[Reason],
    n: int,
    excluded: NDArray[np.int32],
    allowed: NDArray[np.bool_] | None,
    scope: str,
) -> tuple[list[RankedItem], list[Reason]]:
    """``found`` followed by best sellers (of ``scope``, a segment, a category or "all"),
    up to ``n``."""
    missing = n - len(found)
    if missing <= 0:
        return found, why
    ranker = model.ranker
    taken = np.array([item.index for item in found], dtype=np.int32)
    exclude = np.concatenate((excluded, taken))
    segment = scope if scope.startswith(("country:", "tier:")) else None
    more = ranker.popular(missing, exclude, segment, allowed)
    return found + more, why + reasons.popular(scope, len(more))


def _known_categories(model: ServedModel, names: list[str]) -> list[str]:
    """Those of ``names`` (any case) the bundle's catalog has, as it spells them."""
    known = channels.categories(model)
    return [name.strip().lower() for name in names if name.strip().lower() in known]
