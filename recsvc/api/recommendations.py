"""GET /v1/customers/<key>/recommendations (or /v1/customers/~/recommendations?key=<key>)"""

from __future__ import annotations

import orjson
from flask import Blueprint, Flask, Response

from recsvc import api, defaults
from recsvc.api.access import requires
from recsvc.api.observability import answered
from recsvc.api.params import category_arg, customer_key, int_arg, query_args

blueprint = Blueprint("recommendations", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/recommendations")
@requires("recs:read")
def recommendations(key: str) -> Response:
    args = query_args()
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
    body = {
        "customer_id": customer.customer_id or key,
        "model_version": model.version,
        "fallback": ranking.fallback,
        "degraded": customer.degraded,
        "tier": tiers.describe(customer.window_spend),
        "items": [
            {
                "item_id": item_ids[item.index],
                "score": item.score,
                "title": titles[item.index],
                "price": prices[item.index],
            }
            for item in ranking.items
        ],
    }
    # The hot path: serialised here rather than through jsonify's app-context lookups.
    return Response(orjson.dumps(body), content_type="application/json")


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
