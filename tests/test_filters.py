"""Price filters on every list endpoint: exact bands, combined with a category, never an
owned item, exactly n items while the catalog has that many, bad bounds a 400."""

from __future__ import annotations

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.errors import InvalidParameter
from recsvc.filters import ItemFilter
from tests.test_fast_path import assert_same_answer, slow


def _expected(sample_app: Flask, row: int, n: int, low: float, high: float) -> list[str]:
    """The known answer, from the customer's scores over the whole catalog: the best ``n``
    items priced in [low, high] that they do not own."""
    model = service_of(sample_app).registry.model
    ranker = model.ranker
    tier = ranker.trained_tier(row)
    scores = ranker.batch_scores(np.array([row]), np.array([tier]))[0].astype(np.float64)
    prices = ranker.arrays.prices
    with np.errstate(invalid="ignore"):
        out = ~((prices >= low) & (prices <= high))
    scores[out] = -np.inf
    scores[ranker.excluded(row, {})] = -np.inf
    scores[ranker.arrays.item_min_tier > tier] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    best = [int(i) for i in order[:n] if np.isfinite(scores[i])]
    return [model.item_ids[i] for i in best]


def test_price_band_is_the_known_answer_and_exact(sample_app: Flask, client: FlaskClient) -> None:
    model = service_of(sample_app).registry.model
    customer = str(model.ranker.arrays.customer_ids[7])
    body = client.get(
        f"/v1/customers/{customer}/recommendations?n=10&min_price=2&max_price=5"
    ).get_json()
    items = body["items"]
    assert [item["item_id"] for item in items] == _expected(sample_app, 7, 10, 2.0, 5.0)
    assert len(items) == 10 and all(2 <= item["price"] <= 5 for item in items)
    owned = {model.item_ids[i] for i in model.ranker.excluded(7, {}).tolist()}
    assert not owned & {item["item_id"] for item in items}


def test_a_narrow_band_scores_past_the_candidates(sample_app: Flask) -> None:
    """Few candidates lie in a narrow band: the fast path gives way to scoring, and exactly n
    items come back, the same as scoring the whole catalog gives."""
    model = service_of(sample_app).registry.model
    fast = model.ranker
    full = slow(fast)
    band = ItemFilter(min_price=10.0, max_price=20.0).mask(model)
    assert band is not None
    row = 3
    tier = fast.trained_tier(row)
    in_candidates = band[fast.arrays.candidate_items[row]].sum()
    n = int(in_candidates) + 5
    assert n <= band.sum() - len(fast.excluded(row, {}))
    quick = fast.recommend_row(row, n, None, tier, allowed=band)
    assert len(quick.items) == n
    assert_same_answer(quick, full.recommend_row(row, n, None, tier, allowed=band))
    assert all(band[item.index] for item in quick.items)


def test_unknown_prices_are_left_out_and_category_combines(sample_app: Flask) -> None:
    model = service_of(sample_app).registry.model
    prices = model.ranker.arrays.prices
    band = ItemFilter(min_price=0.0).mask(model)
    assert band is not None
    assert np.array_equal(band, np.isfinite(prices))
    category = model.bundle.categories[0]
    both = ItemFilter(category, 1.0, 3.0).mask(model)
    alone = ItemFilter(category).mask(model)
    assert both is not None and alone is not None and both.any()
    with np.errstate(invalid="ignore"):
        assert np.array_equal(both, alone & (prices >= 1.0) & (prices <= 3.0))
    assert ItemFilter().mask(model) is None


def test_fallback_and_blocks_and_email_picks_filter(client: FlaskClient) -> None:
    stranger = client.get("/v1/customers/nobody/recommendations?n=8&max_price=1").get_json()
    assert stranger["fallback"] is True and len(stranger["items"]) == 8
    assert all(item["price"] <= 1 for item in stranger["items"])
    block = client.get("/v1/blocks/home_hero?min_price=3&max_price=4").get_json()
    assert block["products"] and all(3 <= p["price"] <= 4 for p in block["products"])
    url = "/v1/customers/nobody/email-picks?send_id=s1&n=4"
    plain = client.get(url).get_json()
    cheap = client.get(url + "&max_price=0.5").get_json()
    assert all(item["price"] <= 0.5 for item in cheap["items"])
    assert [i["item_id"] for i in plain["items"]] != [i["item_id"] for i in cheap["items"]]
    assert client.get(url).get_json()["items"] == plain["items"]  # kept per filter


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("min_price=5&max_price=2", "min_price"),
        ("min_price=-1", "min_price"),
        ("max_price=nan", "max_price"),
        ("max_price=inf", "max_price"),
        ("min_price=cheap", "min_price"),
        ("max_price=", "max_price"),
    ],
)
def test_bad_bounds_are_400_naming_the_parameter(
    client: FlaskClient, query: str, name: str
) -> None:
    for path in (
        "/v1/customers/nobody/recommendations",
        "/v1/blocks/home_hero",
        "/v1/customers/nobody/blocks/home_hero",
        "/v1/customers/nobody/email-picks?send_id=s",
    ):
        joiner = "&" if "?" in path else "?"
        response = client.get(path + joiner + query)
        assert response.status_code == 400, path
        problem = response.get_json(force=True)
        assert problem["invalid_params"][0]["name"] == name
        assert response.content_type == "application/problem+json"


def test_item_filter_checks_its_bounds() -> None:
    with pytest.raises(InvalidParameter, match="min_price"):
        ItemFilter(min_price=3.0, max_price=1.0)
    assert ItemFilter(min_price=2.0, max_price=2.0).priced
