"""Per-segment fallbacks: a customer the model does not know gets the best sellers of their
country (``?country=``) or tier, else of all, and the answer says which."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.bundle import current_version, load_current
from recsvc.config import ServiceConfig
from recsvc.ranker import Ranker
from training.segments import Sales, segment_arrays


@pytest.fixture
def own_client(sample_models: Path, tmp_path: Path) -> FlaskClient:
    """The sample bundle with an events dir of this test's own."""
    config = ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "events", auth=False)
    return create_app(config).test_client()


def _items(client: FlaskClient, query: str) -> tuple[list[str], str | None]:
    body = client.get(f"/v1/customers/nobody/recommendations?{query}").get_json()
    assert body["fallback"] is True
    return [item["item_id"] for item in body["items"]], body["fallback_scope"]


def test_countries_get_their_own_best_sellers(sample_app: Flask, client: FlaskClient) -> None:
    arrays = service_of(sample_app).registry.model.ranker.arrays
    names = arrays.segment_names.tolist()
    assert {"country:United Kingdom", "country:Germany", "country:France"} <= set(names)
    german, scope = _items(client, "n=10&country=germany")
    assert scope == "country:Germany"
    french, scope = _items(client, "n=10&country=France")
    assert scope == "country:France"
    overall, scope = _items(client, "n=10")
    assert scope == "all"
    assert german != french and german != overall
    # The known answer: Germany's sales, best first, as the bundle lists them.
    start = arrays.segment_indptr[names.index("country:Germany")]
    model = service_of(sample_app).registry.model
    assert german == [model.item_ids[i] for i in arrays.segment_items[start : start + 10]]


def test_unknown_country_gets_all(client: FlaskClient) -> None:
    overall, _ = _items(client, "n=10")
    assert _items(client, "n=10&country=Atlantis") == (overall, "all")
    response = client.get("/v1/customers/nobody/recommendations?country=")
    assert response.status_code == 400
    assert response.get_json(force=True)["invalid_params"][0]["name"] == "country"


def test_a_short_segment_list_is_filled_from_all(sample_app: Flask) -> None:
    ranker = service_of(sample_app).registry.model.ranker
    arrays = ranker.arrays
    names = arrays.segment_names.tolist()
    index = names.index("country:Germany")
    sold = int(arrays.segment_indptr[index + 1] - arrays.segment_indptr[index])
    ranking = ranker.recommend_row(None, sold + 5, scopes=("country:Germany",))
    indices = [item.index for item in ranking.items]
    scores = [item.score for item in ranking.items]
    assert len(indices) == sold + 5 and len(set(indices)) == sold + 5
    assert scores == sorted(scores, reverse=True)
    start, end = arrays.segment_indptr[index], arrays.segment_indptr[index + 1]
    german = set(arrays.segment_items[start:end].tolist())
    filled = [i for i in indices if i not in german]
    assert len(filled) >= 5 and indices[-len(filled) :] == filled  # after Germany's own
    assert scores[-len(filled) :] == [0.0] * len(filled)  # never sold there


def test_known_customers_have_no_scope(sample_app: Flask, client: FlaskClient) -> None:
    customer = str(service_of(sample_app).registry.model.ranker.arrays.customer_ids[0])
    body = client.get(f"/v1/customers/{customer}/recommendations?country=Germany").get_json()
    assert body["fallback"] is False and body["fallback_scope"] is None


def _purchase(event_id: str, item: str, quantity: float, price: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer": "newcomer-i25",
        "item_id": item,
        "quantity": quantity,
        "price": price,
        "timestamp": "2011-12-10T10:00:00Z",
    }


def test_owned_items_leave_the_fallback_and_spend_picks_the_tier(own_client: FlaskClient) -> None:
    url = "/v1/customers/newcomer-i25/recommendations?n=5"
    german = own_client.get(url + "&country=Germany").get_json()["items"]
    bought = german[0]["item_id"]
    event = _purchase("i25-1", bought, 1, 2.0)
    assert own_client.post("/v1/events", json={"events": [event]}).status_code == 200
    after = own_client.get(url + "&country=Germany").get_json()
    assert after["fallback_scope"] == "country:Germany"
    assert bought not in [item["item_id"] for item in after["items"]]
    # Spend since training lifts a stranger out of the first tier: that tier's list.
    big = _purchase("i25-2", german[1]["item_id"], 100, 1000.0)
    assert own_client.post("/v1/events", json={"events": [big]}).status_code == 200
    tiered = own_client.get(url).get_json()
    assert tiered["fallback_scope"] == f"tier:{tiered['tier']['name']}"
    assert tiered["tier"]["name"] != "bronze"
    owned = {bought, german[1]["item_id"]}
    assert not owned & {item["item_id"] for item in tiered["items"]}
    country_first = own_client.get(url + "&country=Germany").get_json()
    assert country_first["fallback_scope"] == "country:Germany"


def test_a_bundle_without_segment_lists_still_loads(sample_models: Path, tmp_path: Path) -> None:
    version = current_version(sample_models)
    copy = tmp_path / "models"
    shutil.copytree(sample_models / version, copy / version)
    (copy / "current").write_text(version + "\n")
    (copy / version / "segments.npz").unlink()
    manifest_path = copy / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["segments.npz"]
    manifest_path.write_text(json.dumps(manifest))
    arrays = load_current(copy).arrays
    assert len(arrays.segment_names) == 0
    ranking = Ranker(arrays).recommend_row(None, 5, scopes=("country:Germany",))
    assert ranking.scope == "all"
    assert [i.index for i in ranking.items] == arrays.popular_items[:5].tolist()
    assert np.array_equal(arrays.segment_indptr, [0])


def test_segment_lists_known_answer() -> None:
    """Three customers in Spain (item 2 sold most, then 0), one in Peru (too few: no list);
    tiers by customer; anonymous sales count for their country, not for a tier."""
    sales = Sales(
        items=np.array([2, 2, 0, 1, 2, 1]),
        rows=np.array([0, 1, 2, 3, -1, 3]),
        countries=np.array([1, 1, 1, 0, 1, 0]),
        weights=np.array([1.0, 1.0, 0.5, 1.0, 1.0, 1.0]),
        country_names=np.array(["Peru", "Spain"]),
    )
    arrays = segment_arrays(sales, 3, np.array([0, 0, 0, 1]), ["bronze", "gold"])
    assert arrays["segment_names"].tolist() == ["country:Spain", "tier:bronze"]
    assert arrays["segment_indptr"].tolist() == [0, 2, 4]
    assert arrays["segment_items"].tolist() == [2, 0, 2, 0]
    assert arrays["segment_scores"].tolist() == [3.0, 0.5, 2.0, 0.5]


def test_inconsistent_segment_arrays_are_refused(sample_app: Flask) -> None:
    arrays = service_of(sample_app).registry.model.ranker.arrays
    broken = dataclasses.replace(arrays, segment_indptr=arrays.segment_indptr[:-1])
    with pytest.raises(ValueError, match="segment_indptr"):
        broken.check()
    outside = arrays.segment_items.copy()
    outside[0] = len(arrays.item_ids)
    with pytest.raises(ValueError, match="segment_items"):
        dataclasses.replace(arrays, segment_items=outside).check()
