"""End to end: the wsgi entry served by a real gunicorn, configured from the environment."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.local_server import gunicorn
from recsvc.bundle import load_current


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def gunicorn_url(sample_models: Path, tmp_path: Path) -> Iterator[str]:
    env = {
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_WORKERS": "2",
    }
    with gunicorn(env) as url:
        yield url


def test_served_by_gunicorn(gunicorn_url: str, sample_models: Path) -> None:
    bundle = load_current(sample_models)
    customer = str(bundle.arrays.customer_ids[5])
    owned = {
        str(bundle.arrays.item_ids[i])
        for i in bundle.arrays.owned_indices[
            bundle.arrays.owned_indptr[5] : bundle.arrays.owned_indptr[6]
        ]
    }

    status, body = get(f"{gunicorn_url}/v1/customers/{customer}/recommendations?n=20")
    assert status == 200 and body["fallback"] is False
    items = body["items"]
    assert isinstance(items, list) and len(items) == 20
    assert not {item["item_id"] for item in items} & owned

    status, body = get(f"{gunicorn_url}/v1/customers/unknown-42/recommendations")
    assert status == 200 and body["fallback"] is True

    status, body = get(f"{gunicorn_url}/v1/customers/x/recommendations?n=zero")
    assert status == 400 and "n:" in str(body["detail"])


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_a_catalog_change_on_one_worker_shows_on_every_worker_at_once(
    store: str, sample_models: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_WORKERS": "2",
    }
    if store == "redis":
        env["RECSVC_REDIS_URL"] = request.getfixturevalue("clean_redis")
    customer = str(load_current(sample_models).arrays.customer_ids[5])
    with gunicorn(env) as url:
        path = f"{url}/v1/customers/{customer}/recommendations?n=20"
        top = get(path)[1]["items"][0]["item_id"]  # type: ignore[index]
        put = urllib.request.Request(
            f"{url}/v1/items/{top}",
            data=json.dumps({"available": False}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(put, timeout=5) as response:
            assert response.status == 200
        # Each read is a new connection, so both workers answer some of them.
        for _ in range(20):
            status, body = get(path)
            items = body["items"]
            assert status == 200 and isinstance(items, list) and len(items) == 20
            assert top not in {item["item_id"] for item in items}
