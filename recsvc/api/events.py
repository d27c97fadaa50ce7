"""POST /v1/events: purchases and returns as they happen.

Valid events of a batch are applied even when others are rejected; the response says, per
event, what happened. Replaying a batch changes nothing (idempotent by event_id).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, jsonify, request

from recsvc import api, defaults
from recsvc.api.access import requires
from recsvc.api.problems import Problem
from recsvc.errors import StoreUnavailable
from recsvc.events import BatchError, parse_batch

blueprint = Blueprint("events", __name__, url_prefix="/v1")


@blueprint.post("/events")
@requires("events:write")
def post_events() -> tuple[Response, int]:
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
    return jsonify(
        accepted=accepted,
        duplicates=duplicates,
        rejected=[asdict(rejection) for rejection in rejections],
    ), status


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
