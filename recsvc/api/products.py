"""Products bought together (see ``recsvc.products``).

GET /v1/items/<item_id>/similar?n=10[&customer=<key>][&category=&min_price=&max_price=]
GET /v1/cart/recommendations?items=A,B,C[&customer=<key>][&n=6][&country=][&category=...]

Scope ``blocks:read``: a product page and a cart may be shown to anyone. A key with only
that scope (the publishable key in web pages) names a ``customer`` only with a visitor token
for them (header ``X-Recsvc-Token``): otherwise a page's key could ask, item by item, what any
customer owns.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, Flask, Response

from recsvc import defaults
from recsvc.api.access import granted, requires
from recsvc.api.channels import TOKEN_HEADER
from recsvc.api.context import this_request, this_service
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import cart_items, checked_text, int_arg, item_filter, query_args
from recsvc.errors import Forbidden
from recsvc.openapi import CART, SIMILAR
from recsvc.schemas import MAX_ITEM_ID_LENGTH
from recsvc.text import MAX_COUNTRY_LENGTH, MAX_KEY_LENGTH

blueprint = Blueprint("products", __name__, url_prefix="/v1")


@blueprint.get("/items/<item_id>/similar")
@requires(SIMILAR.key_scope)
def similar(item_id: str) -> Response:
    args = query_args(SIMILAR)
    checked_text("item_id", item_id, MAX_ITEM_ID_LENGTH)
    n = int_arg(args, "n", default=defaults.DEFAULT_N, low=1, high=defaults.MAX_N)
    filters = item_filter(args)
    service = this_service()
    customer = _customer(args)
    model, assignment = service.serving(customer)
    answer = service.similar(model, item_id, n, filters, customer, assignment)
    answered(fallback=answer.fallback, degraded=answer.degraded)
    return encoded(answer)


@blueprint.get("/cart/recommendations")
@requires(CART.key_scope)
def cart() -> Response:
    args = query_args(CART)
    items = cart_items(args.get("items"))
    n = int_arg(args, "n", default=defaults.CART_DEFAULT_N, low=1, high=defaults.MAX_N)
    filters = item_filter(args)
    country = args.get("country")
    if country is not None:
        checked_text("country", country, MAX_COUNTRY_LENGTH)
    service = this_service()
    customer = _customer(args)
    model, assignment = service.serving(customer)
    answer = service.cart(model, items, n, filters, customer, country, assignment)
    answered(fallback=answer.fallback, degraded=answer.degraded)
    return encoded(answer)


def _customer(args: Mapping[str, str]) -> str | None:
    """The ``customer`` a request names, when its key may name them."""
    key = args.get("customer")
    if key is None:
        return None
    checked_text("customer", key, MAX_KEY_LENGTH)
    if granted("recs:read"):
        return key
    if this_service().visitor_proven(key, this_request().headers.get(TOKEN_HEADER)):
        return key
    raise Forbidden(
        f"a blocks:read key names a customer only with a visitor token for them ({TOKEN_HEADER})"
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
