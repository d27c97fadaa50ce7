"""POST /v1/events: purchases and returns as they happen.

Valid events of a batch are applied even when others are rejected; the response says, per
event, what happened. Replaying a batch changes nothing (idempotent by event_id).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, request

from recsvc import api, defaults
from recsvc.api.access import requires
from recsvc.api.json import encoded
from recsvc.api.params import query_args
from recsvc.api.problems import Problem
from recsvc.errors import StoreUnavailable
from recsvc.events import BatchError, parse_batch
from recsvc.openapi import EVENTS
from recsvc.schemas import EventResult

blueprint = Blueprint("events", __name__, url_prefix="/v1")


@blueprint.post("/events")
@requires(EVENTS.key_scope)
def post_events() -> Response:
    query_args(EVENTS)
    payload = request.get_json(silent=True)
    try:
        valid, rejected = parse_batch(payload, datetime.now(UTC))
    except BatchError as error:
        raise Problem(400, "Invalid batch", str(error)) from None
    model = api.served_model()
    unavailable = Problem(
        503,
        "Store unavailable",
        "events cannot be recorded now; nothing was applied, retry",
        headers={"Retry-After": str(defaults.RETRY_AFTER_SECONDS)},
    )
    try:
        result = api.realtime().record(model, valid) if valid else None
    except (StoreUnavailable, OSError):
        raise unavailable from None
    accepted = result.accepted if result else []
    duplicates = result.duplicates if result else []
    rejections = sorted(rejected + (result.rejected if result else []), key=lambda r: r.index)
    status = 422 if rejections and not accepted and not duplicates else 200
    return encoded(EventResult(accepted, duplicates, rejections), status)


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
