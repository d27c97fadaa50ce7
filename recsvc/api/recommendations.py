"""GET /v1/customers/<key>/recommendations (or /v1/customers/~/recommendations?key=<key>)"""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from recsvc import defaults
from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.observability import answered
from recsvc.api.params import checked_text, customer_key, int_arg, item_filter, query_args
from recsvc.openapi import RECOMMENDATIONS
from recsvc.text import MAX_COUNTRY_LENGTH

blueprint = Blueprint("recommendations", __name__, url_prefix="/v1/customers")


@blueprint.get("/<key>/recommendations")
@requires(RECOMMENDATIONS.key_scope)
def recommendations(key: str) -> Response:
    args = query_args(RECOMMENDATIONS)
    key = customer_key(key, args)
    n = int_arg(args, "n", default=defaults.DEFAULT_N, low=1, high=defaults.MAX_N)
    filters = item_filter(args)
    country = args.get("country")
    if country is not None:
        checked_text("country", country, MAX_COUNTRY_LENGTH)
    service = this_service()
    model, assignment = service.serving(key)
    answer = service.recommendations(model, key, n, filters, country, assignment)
    answered(fallback=answer.fallback, degraded=answer.degraded)
    return encoded(answer)


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
