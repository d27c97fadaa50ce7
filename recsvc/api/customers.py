"""GET /v1/customers/<key>/profile and DELETE /v1/customers/<key> (erasure)."""

from __future__ import annotations

import msgspec
from flask import Blueprint, Flask, Response

from recsvc import api
from recsvc.api.access import requires
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import customer_key, query_args
from recsvc.api.problems import Problem, invalid_parameter
from recsvc.errors import StoreUnavailable, UnknownCustomer
from recsvc.identity import request_aliases
from recsvc.openapi import ERASE, PROFILE
from recsvc.registry import ServedModel
from recsvc.schemas import ErasureReceipt, Profile, Signals, SinceTraining, Tier
from recsvc.signals import customer_signals

blueprint = Blueprint("customers", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/profile")
@requires(PROFILE.key_scope)
def profile(key: str) -> Response:
    key = customer_key(key, query_args(PROFILE))
    model = api.served_model()
    customer = api.realtime().view(model, key)
    arrays = model.ranker.arrays
    trained_orders = 0 if customer.row is None else int(arrays.customer_orders[customer.row])
    recent_spend = customer.recent_spend
    answered(fallback=customer.row is None, degraded=customer.degraded)
    return encoded(
        Profile(
            customer_id=customer.customer_id or key,
            known=customer.row is not None,
            model_version=model.version,
            degraded=customer.degraded,
            tier=Tier.of(model.ranker.tiers.describe(customer.window_spend)),
            spend=round(customer.lifetime_spend, 2),
            orders=trained_orders,
            signals=msgspec.convert(customer_signals(model, customer), Signals),
            since_training=SinceTraining(
                events=len(customer.events),
                purchases=sum(1 for event in customer.events if event.quantity > 0),
                returns=sum(1 for event in customer.events if event.quantity < 0),
                spend=round(recent_spend, 2),
            ),
        )
    )


@blueprint.delete("/<key>")
@requires(ERASE.key_scope)
def erase(key: str) -> Response:
    key = customer_key(key, query_args(ERASE))
    model = api.served_model()
    _check_key_form(model, key)
    try:
        receipt = api.realtime().erase(model, key)
    except UnknownCustomer:
        raise Problem(
            404,
            "Unknown customer",
            "no customer is known by this key; it is on the erasure list all the same, so "
            "the next training drops any rows that carry it",
        ) from None
    except StoreUnavailable:
        raise Problem(
            503,
            "Store unavailable",
            "the erasure is recorded and every worker honours it, but the store could not be "
            "cleared now; retry",
            headers={"Retry-After": "1"},
        ) from None
    return encoded(
        ErasureReceipt(
            erased=True,
            customer_id=receipt.customer_id,
            aliases=receipt.aliases,
            events_removed=receipt.events_removed,
            erased_at=receipt.erased_at,
        )
    )


def _check_key_form(model: ServedModel, key: str) -> None:
    """A key naming nobody must at least be one the service could resolve: a typo such as
    ``emial:ann@example.com`` is a 400, not a silent no-op."""
    if model.ranker.customer_row(key) is not None:
        return
    aliases = model.ranker.aliases
    prefix, colon, rest = key.partition(":")
    if colon and len(request_aliases(key, aliases.rules, aliases.namespaces)) == 1:
        known = ", ".join(sorted({"email", "phone", *aliases.namespaces}))
        raise invalid_parameter(
            "customer_id",
            f"{prefix!r} is not a key type this service knows ({known}), or the value after "
            "it is not a valid address or number",
        )


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
