"""GET /v1/triggers: customers whose CRM trigger fired, with the reason and the figures.

Triggers come from training (every kind) and from events since (tier_up, threshold,
thank_you); see recsvc.triggers. Paged: ``limit`` per page, ``cursor`` from the previous
page's ``next_cursor``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, jsonify

from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.observability import answered
from recsvc.api.params import int_arg, query_args
from recsvc.api.problems import invalid_parameter
from recsvc.openapi import TRIGGERS
from recsvc.triggers import KINDS, BadCursor, Key, decode_cursor, encode_cursor

blueprint = Blueprint("triggers", __name__, url_prefix="/v1")


@blueprint.get("/triggers")
@requires("recs:read")
def triggers() -> Response:
    args = query_args(TRIGGERS)
    kinds = _kinds(args.get("kind"))
    since = _since(args.get("since"))
    limit = int_arg(args, "limit", default=100, low=1, high=1000)
    after = _cursor(args.get("cursor"))
    service = this_service()
    model = service.model()
    page = service.triggers_page(model, kinds, since, after, limit)
    answered(degraded=page.degraded)
    return jsonify(
        model_version=model.version,
        degraded=page.degraded,
        triggers=page.triggers,
        next_cursor=None if page.last is None else encode_cursor(page.last),
    )


def _cursor(raw: str | None) -> Key | None:
    if raw is None:
        return None
    try:
        return decode_cursor(raw.strip())
    except BadCursor:
        # Not echoed: a cursor holds a customer id.
        raise invalid_parameter(
            "cursor", "is not a cursor from this feed: pass next_cursor unchanged"
        ) from None


def _kinds(raw: str | None) -> set[str]:
    if raw is None:
        return set(KINDS)
    kinds = {kind.strip() for kind in raw.split(",") if kind.strip()}
    unknown = kinds - set(KINDS)
    if not kinds or unknown:
        raise invalid_parameter("kind", f"must be some of {', '.join(KINDS)}, got {raw!r}")
    return kinds


def _since(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter("since", f"must be an ISO 8601 time, got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
