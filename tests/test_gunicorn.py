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
