"""Catalog changes through the HTTP API, on the embedded store and on Redis: what a PUT or a
batch sets shows in every list at the next request, and survives a Redis that lost its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.auth import mint, parse_api_keys
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.errors import StoreNotRestored
from recsvc.logrecords import read_catalog_logs
from tests.redis_server import STORE_KINDS, store_url
from tests.test_realtime_api import sample_config_copy
from training.config import load_config
from training.pipeline import train


@pytest.fixture(params=STORE_KINDS)
def config(request: pytest.FixtureRequest, sample_models: Path, tmp_path: Path) -> ServiceConfig:
    redis_url = store_url(request, request.param)
    return ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path / "events", auth=False, redis_url=redis_url
    )


@pytest.fixture
def client(config: ServiceConfig) -> FlaskClient:
    return create_app(config).test_client()


def a_customer(models: Path) -> str:
    return str(load_current(models).arrays.customer_ids[3])


def recommended(client: FlaskClient, key: str, n: int = 10) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/v1/customers/{key}/recommendations?n={n}").json[
        "items"
    ]
    return items


def test_an_unavailable_item_leaves_every_list_at_once(
    client: FlaskClient, sample_models: Path
) -> None:
    customer = a_customer(sample_models)
    top = recommended(client, customer)[0]["item_id"]
    block_top = client.get("/v1/blocks/home_hero").json["products"][0]["item_id"]
    picks = client.get(f"/v1/customers/{customer}/email-picks?send_id=s1&n=5").json["items"]

    response = client.put(f"/v1/items/{top}", json={"available": False})
    assert response.status_code == 200 and response.json == {"accepted": [top], "rejected": []}
    response = client.post(
        "/v1/catalog", json={"items": [{"item_id": block_top, "available": False}]}
    )
    assert response.status_code == 200

    after = [item["item_id"] for item in recommended(client, customer, n=100)]
    assert top not in after and len(after) == 100
    products = client.get("/v1/blocks/home_hero").json["products"]
    assert block_top not in {p["item_id"] for p in products} and products
    # The send's snapshot was kept before the change: it is shown without the withdrawn item.
    kept = client.get(f"/v1/customers/{customer}/email-picks?send_id=s1&n=5").json["items"]
    hidden = {top, block_top}
    assert [p for p in kept] == [p for p in picks if p["item_id"] not in hidden]
    fresh = client.get(f"/v1/customers/{customer}/email-picks?send_id=s2&n=10").json["items"]
    assert not hidden & {p["item_id"] for p in fresh}

    assert client.put(f"/v1/items/{top}", json={"available": True}).status_code == 200
    assert recommended(client, customer)[0]["item_id"] == top


def test_a_new_price_and_title_show_in_lists(client: FlaskClient, sample_models: Path) -> None:
    customer = a_customer(sample_models)
    top = recommended(client, customer)[0]["item_id"]
    client.put(f"/v1/items/{top.lower()}", json={"price": 12.5, "title": "Renamed"})
    first = recommended(client, customer)[0]
    assert (first["item_id"], first["price"], first["title"]) == (top, 12.5, "Renamed")


def test_bad_catalog_writes_are_422_per_item_and_valid_ones_apply(client: FlaskClient) -> None:
    items = [
        {"item_id": "NEW-1", "title": "A new mug", "price": 4, "categories": ["Kitchen"]},
        {"item_id": "X", "colour": "red"},
        {"item_id": "Y", "available": "no", "price": "cheap"},
        {"item_id": "Z", "title": "t" * 501},
        {"item_id": ""},
        "not an object",
        {"item_id": "W"},
    ]
    response = client.post("/v1/catalog", json={"items": items})
    assert response.status_code == 200
    body = response.json
    assert body["accepted"] == ["NEW-1"]
    errors = {r["index"]: r["errors"] for r in body["rejected"]}
    assert errors[1] == ["colour: unknown field"]
    assert errors[2] == ["available: must be true or false", "price: must be a number"]
    assert errors[3] == ["title: at most 500 characters, got 501"]
    assert errors[4] == ["item_id: required, 1 to 64 characters"]
    assert errors[5] == ["an item must be a JSON object"]
    assert errors[6][0].startswith("nothing to change")

    only_bad = client.post("/v1/catalog", json={"items": items[1:]})
    assert only_bad.status_code == 422 and len(only_bad.json["rejected"]) == 6
    put = client.put("/v1/items/X", json={"price": -1, "item_id": "X"})
    assert put.status_code == 422
    assert put.json["rejected"][0]["errors"] == [
        "item_id: unknown field",
        "price: must be from 0 to 10000000",
    ]
    for body in (None, [], {"items": []}, {"items": [{}] * 1001}, {"items": [], "x": 1}):
        response = client.post("/v1/catalog", json=body)
        assert response.status_code == 400, body
        assert response.content_type == "application/problem+json"
    assert client.put("/v1/items/X", data="nope").status_code == 400


def test_catalog_writes_need_the_catalog_scope(sample_models: Path, tmp_path: Path) -> None:
    keys = {
        scope: mint(scope.replace(":", "-"), [scope])
        for scope in ("events:write", "catalog:write", "admin")
    }
    config = ServiceConfig(
        models_dir=sample_models,
        events_dir=tmp_path,
        api_keys=parse_api_keys(",".join(line for _, line in keys.values()), "test"),
    )
    client = create_app(config).test_client()

    def put(scope: str) -> int:
        headers = {"Authorization": f"Bearer {keys[scope][0]}"}
        return client.put("/v1/items/A1", json={"available": False}, headers=headers).status_code

    assert client.put("/v1/items/A1", json={"available": False}).status_code == 401
    assert put("events:write") == 403
    assert put("catalog:write") == 200 and put("admin") == 200


def test_changes_are_logged_and_replayed_into_a_redis_that_lost_its_data(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> None:
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path, auth=False, redis_url=clean_redis
    )
    client = create_app(config).test_client()
    customer = a_customer(sample_models)
    top = recommended(client, customer)[0]["item_id"]
    client.put(f"/v1/items/{top}", json={"available": False})
    client.put(f"/v1/items/{top}", json={"price": 1.25})
    records = read_catalog_logs(tmp_path)
    assert [(r.item_id, r.changes) for r in records] == [
        (top, {"available": False}),
        (top, {"price": 1.25}),
    ]

    redis.Redis.from_url(clean_redis).flushdb()
    restarted = create_app(config).test_client()
    assert top not in [item["item_id"] for item in recommended(restarted, customer, n=50)]


def test_training_drops_unavailable_and_discontinued_items_from_every_list(
    client: FlaskClient, sample_models: Path, tmp_path: Path
) -> None:
    customer = a_customer(sample_models)
    first, second = (item["item_id"] for item in recommended(client, customer)[:2])
    events = client.application.extensions["recsvc"].config.events_dir
    client.put(f"/v1/items/{first}", json={"available": False})
    text = sample_config_copy(tmp_path).read_text()
    config = tmp_path / "train.toml"
    config.write_text(
        text.replace(
            "[items]\n",
            f'[items]\ncatalog_log = "{events}"\ndiscontinued = ["{second.lower()}"]\n',
            1,
        )
    )
    models = tmp_path / "models"
    train(load_config(config), models)

    fresh = create_app(ServiceConfig(models_dir=models, events_dir=tmp_path / "e2", auth=False))
    listed = {item["item_id"] for item in recommended(fresh.test_client(), customer, n=100)}
    assert listed and not {first, second} & listed
    anonymous = fresh.test_client().get("/v1/blocks/home_hero").json["products"]
    assert not {first, second} & {p["item_id"] for p in anonymous}


@pytest.mark.parametrize("hidden", [1, 3, 45, 300])
def test_hiding_items_ranks_as_a_mask_would(
    sample_models: Path, tmp_path: Path, hidden: int
) -> None:
    """The shortlist path (ask for more, drop the hidden) and the mask agree, also when the
    precomputed list runs out (45 of its 50 hidden) and beyond the shortlist (300)."""
    service = service_of(
        create_app(ServiceConfig(models_dir=sample_models, events_dir=tmp_path, auth=False))
    )
    ranker = service.model().ranker
    for row in (3, 5, None):
        top = [item.index for item in ranker.recommend_row(row, hidden + 20).items]
        unavailable = np.array(sorted(top[:hidden]), dtype=np.int32)
        mask = np.ones(len(ranker.arrays.item_ids), dtype=bool)
        mask[unavailable] = False
        got = ranker.recommend_row(row, 10, unavailable=unavailable).items
        assert got == ranker.recommend_row(row, 10, allowed=mask).items
        assert not set(unavailable.tolist()) & {item.index for item in got} and len(got) == 10


def test_a_worker_whose_redis_lost_its_data_hides_what_the_logs_hide(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> None:
    config = ServiceConfig(
        models_dir=sample_models, events_dir=tmp_path, auth=False, redis_url=clean_redis
    )
    writer = create_app(config).test_client()
    other = create_app(config).test_client()  # started before the loss, read nothing yet
    customer = a_customer(sample_models)
    top = recommended(writer, customer)[0]["item_id"]
    writer.put(f"/v1/items/{top}", json={"available": False})
    redis.Redis.from_url(clean_redis).flushdb()
    with pytest.raises(StoreNotRestored):
        service_of(other.application).store.catalog()
    assert top not in [item["item_id"] for item in recommended(other, customer, n=50)]
