"""Website blocks, the embed script, visitor tokens and email picks.

GET /v1/customers/<key>/blocks/<slot>?format=json|html[&category=]
GET /v1/blocks/<slot>?format=json|html                  (anonymous visitors)
GET /v1/embed.js
POST /v1/visitor-tokens                                 (a shop's backend, recs:read)
GET /v1/customers/<key>/email-picks?send_id=...&n=4&format=json|html

A caller whose key grants only ``blocks:read`` (the publishable key in web pages) gets public
blocks (``channels.public_block``), and a named customer's own block only with a visitor token
minted for that key (header ``X-Recsvc-Token``); otherwise the anonymous block.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from flask import Blueprint, Flask, Response, current_app

from recsvc import api, channels, defaults, tokens
from recsvc.api.access import granted, requires
from recsvc.api.context import extensions, this_request
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import (
    body_as,
    category_arg,
    checked_text,
    customer_key,
    int_arg,
    query_args,
)
from recsvc.api.problems import Problem, invalid_parameter
from recsvc.config import ServiceConfig
from recsvc.errors import StoreUnavailable
from recsvc.openapi import ANONYMOUS_BLOCK, CUSTOMER_BLOCK, EMAIL_PICKS, VISITOR_TOKENS
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel
from recsvc.render import block_html, email_html, embed_script
from recsvc.schemas import Block, EmailPicks, PublicBlock, VisitorToken, VisitorTokenRequest
from recsvc.text import MAX_KEY_LENGTH, MAX_SEND_ID_LENGTH

blueprint = Blueprint("channels", __name__, url_prefix="/v1")
HTML = "text/html; charset=utf-8"
TOKEN_HEADER = "X-Recsvc-Token"


@blueprint.get("/customers/<key>/blocks/<slot>")
@requires(CUSTOMER_BLOCK.key_scope)
def customer_block(key: str, slot: str) -> Response:
    args = query_args(CUSTOMER_BLOCK)
    key = customer_key(key, args)
    model = api.served_model()
    if granted("recs:read"):
        return _block(model, api.realtime().view(model, key), key, slot, args, public=False)
    if not _visitor_proven(key):
        return _block(model, _anonymous(), None, slot, args, public=True)
    return _block(model, api.realtime().view(model, key), key, slot, args, public=True)


@blueprint.get("/blocks/<slot>")
@requires(ANONYMOUS_BLOCK.key_scope)
def anonymous_block(slot: str) -> Response:
    args = query_args(ANONYMOUS_BLOCK)
    model = api.served_model()
    return _block(model, _anonymous(), None, slot, args, public=not granted("recs:read"))


def _anonymous() -> CustomerView:
    return CustomerView(None, None, "", [], {}, degraded=False)


def _visitor_proven(key: str) -> bool:
    """Whether the request carries a valid visitor token for ``key``."""
    token = this_request().headers.get(TOKEN_HEADER)
    config: ServiceConfig = extensions()["recsvc.config"]
    return token is not None and tokens.verify(config.secret_key, key, token.strip())


def _block(
    model: ServedModel,
    view: CustomerView,
    key: str | None,
    slot: str,
    args: Mapping[str, str],
    public: bool,
) -> Response:
    output = _format(args)
    mask = category_arg(args, model)
    try:
        block = channels.block(model, view, key, slot, datetime.now(UTC).date(), mask)
    except channels.UnknownSlot:
        slots = ", ".join(sorted(channels.channels(model).slots))
        raise Problem(
            404, "Unknown slot", f"slot {slot!r} is not configured; slots: {slots}"
        ) from None
    answered(fallback=block["fallback"], degraded=block["degraded"])
    if public:
        block = channels.public_block(block, personalised=key is not None)
    if output == "html":
        currency = channels.channels(model).currency_symbol
        return Response(block_html(block, currency), mimetype="text/html")
    return encoded(msgspec.convert(block, PublicBlock if public else Block))


@blueprint.get("/embed.js")
def embed() -> Response:
    response = Response(embed_script(), mimetype="application/javascript")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.post("/visitor-tokens")
@requires(VISITOR_TOKENS.key_scope)
def visitor_token() -> Response:
    """A token for the page the shop serves to a logged-in customer (see recsvc.tokens)."""
    query_args(VISITOR_TOKENS)
    asked = body_as(VisitorTokenRequest)
    customer, ttl = checked_text("customer", asked.customer, MAX_KEY_LENGTH), asked.ttl
    config: ServiceConfig = extensions()["recsvc.config"]
    if not config.secret_key:
        raise Problem(
            503,
            "Visitor tokens unavailable",
            "the service has no RECSVC_SECRET_KEY, so it can neither sign nor check tokens",
        )
    now = int(time.time())
    token = tokens.mint(config.secret_key, customer, ttl, now=now)
    expires_at = datetime.fromtimestamp(now + ttl, UTC).isoformat(timespec="seconds")
    return encoded(VisitorToken(token, expires_at))


@blueprint.get("/customers/<key>/email-picks")
@requires(EMAIL_PICKS.key_scope)
def email_picks(key: str) -> Response:
    args = query_args(EMAIL_PICKS)
    key = customer_key(key, args)
    send_id = checked_text("send_id", args.get("send_id") or "", MAX_SEND_ID_LENGTH).strip()
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
    picks = msgspec.json.decode(kept, type=EmailPicks)
    answered(fallback=picks.fallback, degraded=degraded)
    if output == "html":
        return Response(email_html(msgspec.to_builtins(picks)), mimetype="text/html")
    return encoded(msgspec.structs.replace(picks, degraded=degraded))


def _format(args: Mapping[str, str]) -> str:
    output = args.get("format", "json")
    if output not in ("json", "html"):
        raise invalid_parameter("format", f"must be json or html, got {output!r}")
    return output


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
