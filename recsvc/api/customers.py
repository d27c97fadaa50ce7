"""GET /v1/customers/<key>/profile and DELETE /v1/customers/<key> (erasure)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import customer_key, query_args
from recsvc.openapi import ERASE, PROFILE

blueprint = Blueprint("customers", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/profile")
@requires(PROFILE.key_scope)
def profile(key: str) -> Response:
    key = customer_key(key, query_args(PROFILE))
    service = this_service()
    answer = service.profile(service.model(), key)
    answered(fallback=not answer.known, degraded=answer.degraded)
    return encoded(answer)


@blueprint.delete("/<key>")
@requires(ERASE.key_scope)
def erase(key: str) -> Response:
    key = customer_key(key, query_args(ERASE))
    service = this_service()
    return encoded(service.erase(service.model(), key))


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
