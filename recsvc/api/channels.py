"""Website blocks, the embed script and email picks.

GET /v1/customers/<key>/blocks/<slot>?format=json|html[&category=]
GET /v1/blocks/<slot>?format=json|html                  (anonymous visitors)
GET /v1/embed.js
GET /v1/customers/<key>/email-picks?send_id=...&n=4&format=json|html
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, jsonify

from recsvc import api, channels, defaults
from recsvc.api.access import requires
from recsvc.api.observability import answered
from recsvc.api.params import category_arg, int_arg, query_args
from recsvc.api.problems import Problem, invalid_parameter
from recsvc.config import ServiceConfig
from recsvc.errors import StoreUnavailable
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel
from recsvc.render import block_html, email_html, embed_script

blueprint = Blueprint("channels", __name__, url_prefix="/v1")
HTML = "text/html; charset=utf-8"


@blueprint.get("/customers/<key>/blocks/<slot>")
@requires("blocks:read")
def customer_block(key: str, slot: str) -> Response:
    model = api.served_model()
    return _block(model, api.realtime().view(model, key), key, slot)


@blueprint.get("/blocks/<slot>")
@requires("blocks:read")
def anonymous_block(slot: str) -> Response:
    model = api.served_model()
    nobody = CustomerView(None, None, "", [], {}, degraded=False)
    return _block(model, nobody, None, slot)


def _block(model: ServedModel, view: CustomerView, key: str | None, slot: str) -> Response:
    args = query_args()
    output = _format(args)
    mask = category_arg(args, model)
    try:
        block = channels.block(model, view, key, slot, datetime.now(UTC).date(), mask)
    except channels.UnknownSlot:
        slots = ", ".join(sorted(channels.channels(model)["slots"]))
        raise Problem(
            404, "Unknown slot", f"slot {slot!r} is not configured; slots: {slots}"
        ) from None
    answered(fallback=block["fallback"], degraded=block["degraded"])
    if output == "html":
        currency = channels.channels(model)["currency_symbol"]
        return Response(block_html(block, currency), mimetype="text/html")
    return jsonify(block)


@blueprint.get("/embed.js")
def embed() -> Response:
    response = Response(embed_script(), mimetype="application/javascript")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.get("/customers/<key>/email-picks")
@requires("recs:read")
def email_picks(key: str) -> Response:
    args = query_args()
    send_id = (args.get("send_id") or "").strip()
    if not send_id or len(send_id) > 200:
        raise invalid_parameter("send_id", "required, 1 to 200 characters")
    n = int_arg(args, "n", default=defaults.EMAIL_DEFAULT_N, low=1, high=defaults.EMAIL_MAX_N)
    output = _format(args)
    model = api.served_model()
    realtime = api.realtime()
    view = realtime.view(model, key)
    fresh = channels.dumps(channels.email_picks(model, view, key, send_id, n))
    config: ServiceConfig = current_app.extensions["recsvc.config"]
    degraded = view.degraded
    try:
        kept = realtime.store.snapshot(
            view.store_key,
            channels.snapshot_key(send_id, n),
            fresh,
            config.snapshot_ttl_days * 86400.0,
        )
    except StoreUnavailable:
        kept, degraded = fresh, True  # not stored: a later render may differ
    picks = json.loads(kept)
    answered(fallback=picks["fallback"], degraded=degraded)
    if output == "html":
        return Response(email_html(picks), mimetype="text/html")
    return jsonify({**picks, "degraded": degraded})


def _format(args: Mapping[str, str]) -> str:
    output = args.get("format", "json")
    if output not in ("json", "html"):
        raise invalid_parameter("format", f"must be json or html, got {output!r}")
    return output


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
