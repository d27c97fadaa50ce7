"""Similar items, cart cross-sell and reasons: the model's neighbours as the known answer, never
the item itself, its editions, an owned, hidden or unavailable item; bad input a clear 400/404."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.config import ServiceConfig
from recsvc.ranker import REASON_PURCHASES
from recsvc.reasons import phrase
from recsvc.registry import ServedModel
from recsvc.schemas import ProductCard


def served(app: Flask) -> ServedModel:
    model = service_of(app).registry.model
    assert model is not None
    return model


def neighbours(model: ServedModel, index: int) -> list[str]:
    arrays = model.ranker.arrays
    start, end = arrays.neighbour_indptr[index], arrays.neighbour_indptr[index + 1]
    return [model.item_ids[i] for i in arrays.neighbour_items[start:end].tolist()]


def busy_item(model: ServedModel) -> int:
    """An item with many neighbours."""
    counts = np.diff(model.ranker.arrays.neighbour_indptr)
    return int(np.argmax(counts))


def ids(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_similar_items_are_the_items_neighbours(sample_app: Flask, client: FlaskClient) -> None:
    model = served(sample_app)
    item = busy_item(model)
    item_id = model.item_ids[item]
    body = client.get(f"/v1/items/{item_id}/similar?n=5").get_json()
    assert body["fallback"] is False and body["fallback_scope"] is None
    hidden = set(np.flatnonzero(model.ranker.arrays.item_min_tier > 0).tolist())
    expected = [i for i in neighbours(model, item) if model.item_index[i] not in hidden][:5]
    assert ids(body) == expected and item_id not in ids(body)
    because = {"kind": "similar_to", "item_id": item_id, "title": model.titles[item]}
    assert all(listed["reason"] == because for listed in body["items"])
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_similar_items_leave_out_what_the_customer_owns(
    sample_app: Flask, client: FlaskClient
) -> None:
    model = served(sample_app)
    ranker = model.ranker
    # A customer who owns one of the busiest item's neighbours.
    item = busy_item(model)
    close = [model.item_index[i] for i in neighbours(model, item)[:10]]
    row = next(
        r for r in range(len(ranker.arrays.customer_ids)) if set(close) & set(ranker.owned(r))
    )
    customer = str(ranker.arrays.customer_ids[row])
    anyone = ids(client.get(f"/v1/items/{model.item_ids[item]}/similar?n=20").get_json())
    theirs = client.get(f"/v1/items/{model.item_ids[item]}/similar?n=20&customer={customer}")
    owned = {model.item_ids[i] for i in ranker.excluded(row, {}).tolist()}
    assert owned & set(anyone)
    assert not owned & set(ids(theirs.get_json()))
    assert len(ids(theirs.get_json())) == 20  # topped up with best sellers


def test_an_unknown_item_is_404_and_bad_parameters_400(client: FlaskClient) -> None:
    missing = client.get("/v1/items/NO-SUCH-ITEM/similar")
    assert missing.status_code == 404
    assert missing.get_json()["detail"] == "item 'NO-SUCH-ITEM' is not in the catalog"
    for query in ("n=0", "n=101", "min_price=5&max_price=1", "min_price=-1", "min_price=nan"):
        response = client.get(f"/v1/items/85123A/similar?{query}")
        assert response.status_code == 400, query
        assert response.mimetype == "application/problem+json"


def test_cart_complements_score_the_sum_of_neighbours(
    sample_app: Flask, client: FlaskClient
) -> None:
    model = served(sample_app)
    arrays = model.ranker.arrays
    counts = np.diff(arrays.neighbour_indptr)
    cart = [int(i) for i in np.argsort(-counts, kind="stable")[:3]]
    cart_ids = [model.item_ids[i] for i in cart]
    body = client.get(f"/v1/cart/recommendations?items={','.join(cart_ids)}&n=6").get_json()
    assert body["fallback"] is False and body["unknown_items"] == []
    expected: dict[int, float] = {}
    for source in cart:
        start, end = arrays.neighbour_indptr[source], arrays.neighbour_indptr[source + 1]
        for target, weight in zip(
            arrays.neighbour_items[start:end].tolist(),
            arrays.neighbour_scores[start:end].tolist(),
            strict=True,
        ):
            expected[target] = expected.get(target, 0.0) + weight
    excluded = set(model.ranker.with_groups(np.array(cart, np.int32)).tolist())
    excluded |= set(np.flatnonzero(arrays.item_min_tier > 0).tolist())
    best = sorted((i for i in expected if i not in excluded), key=lambda i: (-expected[i], i))
    assert ids(body) == [model.item_ids[i] for i in best[:6]]
    for item in body["items"]:
        assert item["reason"]["kind"] == "similar_to"
        assert item["reason"]["item_id"] in cart_ids
        assert item["item_id"] in neighbours(model, model.item_index[item["reason"]["item_id"]])


def test_cart_lists_unknown_items_and_refuses_bad_lists(client: FlaskClient) -> None:
    body = client.get("/v1/cart/recommendations?items=NOPE,85123A").get_json()
    assert body["unknown_items"] == ["NOPE"] and len(body["items"]) == 6
    only_unknown = client.get("/v1/cart/recommendations?items=NOPE").get_json()
    assert only_unknown["fallback"] is True and only_unknown["fallback_scope"] == "all"
    too_many = ",".join(f"I{i}" for i in range(51))
    for query, reason in (
        ("", "required"),
        ("items=", "required"),
        ("items=A,,B", "item id 2 is empty"),
        ("items=A,B,A", "item id 3 repeats an earlier one"),
        (f"items={too_many}", "at most 50 item ids, got 51"),
    ):
        response = client.get(f"/v1/cart/recommendations?{query}")
        assert response.status_code == 400, query
        assert reason in response.get_json()["detail"], query


def test_every_recommendation_says_why(sample_app: Flask, client: FlaskClient) -> None:
    model = served(sample_app)
    ranker = model.ranker
    arrays = ranker.arrays
    sources = {str(name) for name in arrays.source_names.tolist()}
    bought_with = 0
    for row in range(0, len(arrays.customer_ids), 7):
        customer = str(arrays.customer_ids[row])
        body = client.get(f"/v1/customers/{customer}/recommendations?n=10").get_json()
        owned = {model.item_ids[i] for i in ranker.owned(row).tolist()}
        for item in body["items"]:
            reason = item["reason"]
            assert reason["kind"] in {"bought_with", "tier_exclusive", "trending", "popular"}
            if reason["kind"] == "bought_with":
                bought_with += 1
                assert reason["item_id"] in owned and reason["source"] in sources
                # The purchase named lists the item among its neighbours.
                assert item["item_id"] in neighbours(model, model.item_index[reason["item_id"]])
    assert bought_with > 0
    stranger = client.get("/v1/customers/nobody-at-all/recommendations?n=3").get_json()
    assert [item["reason"] for item in stranger["items"]] == [
        {"kind": "popular", "scope": "all"}
    ] * 3


def test_the_reason_is_the_purchase_that_adds_most(sample_app: Flask) -> None:
    """Known answer: over the customer's purchases, weight times the neighbour's weight."""
    ranker = served(sample_app).ranker
    arrays = ranker.arrays
    row = int(np.argmax(np.diff(arrays.owned_indptr)))  # the longest history
    start, end = arrays.owned_indptr[row], arrays.owned_indptr[row + 1]
    dense = np.zeros((end - start, len(arrays.item_ids)))
    for offset, position in enumerate(range(start, end)):
        item = arrays.owned_indices[position]
        lo, hi = arrays.neighbour_indptr[item], arrays.neighbour_indptr[item + 1]
        dense[offset, arrays.neighbour_items[lo:hi]] = (
            arrays.neighbour_scores[lo:hi] * arrays.owned_weight[position]
        )
    items = [int(i) for i in np.argsort(-dense.max(axis=0))[:10]]
    expected = [int(start + np.argmax(dense[:, i])) for i in items]
    assert ranker.contributors(row, items, REASON_PURCHASES) == expected
    # Limited to the strongest purchases: a purchase left out is never named.
    strongest = set((start + np.argsort(-arrays.owned_weight[start:end])[:3]).tolist())
    assert set(ranker.contributors(row, items, 3)) <= strongest | {-1}


def test_blocks_take_a_cart(sample_app: Flask, client: FlaskClient) -> None:
    model = served(sample_app)
    item_id = model.item_ids[busy_item(model)]
    body = client.get(f"/v1/blocks/cart_cross_sell?items={item_id}").get_json()
    cart = client.get(f"/v1/cart/recommendations?items={item_id}&n=6").get_json()
    assert [p["item_id"] for p in body["products"]] == ids(cart)
    assert all(p["reason"]["kind"] == "similar_to" for p in body["products"])
    html = client.get(f"/v1/blocks/cart_cross_sell?items={item_id}&format=html")
    assert html.status_code == 200
    assert client.get("/v1/blocks/cart_cross_sell?items=A,A").status_code == 400


def test_unavailable_and_new_items(sample_models: Path, tmp_path: Path) -> None:
    """An item marked unavailable leaves every list at once; one added through the catalog
    since training gets best sellers of its category, flagged as a fallback."""
    app = create_app(ServiceConfig(models_dir=sample_models, events_dir=tmp_path, auth=False))
    client = app.test_client()
    model = served(app)
    item_id = model.item_ids[busy_item(model)]
    first = ids(client.get(f"/v1/items/{item_id}/similar?n=5").get_json())[0]
    assert client.put(f"/v1/items/{first}", json={"available": False}).status_code == 200
    assert first not in ids(client.get(f"/v1/items/{item_id}/similar?n=5").get_json())
    cart = client.get(f"/v1/cart/recommendations?items={item_id}&n=20").get_json()
    assert first not in ids(cart)
    category = model.bundle.categories[0]
    assert client.put("/v1/items/BRAND-NEW", json={"categories": [category]}).status_code == 200
    body = client.get("/v1/items/BRAND-NEW/similar?n=4").get_json()
    assert body["fallback"] is True and body["fallback_scope"] == f"category:{category}"
    assert all(category in p["categories"] for p in (_card(model, i) for i in ids(body)))
    assert all(item["reason"]["scope"] == f"category:{category}" for item in body["items"])


def _card(model: ServedModel, item_id: str) -> dict[str, Any]:
    return {"categories": model.item_categories[model.item_index[item_id]]}


@pytest.mark.parametrize("path", ["/v1/items/85123A/similar", "/v1/cart/recommendations"])
def test_the_new_endpoints_are_documented(client: FlaskClient, path: str) -> None:
    document = client.get("/openapi.json").get_json()
    template = path.replace("85123A", "{item_id}")
    assert template in document["paths"]


def test_blocks_and_emails_say_why_in_words(sample_app: Flask, client: FlaskClient) -> None:
    model = served(sample_app)
    arrays = model.ranker.arrays
    row = int(np.argmax(np.diff(arrays.owned_indptr)))
    customer = str(arrays.customer_ids[row])
    picks = client.get(f"/v1/customers/{customer}/email-picks?send_id=why-1&n=4").get_json()
    html = client.get(f"/v1/customers/{customer}/email-picks?send_id=why-1&n=4&format=html")
    for item in picks["items"]:
        assert phrase(item["reason"]) in html.get_data(as_text=True)
    bought = [item for item in picks["items"] if item["reason"]["kind"] == "bought_with"]
    assert bought and "Because you bought" in html.get_data(as_text=True)
    block = client.get("/v1/blocks/home_hero?format=html").get_data(as_text=True)
    assert 'class="recsvc-reason">Popular</span>' in block


def test_picks_kept_before_reasons_still_answer() -> None:
    """A send's picks are kept for 30 days: those kept by a version without reasons decode,
    with no reason."""
    card = {
        "item_id": "A",
        "title": "A",
        "price": None,
        "categories": [],
        "url": "https://x.example/a",
        "image": "https://x.example/a.jpg",
        "score": 1.0,
    }
    assert msgspec.convert(card, ProductCard).reason is None
    assert phrase({"kind": "popular", "scope": "country:Germany"}) == "Popular in Germany"
    assert phrase({"kind": "tier_exclusive", "tier": "gold"}) == "For gold members"


def test_the_bundle_holds_the_reasons_the_service_would_find(sample_app: Flask) -> None:
    """The candidate lists carry their reasons, computed in one go at training: each equals
    what ``Ranker.contributors`` finds for that customer and item when asked."""
    ranker = served(sample_app).ranker
    arrays = ranker.arrays
    assert arrays.candidate_reasons.shape == arrays.candidate_items.shape
    named = 0
    for row in range(len(arrays.customer_ids)):
        listed = arrays.candidate_items[row]
        items = listed[listed >= 0].tolist()
        start = int(arrays.owned_indptr[row])
        kept = [
            start + offset if offset >= 0 else -1
            for offset in arrays.candidate_reasons[row, : len(items)].tolist()
        ]
        assert kept == ranker.contributors(row, items), row
        named += sum(position >= 0 for position in kept)
    assert named > 0
    fast = ranker.recommend_row(0, 5, None, ranker.trained_tier(0))
    assert fast.contributors == ranker.contributors(0, [item.index for item in fast.items])
    # An item out of stock is skipped over the same candidates, reasons and all.
    hidden = np.array([fast.items[1].index], dtype=np.int32)
    around = ranker.recommend_row(0, 5, None, ranker.trained_tier(0), unavailable=hidden)
    assert around.contributors is not None
    assert around.contributors == ranker.contributors(0, [item.index for item in around.items])
