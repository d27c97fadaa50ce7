"""Liveness and readiness."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, jsonify

from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.params import query_args
from recsvc.openapi import MODEL, document
from recsvc.schemas import Health, ModelInfo, Ready

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return encoded(Health("ok"))


@blueprint.get("/readyz")
def readyz() -> Response:
    service = this_service()
    model = service.model()
    return encoded(Ready("ready", model.version, service.registry.fallback_from))


@blueprint.get("/v1/model")
def model() -> Response:
    query_args(MODEL)
    service = this_service()
    served = service.model()
    manifest = served.bundle.manifest
    registry = service.registry
    return encoded(
        ModelInfo(
            version=served.version,
            created=manifest.created,
            data_as_of=manifest.data_as_of,
            loaded_at=datetime.fromtimestamp(served.loaded_at, UTC).isoformat(timespec="seconds"),
            last_error=registry.last_error,
            fallback_from=registry.fallback_from,
        )
    )


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
