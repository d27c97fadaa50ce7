"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from recsvc import api
from recsvc.openapi import document

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> Response:
    model = api.served_model()
    return jsonify(status="ready", model_version=model.version)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document())


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
