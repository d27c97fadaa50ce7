"""GET /v1/customers/<key>/recommendations (or /v1/customers/~/recommendations?key=<key>)"""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from recsvc import api, defaults
from recsvc.api.access import requires
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import category_arg, customer_key, int_arg, query_args
from recsvc.openapi import RECOMMENDATIONS
from recsvc.schemas import Recommendation, Recommendations, Tier

blueprint = Blueprint("recommendations", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/recommendations")
@requires(RECOMMENDATIONS.key_scope)
def recommendations(key: str) -> Response:
    args = query_args(RECOMMENDATIONS)
    key = customer_key(key, args)
    n = int_arg(args, "n", default=defaults.DEFAULT_N, low=1, high=defaults.MAX_N)
    model = api.served_model()
    customer = api.realtime().view(model, key)
    tiers = model.ranker.tiers
    tier = tiers.index(customer.window_spend)
    mask = category_arg(args, model)
    ranking = model.ranker.recommend_row(customer.row, n, customer.deltas, tier, allowed=mask)
    answered(fallback=ranking.fallback, degraded=customer.degraded)
    item_ids, titles, prices = model.item_ids, model.titles, model.prices
    return encoded(
        Recommendations(
            customer.customer_id or key,
            model.version,
            ranking.fallback,
            customer.degraded,
            Tier.of(tiers.describe(customer.window_spend)),
            [
                Recommendation(
                    item_ids[item.index], item.score, titles[item.index], prices[item.index]
                )
                for item in ranking.items
            ],
        )
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
