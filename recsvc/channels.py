"""Website content blocks and email picks: what a slot holds for a customer, and the picks
of one email send. Pure: no web framework; rendering is in ``recsvc.render``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec
import numpy as np
from numpy.typing import NDArray

from recsvc import reasons
from recsvc.catalog import ServedCatalog
from recsvc.errors import UnknownCategory, UnknownSlot
from recsvc.manifest import Channels
from recsvc.ranker import RankedItem, Ranking
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel
from recsvc.schemas import Reason

if TYPE_CHECKING:
    from recsvc.products import Listing

POPULAR_FOR_AFFINITY = 50  # anonymous visitors: the categories of the best sellers
# The query parameter of an email link that names the picks' impression (its email_click's
# impression_id).
IMPRESSION_PARAMETER = "recsvc_impression"


def channels(model: ServedModel) -> Channels:
    return model.bundle.manifest.channels


def categories(model: ServedModel) -> list[str]:
    return model.bundle.categories


def category_mask(model: ServedModel, name: str) -> NDArray[np.bool_]:
    """Items in category ``name`` (any case, spaces around ignored); UnknownCategory lists
    the categories there are."""
    names = categories(model)
    wanted = name.strip().lower()
    if wanted not in names:
        raise UnknownCategory(name, names)
    bit = np.int64(1) << np.int64(names.index(wanted))
    mask: NDArray[np.bool_] = (model.ranker.arrays.item_categories & bit) != 0
    return mask


def absolute(url: str, base_url: str) -> str:
    return url if url.startswith(("http://", "https://")) else base_url + "/" + url.lstrip("/")


def product_card(
    model: ServedModel,
    item: RankedItem,
    reason: Reason,
    link_query: str = "",
    catalog: ServedCatalog | None = None,
) -> dict[str, Any]:
    """An item as channels show it: metadata and absolute links, the product link followed by
    ``link_query`` (e.g. ``?utm_source=...`` for email); prices and titles as ``catalog``
    changed them."""
    settings = channels(model)
    item_id = model.item_ids[item.index]
    price = (catalog or model).prices[item.index]
    return {
        "item_id": item_id,
        "title": (catalog or model).titles[item.index],
        "price": None if price is None else round(price, 2),
        "categories": model.item_categories[item.index],
        "url": settings.base_url + settings.product_path.format(item_id=item_id) + link_query,
        "image": settings.base_url + settings.image_path.format(item_id=item_id),
        "score": item.score,
        "reason": msgspec.to_builtins(reason),
    }


def cards(
    model: ServedModel,
    view: CustomerView,
    ranking: Ranking,
    link_query: str = "",
    catalog: ServedCatalog | None = None,
) -> list[dict[str, Any]]:
    """A customer's ranked items as product cards, each with its reason."""
    titles = (catalog or model).titles
    why = reasons.of_ranking(model, ranking, view.row, titles)
    return [
        product_card(model, item, reason, link_query, catalog)
        for item, reason in zip(ranking.items, why, strict=True)
    ]


def affinity(model: ServedModel, view: CustomerView) -> dict[str, float]:
    """Share of the customer's items in each category (the best sellers' for strangers)."""
    ranker = model.ranker
    if view.row is None and not view.deltas:
        items = ranker.arrays.popular_items[:POPULAR_FOR_AFFINITY]
    else:
        items = ranker.excluded(view.row, view.deltas)
    names = categories(model)
    masks = ranker.arrays.item_categories[items]
    counts = ((masks[:, None] >> np.arange(len(names), dtype=np.int64)) & 1).sum(axis=0)
    total = float(counts.sum()) or 1.0
    return {
        name: count / total for name, count in zip(names, counts.tolist(), strict=True) if count
    }


def is_perk(item: dict[str, Any]) -> bool:
    """A tier-targeted item without tags: meant for everyone in its tiers, whatever they buy.
    Ranked by category affinity it would score 0 and never be shown."""
    return bool(item["tiers"]) and not item["tags"]


def is_greeting(item: dict[str, Any]) -> bool:
    """An item without tags or tiers (a welcome banner): meant for visitors the model has no
    history for."""
    return not item["tiers"] and not item["tags"]


def choose_content(
    model: ServedModel, view: CustomerView, tier_name: str, count: int, today: date
) -> list[dict[str, Any]]:
    """The ``count`` content items valid today and open to this tier. The first place is
    kept for the most targeted untagged item the customer may see: a perk of their tier
    (the one for the fewest tiers), or else, for a visitor without history, a greeting.
    The other places go by the customer's category affinity. Ties keep the catalog's order."""
    if count <= 0:
        return []
    weights = affinity(model, view)
    base_url = channels(model).base_url
    eligible: list[tuple[int, dict[str, Any]]] = []
    for position, item in enumerate(model.bundle.content):
        if item["tiers"] and tier_name not in item["tiers"]:
            continue
        if item.get("valid_from") and date.fromisoformat(item["valid_from"]) > today:
            continue
        if item.get("valid_to") and date.fromisoformat(item["valid_to"]) < today:
            continue
        eligible.append((position, item))
    stranger = view.row is None
    # Perks before greetings; a perk for fewer tiers is the more targeted.
    reserved = sorted(
        (not is_perk(item), len(item["tiers"]), position)
        for position, item in eligible
        if is_perk(item) or (stranger and is_greeting(item))
    )
    first = [position for _, _, position in reserved[:1]]
    ranked = sorted(
        (-sum(weights.get(tag, 0.0) for tag in item["tags"]), position)
        for position, item in eligible
        if position not in first
    )
    chosen = first + [position for _, position in ranked]
    return [content_card(model.bundle.content[position], base_url) for position in chosen[:count]]


