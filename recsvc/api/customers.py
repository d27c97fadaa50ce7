"""GET /v1/customers/<key>/profile and DELETE /v1/customers/<key> (erasure)."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Flask, Response, jsonify

from recsvc import api
from recsvc.api.access import requires
from recsvc.api.observability import answered
from recsvc.api.problems import Problem
from recsvc.errors import StoreUnavailable
from recsvc.signals import customer_signals

blueprint = Blueprint("customers", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/profile")
@requires("recs:read")
def profile(key: str) -> Response:
    model = api.served_model()
    customer = api.realtime().view(model, key)
    arrays = model.ranker.arrays
    trained_orders = 0 if customer.row is None else int(arrays.customer_orders[customer.row])
    recent_spend = customer.recent_spend
    answered(fallback=customer.row is None, degraded=customer.degraded)
    return jsonify(
        customer_id=customer.customer_id or key,
        known=customer.row is not None,
        model_version=model.version,
        degraded=customer.degraded,
        tier=model.ranker.tiers.describe(customer.window_spend),
        spend=round(customer.lifetime_spend, 2),
        orders=trained_orders,
        signals=customer_signals(model, customer),
        since_training={
            "events": len(customer.events),
            "purchases": sum(1 for event in customer.events if event.quantity > 0),
            "returns": sum(1 for event in customer.events if event.quantity < 0),
            "spend": round(recent_spend, 2),
        },
    )


@blueprint.delete("/<key>")
@requires("admin")
def erase(key: str) -> Response:
    model = api.served_model()
    try:
        receipt = api.realtime().erase(model, key)
    except StoreUnavailable:
        raise Problem(
            503,
            "Store unavailable",
            "the customer could not be erased now; retry",
            headers={"Retry-After": "1"},
        ) from None
    return jsonify(erased=True, **asdict(receipt))


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
