"""Why each listed item is there (``schemas.Reason``): one rule for every list endpoint.

An item recommended to a customer the model knows gets the first of:

1. ``bought_with``: the customer's purchase (at training) that adds most to the item's
   item-item score, with the source of their latest purchase of it;
2. ``tier_exclusive``: the item is reserved for the customer's tier and above;
3. ``trending``: the item is among those with the largest trend prior
   (``Ranker.trending``);
4. ``popular`` in scope "all": no purchase, tier or trend explains it more narrowly.

The items of a fallback list are ``popular`` in the scope served. An item lifted by what the
customer viewed or put in their cart lately is ``viewed``, naming the item that lifted it
most (before any of the above). Similar items and a cart's complements are ``similar_to`` the
item they are most bought with. Purchases reported since
training do not move the model's scores, so no reason names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recsvc.ranker import RankedItem, Ranking
from recsvc.schemas import Reason

if TYPE_CHECKING:  # the trainer's evaluation imports this module without redis
    from recsvc.registry import ServedModel


TRENDING = Reason("trending")
POPULAR = Reason("popular", scope="all")


def of_ranking(
    model: ServedModel, ranking: Ranking, row: int | None, titles: Sequence[str]
) -> list[Reason]:
    """The reasons of a customer's list: ``personal`` unless it is a fallback, ``viewed``
    where their views or cart lifted the item."""
    if ranking.fallback or row is None:
        found = popular(ranking.scope, len(ranking.items))
    else:
        found = personal(model, row, ranking.items, titles, ranking.contributors)
    if ranking.viewed is None:
        return found
    return [
        reason
        if viewed < 0
        else Reason("viewed", item_id=model.item_ids[viewed], title=titles[viewed])
        for reason, viewed in zip(found, ranking.viewed, strict=True)
    ]


def personal(
    model: ServedModel,
    row: int,
    items: Sequence[RankedItem],
    titles: Sequence[str],
    found: list[int] | None = None,
) -> list[Reason]:
    """The reasons of a known customer's items (``titles``: the catalog's, by index);
    ``found``: their contributors when the bundle's candidate lists already hold them."""
    ranker = model.ranker
    arrays = ranker.arrays
    indices = [item.index for item in items]
    if found is None:
        found = ranker.contributors(row, indices)
    reasons: list[Reason] = []
    for index, position in zip(indices, found, strict=True):
        if position >= 0:
            bought = int(arrays.owned_indices[position])
            source = int(arrays.owned_source[position])
            reasons.append(
                Reason(
                    "bought_with",
                    item_id=model.item_ids[bought],
                    title=titles[bought],
                    source=str(arrays.source_names[source]) if source >= 0 else None,
                )
            )
        elif (minimum := int(arrays.item_min_tier[index])) > 0:
            reasons.append(Reason("tier_exclusive", tier=ranker.tiers.names[minimum]))
        elif ranker.trending[index]:
            reasons.append(TRENDING)
        else:
            reasons.append(POPULAR)
    return reasons


def popular(scope: str | None, count: int) -> list[Reason]:
    """``count`` best sellers of ``scope`` (None: of all)."""
    reason = POPULAR if scope in (None, "all") else Reason("popular", scope=scope)
    return [reason] * count


def similar_to(model: ServedModel, sources: Sequence[int], titles: Sequence[str]) -> list[Reason]:
    """Items bought with the item of each index in ``sources``."""
    return [
        Reason("similar_to", item_id=model.item_ids[source], title=titles[source])
        for source in sources
    ]


def phrase(reason: dict[str, str]) -> str:
    """A reason (as a product card holds it) in a few words, for the HTML of blocks and
    email: "Because you bought …", "Goes with …", "Popular in Germany"."""
    kind = reason["kind"]
    if kind == "bought_with":
        return f"Because you bought {reason['title']}"
    if kind == "similar_to":
        return f"Goes with {reason['title']}"
    if kind == "viewed":
        return f"Because you looked at {reason['title']}"
    if kind == "tier_exclusive":
        return f"For {reason['tier']} members"
    if kind == "trending":
        return "Trending now"
    scope = reason.get("scope", "all")
    segment, _, name = scope.partition(":")
    if segment in ("country", "category"):
        return f"Popular in {name}"
    if segment == "tier":
        return f"Popular with {name} members"
    return "Popular"
