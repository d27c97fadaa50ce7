"""/openapi.json is a valid OpenAPI 3.1 document, and real responses match it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from recsvc.app import create_app
from recsvc.auth import mint
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from recsvc.identity import DEVELOPMENT_SECRET
from recsvc.schemas import MAX_QUANTITY, MAX_UNIT_PRICE
from training import merge


@pytest.fixture(scope="module")
def document(sample_app: Any) -> dict[str, Any]:
    body: dict[str, Any] = sample_app.test_client().get("/openapi.json").get_json()
    return body


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def check(document: dict[str, Any], response: Any, template: str, method: str) -> None:
    """Validate a response's body against the document's schema for it."""
    status = str(response.status_code)
    operation = document["paths"][template][method]
    assert status in operation["responses"], f"{method} {template}: {status} undocumented"
    described = operation["responses"][status]
    if "$ref" in described:
        pointer = described["$ref"][1:]
        described = document
        for part in pointer.strip("/").split("/"):
            described = described[part]
    mimetype = response.mimetype
    assert mimetype in described["content"], f"{method} {template}: {mimetype} undocumented"
    if not mimetype.endswith("json"):
        return
    escaped = [
        part.replace("~", "~0").replace("/", "~1")
        for part in ("paths", template, method, "responses", status)
    ]
    pointer = "/".join(escaped)
    if "$ref" in operation["responses"][status]:
        pointer = operation["responses"][status]["$ref"][2:]
    schema_pointer = f"{pointer}/content/{mimetype.replace('/', '~1')}/schema"
    registry = Registry().with_resource(
        "urn:recsvc", Resource(contents=document, specification=DRAFT202012)
    )
    validator = Draft202012Validator(
        {"$ref": f"urn:recsvc#/{quote(schema_pointer, safe='/~')}"}, registry=registry
    )
    errors = [error.message for error in validator.iter_errors(response.get_json(force=True))]
    assert errors == [], f"{method} {template} {status}: {errors}"


def test_real_responses_match_the_document(
    client: FlaskClient, document: dict[str, Any], sample_models: Path
) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[2])
    event = {
        "event_id": "openapi-1",
        "customer": customer,
        "item_id": "22423",
        "quantity": 1,
        "price": 12.75,
        "timestamp": "2011-12-10T10:00:00Z",
    }
    calls = [
        ("get", "/healthz", "/healthz", None),
        ("get", "/readyz", "/readyz", None),
        ("get", "/v1/model", "/v1/model", None),
        (
            "get",
            "/v1/customers/{key}/recommendations",
            f"/v1/customers/{customer}/recommendations?n=5",
            None,
        ),
        (
            "get",
            "/v1/customers/{key}/recommendations",
            "/v1/customers/nobody/recommendations?category=christmas",
            None,
        ),
        ("get", "/v1/customers/{key}/recommendations", "/v1/customers/x/recommendations?n=0", None),
        (
            "get",
            "/v1/customers/{key}/recommendations",
            "/v1/customers/~/recommendations?key=email%3Aa%2Fb%40example.com",
            None,
        ),
        (
            "get",
            "/v1/customers/{key}/recommendations",
            "/v1/customers/a%E2%80%AE/recommendations",
            None,
        ),
        ("get", "/v1/customers/{key}/profile", f"/v1/customers/{customer}/profile", None),
        ("get", "/v1/customers/{key}/profile", "/v1/customers/nobody/profile", None),
        (
            "get",
            "/v1/customers/{key}/blocks/{slot}",
            f"/v1/customers/{customer}/blocks/home_hero",
            None,
        ),
        ("get", "/v1/blocks/{slot}", "/v1/blocks/home_hero?format=html", None),
        ("get", "/v1/blocks/{slot}", "/v1/blocks/nowhere", None),
        (
            "get",
            "/v1/customers/{key}/email-picks",
            f"/v1/customers/{customer}/email-picks?send_id=oa&n=3",
            None,
        ),
        ("get", "/v1/customers/{key}/email-picks", f"/v1/customers/{customer}/email-picks", None),
        ("post", "/v1/events", "/v1/events", {"events": [event]}),
        ("post", "/v1/events", "/v1/events", {"events": [{"event_id": "bad"}]}),
        ("post", "/v1/events", "/v1/events", {"nope": 1}),
        ("get", "/v1/triggers", "/v1/triggers?limit=5", None),
        ("get", "/v1/triggers", "/v1/triggers?kind=bogus", None),
        ("get", "/v1/embed.js", "/v1/embed.js", None),
        ("post", "/v1/visitor-tokens", "/v1/visitor-tokens", {"customer": customer}),  # no secret
        ("post", "/v1/visitor-tokens", "/v1/visitor-tokens", {"customer": customer, "ttl": 0}),
        ("delete", "/v1/customers/{key}", "/v1/customers/email:gone@example.com", None),
        ("get", "/v1/experiments", "/v1/experiments", None),
        ("post", "/v1/experiments/end", "/v1/experiments/end", {"promote": "a"}),  # none runs
        ("post", "/v1/experiments/end", "/v1/experiments/end", {"keep": "a"}),
    ]
    for method, template, url, body in calls:
        response = getattr(client, method)(url, json=body) if body else getattr(client, method)(url)
        check(document, response, template, method)


def test_publishable_answers_match_the_document(
    document: dict[str, Any], sample_models: Path, tmp_path: Path
) -> None:
    web, web_line = mint("web", ["blocks:read"])
    mail, mail_line = mint("mail", ["recs:read"])
    app = create_app(
        {
            "RECSVC_MODELS_DIR": str(sample_models),
            "RECSVC_EVENTS_DIR": str(tmp_path),
            "RECSVC_API_KEYS": f"{web_line},{mail_line}",
            "RECSVC_SECRET_KEY": "k" * 32,
            "RECSVC_ID_SECRET": DEVELOPMENT_SECRET,  # what the sample bundle was trained with
            "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",
        }
    )
    client = app.test_client()
    customer = str(load_current(sample_models).arrays.customer_ids[2])
    minted = client.post(
        "/v1/visitor-tokens", json={"customer": customer}, headers={"X-API-Key": mail}
    )
    check(document, minted, "/v1/visitor-tokens", "post")
    token = minted.get_json()["token"]
    calls = [
        ("/v1/customers/{key}/blocks/{slot}", f"/v1/customers/{customer}/blocks/home_hero", {}),
        (
            "/v1/customers/{key}/blocks/{slot}",
            f"/v1/customers/~/blocks/home_hero?key={customer}",
            {"X-Recsvc-Token": token},
        ),
        ("/v1/blocks/{slot}", "/v1/blocks/home_hero", {}),
    ]
    for template, url, headers in calls:
        response = client.get(url, headers={"X-API-Key": web, **headers})
        assert set(response.get_json()) >= {"personalised"}
        check(document, response, template, "get")


def test_event_bounds_are_the_documented_ones(
    document: dict[str, Any], sample_models: Path, tmp_path: Path
) -> None:
    """The document's Event bounds, the service's checks and the trainer's are one set."""
    properties = document["components"]["schemas"]["Event"]["properties"]
    assert properties["quantity"]["maximum"] == MAX_QUANTITY == merge.MAX_QUANTITY
    assert properties["price"]["maximum"] == MAX_UNIT_PRICE == merge.MAX_UNIT_PRICE
    customer = str(load_current(sample_models).arrays.customer_ids[2])
    event = {
        "customer": customer,
        "item_id": "22423",
        "price": MAX_UNIT_PRICE,
        "timestamp": "2011-12-10T10:00:00Z",
    }
    events = [
        {**event, "event_id": "bounds-1", "quantity": MAX_QUANTITY},
        {**event, "event_id": "bounds-2", "quantity": -MAX_QUANTITY * 1.5},
        {**event, "event_id": "bounds-3", "quantity": 1, "price": MAX_UNIT_PRICE * 1.5},
    ]
    client = create_app(
        ServiceConfig(models_dir=sample_models, events_dir=tmp_path, auth=False)
    ).test_client()
    body = client.post("/v1/events", json={"events": events}).get_json()
    assert body["accepted"] == ["bounds-1"]
    assert [r["errors"][0].split(":")[0] for r in body["rejected"]] == ["quantity", "price"]
