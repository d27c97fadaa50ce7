"""GET /v1/customers/<key>/recommendations"""

from __future__ import annotations

import orjson
from flask import Blueprint, Flask, Response

from recsvc import api, defaults
from recsvc.api.access import requires
from recsvc.api.observability import answered
from recsvc.api.params import category_arg, int_arg

blueprint = Blueprint("recommendations", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/recommendations")
@requires("recs:read")
def recommendations(key: str) -> Response:
    n = int_arg("n", default=defaults.DEFAULT_N, low=1, high=defaults.MAX_N)
    model = api.served_model()
    customer = api.realtime().view(model, key)
    tiers = model.ranker.tiers
    tier = tiers.index(customer.window_spend)
    mask = category_arg(model)
    ranking = model.ranker.recommend_row(customer.row, n, customer.deltas, tier, allowed=mask)
    answered(fallback=ranking.fallback, degraded=customer.degraded)
    body = {
        "customer_id": ranking.customer_id or key,
        "model_version": model.version,
        "fallback": ranking.fallback,
        "degraded": customer.degraded,
        "tier": tiers.describe(customer.window_spend),
        "items": [
            {
                "item_id": model.item_ids[item.index],
                "score": round(item.score, 6),
                "title": model.titles[item.index],
                "price": model.prices[item.index],
            }
            for item in ranking.items
        ],
    }
    # The hot path: serialised here rather than through jsonify's app-context lookups.
    return Response(orjson.dumps(body), mimetype="application/json")


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
