"""The service core without HTTP: one call resolves a key, the answers are the endpoints'
own, and the HTTP layer never reaches into the served model's internals."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from recsvc.app import create_app
from recsvc.config import ServiceConfig
from recsvc.errors import InvalidParameter, NoModelLoaded, UnknownCustomer
from recsvc.service import SERVICE, Service

API = Path(__file__).resolve().parent.parent / "recsvc" / "api"


@pytest.fixture
def service(sample_models: Path, tmp_path: Path) -> Service:
    return Service.start(ServiceConfig(models_dir=sample_models, events_dir=tmp_path, auth=False))


def test_resolve_gives_row_canonical_id_store_key_and_erasure(service: Service) -> None:
    model = service.model()
    known = service.customer_ids(model)[0]
    row, customer_id, store_key, erased = service.resolve(model, known)
    assert row is not None and customer_id == known and store_key and not erased
    stranger = service.resolve(model, "nobody-known-42")
    assert stranger.row is None and stranger.customer_id is None and not stranger.erased

    service.erase(model, known)
    after = service.resolve(model, known)
    assert after == (None, None, store_key, True)  # same store key, no row, no id
    with pytest.raises(UnknownCustomer, match="on the erasure list all the same"):
        service.erase(model, "nobody-known-42")
    with pytest.raises(InvalidParameter, match="'emial' is not a key type"):
        service.erase(model, "emial:ann@example.com")


def test_answers_are_the_endpoints(service: Service, sample_models: Path, tmp_path: Path) -> None:
    app = create_app(
        ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "app", auth=False)
    )
    assert isinstance(app.extensions[SERVICE], Service)
    client = app.test_client()
    model = service.model()
    key = service.customer_ids(model)[1]
    answer = msgspec.to_builtins(service.recommendations(model, key, 5))
    served = client.get(f"/v1/customers/{key}/recommendations?n=5").get_json()
    assert answer.pop("impression_id") != served.pop("impression_id")  # one per answer
    assert answer == served
    profile = msgspec.to_builtins(service.profile(model, key))
    assert profile == client.get(f"/v1/customers/{key}/profile").get_json()
    with pytest.raises(InvalidParameter, match="n: must be between 1 and 12, got 13"):
        service.email_picks(model, key, "spring", 13)


def test_no_model_is_an_error_of_the_core(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    service = Service.start(
        ServiceConfig(models_dir=tmp_path / "models", events_dir=tmp_path / "events", auth=False)
    )
    with pytest.raises(NoModelLoaded):
        service.model()


def test_views_do_not_reach_into_the_model_or_app_extensions() -> None:
    for path in API.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\.ranker\b|\.arrays\b|\.aliases\b|\.tiers\b", text), path.name
        assert not re.search(r"extensions\[\s*\"recsvc\.", text), path.name
