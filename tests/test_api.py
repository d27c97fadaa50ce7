"""The HTTP API on a bundle trained from the demo sample."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.errors import ConfigError
from recsvc.openapi import OPERATIONS

PROBLEM = "application/problem+json"


def known_customer(models: Path) -> str:
    return str(load_current(models).arrays.customer_ids[0])


def test_recommendations_for_known_customer(client: FlaskClient, sample_models: Path) -> None:
    bundle = load_current(sample_models)
    customer = known_customer(sample_models)

    response = client.get(f"/v1/customers/{customer}/recommendations?n=7")

    assert response.status_code == 200
    body = response.get_json()
    assert body["customer_id"] == customer
    assert body["model_version"] == bundle.version
    assert body["fallback"] is False
    assert len(body["items"]) == 7
    assert set(body["items"][0]) == {"item_id", "score", "title", "price", "reason"}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_default_n_is_ten(client: FlaskClient, sample_models: Path) -> None:
    body = client.get(f"/v1/customers/{known_customer(sample_models)}/recommendations").get_json()
    assert len(body["items"]) == 10


def test_scores_have_at_most_six_decimals(client: FlaskClient, sample_models: Path) -> None:
    customer = known_customer(sample_models)
    body = client.get(f"/v1/customers/{customer}/recommendations?n=20").get_json()
    for item in body["items"]:
        assert item["score"] == round(item["score"], 6)
        assert len(repr(item["score"]).partition(".")[2]) <= 6


def test_a_repeated_parameter_is_refused(client: FlaskClient, sample_models: Path) -> None:
    """No parameter takes a list: ``?n=3&n=5`` has no one meaning, so it is a 400 rather than
    a silent choice of one value."""
    customer = known_customer(sample_models)
    for query in ("n=3&n=5", "n=abc&n=5", "category=kitchen&category=garden"):
        response = client.get(f"/v1/customers/{customer}/recommendations?{query}")
        assert response.status_code == 400
        assert "given more than once" in response.get_json()["detail"]


def test_unknown_customer_gets_popular_fallback(client: FlaskClient, sample_models: Path) -> None:
    bundle = load_current(sample_models)
    response = client.get("/v1/customers/never-seen/recommendations?n=3")
    assert response.status_code == 200
    body = response.get_json()
    assert body["fallback"] is True
    popular = [str(bundle.arrays.item_ids[i]) for i in bundle.arrays.popular_items[:3]]
    assert [item["item_id"] for item in body["items"]] == popular


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("n=abc", "must be an integer"),
        ("n=0", "between 1 and 100"),
        ("n=101", "between 1"),
        ("n=-5", "between 1"),
        ("n=", "must be an integer"),
        ("n=1.5", "must be an integer"),
    ],
)
def test_bad_n_is_a_problem(client: FlaskClient, query: str, reason: str) -> None:
    response = client.get(f"/v1/customers/x/recommendations?{query}")
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == 400 and reason in body["detail"]
    assert body["invalid_params"][0]["name"] == "n"


@pytest.mark.parametrize(
    ("method", "url", "unknown"),
    [
        ("get", "/v1/customers/x/recommendations?n=3&catgory=christmas", "catgory"),
        ("get", "/v1/customers/~/recommendations?key=x&N=3", "N"),
        ("get", "/v1/customers/x/profile?verbose=1", "verbose"),
        ("get", "/v1/customers/x/blocks/home_hero?format=json&slot=x", "slot"),
        ("get", "/v1/blocks/home_hero?customer=x", "customer"),
        ("get", "/v1/customers/x/email-picks?send_id=s&limit=2", "limit"),
        ("get", "/v1/triggers?kinds=lapsing", "kinds"),
        ("get", "/v1/model?x=", "x"),
        ("post", "/v1/events?dry_run=1", "dry_run"),
        ("post", "/v1/visitor-tokens?customer=x", "customer"),
        ("delete", "/v1/customers/x?force=1", "force"),
    ],
)
def test_unknown_query_parameters_are_refused_by_name(
    client: FlaskClient, method: str, url: str, unknown: str
) -> None:
    response = getattr(client, method)(url)
    assert response.status_code == 400 and response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["invalid_params"][0]["name"] == unknown
    assert body["detail"].startswith(f"{unknown}: unknown parameter; this endpoint takes")


def test_an_unknown_parameter_that_looks_like_data_is_not_repeated(client: FlaskClient) -> None:
    response = client.get("/v1/customers/~/recommendations?email:ann@example.com")
    assert response.status_code == 400
    assert "ann" not in response.get_data(as_text=True)


def test_every_v1_endpoint_declares_its_parameters(sample_app: Flask) -> None:
    """Each /v1 route is in the operations table that the views check parameters against."""
    declared = {(op.method, op.path) for op in OPERATIONS}
    for rule in sample_app.url_map.iter_rules():
        path = re.sub(r"<(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method.lower() in ("get", "post", "delete") and path.startswith("/v1"):
                assert (method.lower(), path) in declared, (method, path)


@pytest.mark.parametrize("path", ["/nope", "/v1/customers/", "/v1/customers/x/unknown"])
def test_unknown_routes_are_problems(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == PROBLEM


def test_wrong_method_is_a_problem(client: FlaskClient) -> None:
    response = client.post("/v1/customers/x/recommendations")
    assert response.status_code == 405 and response.mimetype == PROBLEM


def test_odd_customer_ids_are_just_unknown(client: FlaskClient) -> None:
    for customer in ["a%20b", "%F0%9F%98%80", "x" * 256, "'; DROP TABLE"]:
        response = client.get(f"/v1/customers/{customer}/recommendations")
        assert response.status_code == 200, customer
        assert response.get_json()["fallback"] is True
    for customer in ["%00", "x" * 257]:  # a control character; longer than a key may be
        response = client.get(f"/v1/customers/{customer}/recommendations")
        assert response.status_code == 400, customer
        assert response.get_json(force=True)["invalid_params"][0]["name"] == "key"


def test_health_and_readiness(client: FlaskClient, sample_models: Path) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["model_version"] == load_current(sample_models).version


def test_without_a_bundle_not_ready_but_alive(tmp_path: Path) -> None:
    client = create_app(
        {
            "RECSVC_MODELS_DIR": str(tmp_path),
            "RECSVC_AUTH": "off",
            "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        }
    ).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.mimetype == PROBLEM
    assert "current" in ready.get_json(force=True)["detail"]
    assert client.get("/v1/customers/x/recommendations").status_code == 503


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    base = {"RECSVC_MODELS_DIR": str(tmp_path), "RECSVC_AUTH": "off"}
    with pytest.raises(ConfigError, match="RECSVC_LOG_LEVEL"):
        create_app({**base, "RECSVC_LOG_LEVEL": "LOUD"})
    with pytest.raises(ConfigError, match="RECSVC_MODELS_DIR"):
        create_app({**base, "RECSVC_MODELS_DIR": " "})
    with pytest.raises(ConfigError, match="RECSVC_API_KEYS"):
        create_app({"RECSVC_MODELS_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="RECSVC_REDIS_URL"):
        create_app({**base, "RECSVC_REDIS_URL": "localhost:6379"})
    with pytest.raises(ConfigError, match="RECSVC_STORE_TIMEOUT_MS"):
        create_app({**base, "RECSVC_STORE_TIMEOUT_MS": "fast"})


@pytest.mark.parametrize(
    ("body", "name", "reason"),
    [
        ({"customer": "c", "ttl": 86401}, "ttl", "Expected `int` <= 86400 (seconds, an integer"),
        ({"customer": "c", "ttl": True}, "ttl", "Expected `int`, got `bool`"),
        ({"customer": "c", "ttl": "60"}, "ttl", "Expected `int`, got `str`"),
        ({"customer": "c\u202e"}, "customer", "contains U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ({"customer": ""}, "customer", "Expected `str` of length >= 1 (the customer key"),
        ({}, "customer", "required"),
        ({"customer": "c", "extra": 1}, "extra", "unknown field; fields are customer, ttl"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field(
    client: FlaskClient, body: dict[str, object], name: str, reason: str
) -> None:
    response = client.post("/v1/visitor-tokens", json=body)
    assert response.status_code == 400 and response.mimetype == PROBLEM
    problem = response.get_json(force=True)
    assert problem["invalid_params"][0]["name"] == name
    assert problem["detail"].startswith(f"{name}: {reason}"), problem["detail"]


@pytest.mark.parametrize("data", ["[", "[]", "null", '"text"'])
def test_a_body_that_is_not_an_object_is_refused(client: FlaskClient, data: str) -> None:
    response = client.post("/v1/visitor-tokens", data=data, content_type="application/json")
    assert response.status_code == 400 and response.mimetype == PROBLEM
    assert "expected a JSON object with customer, ttl" in response.get_json(force=True)["detail"]


def test_a_body_not_declared_as_json_is_refused(client: FlaskClient) -> None:
    response = client.post("/v1/visitor-tokens", data='{"customer": "c"}')
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.get_json(force=True)["detail"]
