"""GET /v1/customers/<customer_id>/recommendations"""

from __future__ import annotations

import math

from flask import Blueprint, Flask, Response, jsonify

from recsvc import api, defaults
from recsvc.api.params import int_arg
from recsvc.ranker import RankedItem, Ranker

blueprint = Blueprint("recommendations", __name__, url_prefix="/v1/customers")


@blueprint.get("/<customer_id>/recommendations")
def recommendations(customer_id: str) -> Response:
    n = int_arg("n", default=defaults.DEFAULT_N, low=1, high=defaults.MAX_N)
    model = api.served_model()
    ranking = model.ranker.recommend(customer_id, n)
    return jsonify(
        customer_id=ranking.customer_id or customer_id,
        model_version=model.version,
        fallback=ranking.fallback,
        items=[item_json(model.ranker, item) for item in ranking.items],
    )


def item_json(ranker: Ranker, item: RankedItem) -> dict[str, object]:
    price = float(ranker.arrays.prices[item.index])
    return {
        "item_id": str(ranker.arrays.item_ids[item.index]),
        "score": round(item.score, 6),
        "title": str(ranker.arrays.titles[item.index]),
        "price": None if math.isnan(price) else price,
    }


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
