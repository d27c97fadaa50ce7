"""GET /v1/customers/<key>/profile, GET /v1/customers/<key>/recently-viewed and
DELETE /v1/customers/<key> (erasure)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from recsvc import defaults
from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import customer_key, int_arg, query_args
from recsvc.openapi import ERASE, PROFILE, RECENTLY_VIEWED

blueprint = Blueprint("customers", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/profile")
@requires(PROFILE.key_scope)
def profile(key: str) -> Response:
    key = customer_key(key, query_args(PROFILE))
    service = this_service()
    answer = service.profile(service.model(), key)
    answered(fallback=not answer.known, degraded=answer.degraded)
    return encoded(answer)


@blueprint.get("/<key>/recently-viewed")
@requires(RECENTLY_VIEWED.key_scope)
def recently_viewed(key: str) -> Response:
    args = query_args(RECENTLY_VIEWED)
    key = customer_key(key, args)
    n = int_arg(args, "n", defaults.RECENTLY_VIEWED_N, 1, defaults.RECENTLY_VIEWED_MAX)
    service = this_service()
    return encoded(service.recently_viewed(service.model(), key, n))


@blueprint.delete("/<key>")
@requires(ERASE.key_scope)
def erase(key: str) -> Response:
    key = customer_key(key, query_args(ERASE))
    service = this_service()
    return encoded(service.erase(service.model(), key))


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