def content_card(item: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A content item as channels show it, with absolute links."""
    return {
        "id": item["id"],
        "kind": item["kind"],
        "title": item["title"],
        "body": item["body"],
        "image": None if not item.get("image") else absolute(item["image"], base_url),
        "url": absolute(item["url"], base_url),
    }


def block(
    model: ServedModel,
    view: CustomerView,
    key: str | None,
    slot: str,
    today: date,
    category: NDArray[np.bool_] | None = None,
    catalog: ServedCatalog | None = None,
    cart: Callable[[int], Listing] | None = None,
) -> dict[str, Any]:
    """A website slot: content items and product cards for the customer; with ``cart``
    (the slot's product count -> the cart's complements), the cart's."""
    slots = channels(model).slots
    if slot not in slots:
        raise UnknownSlot(slot, list(slots))
    tiers = model.ranker.tiers
    tier = tiers.describe(view.window_spend)
    count = slots[slot].products
    if cart is None:
        ranking = model.ranker.recommend_row(
            view.row,
            count,
            view.deltas,
            tiers.index(view.window_spend),
            allowed=category,
            unavailable=None if catalog is None else catalog.unavailable,
            interest=view.interest,
        )
        fallback, products = ranking.fallback, cards(model, view, ranking, catalog=catalog)
    else:
        listing = cart(count)
        fallback = listing.fallback
        products = [
            product_card(model, item, reason, catalog=catalog)
            for item, reason in zip(listing.items, listing.reasons, strict=True)
        ]
    return {
        "slot": slot,
        "customer_id": view.customer_id or key,
        "model_version": model.version,
        "fallback": fallback,
        "degraded": view.degraded,
        "tier": tier,
        "content": choose_content(model, view, tier["name"], slots[slot].content, today),
        "products": products,
    }


PUBLIC_BLOCK_FIELDS = ("slot", "model_version", "content", "products", "impression_id", "arm")


def public_block(block: dict[str, Any], personalised: bool) -> dict[str, Any]:
    """A block as a publishable key may see it: what the page shows, and whether a visitor
    token made it the named customer's (``personalised``). No customer id, tier figures,
    fallback or degraded flag: the same keys whoever is named, so an answer tells nothing
    beyond the content shown (its impression id is random; its arm is null unless a visitor
    token names the customer)."""
    return {
        **{name: block[name] for name in PUBLIC_BLOCK_FIELDS},
        "personalised": personalised,
    }


def email_picks(
    model: ServedModel,
    view: CustomerView,
    key: str,
    send_id: str,
    n: int,
    impression_id: str,
    allowed: NDArray[np.bool_] | None = None,
    catalog: ServedCatalog | None = None,
) -> dict[str, Any]:
    """Fresh picks for one send (the caller snapshots them: see ``snapshot_key``), among the
    ``allowed`` items (None: all). Each item's link carries ``impression_id`` (as
    IMPRESSION_PARAMETER; "" for none: a preview), for the shop to send back with the
    ``email_click`` it reports."""
    settings = channels(model)
    tiers = model.ranker.tiers
    ranking = model.ranker.recommend_row(
        view.row,
        n,
        view.deltas,
        tiers.index(view.window_spend),
        allowed=allowed,
        unavailable=None if catalog is None else catalog.unavailable,
        interest=view.interest,
    )
    query = {name: value.format(send_id=send_id) for name, value in settings.utm.items()}
    if impression_id:
        query[IMPRESSION_PARAMETER] = impression_id
    link_query = "?" + urlencode(query) if query else ""
    return {
        "send_id": send_id,
        "impression_id": impression_id,
        "customer_id": view.customer_id or key,
        "model_version": model.version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fallback": ranking.fallback,
        "tier": tiers.describe(view.window_spend),
        "currency_symbol": settings.currency_symbol,
        "items": cards(model, view, ranking, link_query, catalog),
    }


def snapshot_key(send_id: str, n: int, filters: str = "") -> str:
    """One snapshot per send, list length and filter (``ItemFilter.key``; send ids are free
    text). Without a filter the key is the one snapshots were kept under before filters."""
    text = f"{send_id}\0{n}" + (f"\0{filters}" if filters else "")
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
