"""Website blocks, the embed script, visitor tokens and email picks.

GET /v1/customers/<key>/blocks/<slot>?format=json|html[&category=&min_price=&max_price=]
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
from flask import Blueprint, Flask, Response

from recsvc import channels, defaults, tokens
from recsvc.api.access import granted, requires
from recsvc.api.context import this_request, this_service
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import (
    body_as,
    cart_items,
    checked_text,
    customer_key,
    int_arg,
    item_filter,
    query_args,
)
from recsvc.api.problems import Problem, invalid_parameter
from recsvc.errors import RecsvcError
from recsvc.filters import ItemFilter
from recsvc.openapi import ANONYMOUS_BLOCK, CUSTOMER_BLOCK, EMAIL_PICKS, VISITOR_TOKENS
from recsvc.render import block_html, email_html, embed_script
from recsvc.schemas import Block, PublicBlock, VisitorToken, VisitorTokenRequest
from recsvc.service import Service
from recsvc.text import MAX_KEY_LENGTH, MAX_SEND_ID_LENGTH

blueprint = Blueprint("channels", __name__, url_prefix="/v1")
HTML = "text/html; charset=utf-8"
TOKEN_HEADER = "X-Recsvc-Token"


@blueprint.get("/customers/<key>/blocks/<slot>")
@requires(CUSTOMER_BLOCK.key_scope)
def customer_block(key: str, slot: str) -> Response:
    args = query_args(CUSTOMER_BLOCK)
    key = customer_key(key, args)
    service = this_service()
    if granted("recs:read"):
        return _block(service, key, slot, args, public=False)
    if not service.visitor_proven(key, this_request().headers.get(TOKEN_HEADER)):
        return _block(service, None, slot, args, public=True)
    return _block(service, key, slot, args, public=True)


@blueprint.get("/blocks/<slot>")
@requires(ANONYMOUS_BLOCK.key_scope)
def anonymous_block(slot: str) -> Response:
    args = query_args(ANONYMOUS_BLOCK)
    return _block(this_service(), None, slot, args, public=not granted("recs:read"))


def _block(
    service: Service, key: str | None, slot: str, args: Mapping[str, str], public: bool
) -> Response:
    """The block of the customer ``key`` names (None: an anonymous visitor), by the model
    of their experiment arm."""
    output = _format(args)
    cart = None if "items" not in args else cart_items(args["items"])
    model, assignment = service.serving(key)
    block = service.block(model, key, slot, item_filter(args), cart=cart, assignment=assignment)
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
    config = this_service().config
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


def _email_send(args: Mapping[str, str]) -> tuple[str, int, ItemFilter]:
    """The send id, number of picks and filters an email-picks request asks for."""
    send_id = checked_text("send_id", args.get("send_id") or "", MAX_SEND_ID_LENGTH).strip()
    n = int_arg(args, "n", default=defaults.EMAIL_DEFAULT_N, low=1, high=defaults.EMAIL_MAX_N)
    return send_id, n, item_filter(args)


def _asked_send() -> str | None:
    """The snapshot key of the send this request asks for, read ahead with its customer's
    state; None for arguments the view will refuse."""
    try:
        send_id, n, filters = _email_send(query_args(EMAIL_PICKS))
    except (Problem, RecsvcError):  # the view's to report, after the rate limit
        return None
    return channels.snapshot_key(send_id, n, filters.key())


@blueprint.get("/customers/<key>/email-picks")
@requires(EMAIL_PICKS.key_scope, send=_asked_send)
def email_picks(key: str) -> Response:
    args = query_args(EMAIL_PICKS)
    key = customer_key(key, args)
    send_id, n, filters = _email_send(args)
    output = _format(args)
    service = this_service()
    model, assignment = service.serving(key)
    picks = service.email_picks(model, key, send_id, n, filters, assignment)
    answered(fallback=picks.fallback, degraded=picks.degraded)
    if output == "html":
        return Response(email_html(msgspec.to_builtins(picks)), mimetype="text/html")
    return encoded(picks)


def _format(args: Mapping[str, str]) -> str:
    output = args.get("format", "json")
    if output not in ("json", "html"):
        raise invalid_parameter("format", f"must be json or html, got {output!r}")
    return output


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
