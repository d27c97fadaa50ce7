"""POST /v1/events: purchases and returns as they happen.

Valid events of a batch are applied even when others are rejected; the response says, per
event, what happened. Replaying a batch changes nothing (idempotent by event_id).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, request

from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.params import query_args
from recsvc.events import parse_batch
from recsvc.openapi import EVENTS

blueprint = Blueprint("events", __name__, url_prefix="/v1")


@blueprint.post("/events")
@requires(EVENTS.key_scope)
def post_events() -> Response:
    query_args(EVENTS)
    valid, rejected = parse_batch(request.get_json(silent=True), datetime.now(UTC))
    service = this_service()
    result = service.record(service.model(), valid)
    result.rejected = sorted(rejected + result.rejected, key=lambda r: r.index)
    status = 422 if result.rejected and not result.accepted and not result.duplicates else 200
    return encoded(result, status)


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
