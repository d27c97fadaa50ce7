"""GET /v1/triggers: customers whose CRM trigger fired, with the reason and the figures.

Triggers come from training (every kind) and from events since (tier_up, threshold,
thank_you). Paged: ``limit`` per page, ``cursor`` from the previous page's ``next_cursor``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, jsonify

from recsvc import api
from recsvc.api.access import requires
from recsvc.api.observability import answered
from recsvc.api.params import int_arg, query_args
from recsvc.api.problems import invalid_parameter
from recsvc.errors import StoreUnavailable
from recsvc.identity import CANONICAL
from recsvc.openapi import TRIGGERS
from recsvc.store import customer_key

KINDS = ("lapsing", "tier_up", "thank_you", "threshold")
blueprint = Blueprint("triggers", __name__, url_prefix="/v1")


@blueprint.get("/triggers")
@requires("recs:read")
def triggers() -> Response:
    args = query_args(TRIGGERS)
    kinds = _kinds(args.get("kind"))
    since = _since(args.get("since"))
    limit = int_arg(args, "limit", default=100, low=1, high=1000)
    cursor = int_arg(args, "cursor", default=0, low=0, high=10**9)
    model = api.served_model()
    realtime = api.realtime()
    arrays = model.ranker.arrays
    degraded = False
    try:
        erased = realtime.store.erased_keys() | realtime.erased
        live = [json.loads(text) for text in realtime.store.triggers_since(since)]
    except StoreUnavailable:
        erased, live, degraded = set(realtime.erased), [], True
    answered(degraded=degraded)
    found: list[dict[str, Any]] = []
    for position in range(len(arrays.trigger_rows)):
        kind = str(arrays.trigger_kinds[position])
        at = int(arrays.trigger_at[position])
        if kind not in kinds or at <= since:
            continue
        customer = str(arrays.customer_ids[arrays.trigger_rows[position]])
        if customer_key(realtime.key, f"{CANONICAL}:{customer}") in erased:
            continue
        found.append(
            {
                "customer_id": customer,
                "kind": kind,
                "fired_at": at,
                "reason": str(arrays.trigger_reasons[position]),
                "figures": json.loads(str(arrays.trigger_figures[position])),
            }
        )
    for trigger in live:
        if trigger["kind"] in kinds and trigger.pop("store_key") not in erased:
            found.append(trigger)
    found.sort(key=lambda t: (t["fired_at"], t["customer_id"], t["kind"]))
    page = found[cursor : cursor + limit]
    for trigger in page:
        trigger["fired_at"] = datetime.fromtimestamp(trigger["fired_at"], UTC).isoformat()
    more = cursor + limit < len(found)
    return jsonify(
        model_version=model.version,
        degraded=degraded,
        triggers=page,
        next_cursor=str(cursor + limit) if more else None,
    )


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
