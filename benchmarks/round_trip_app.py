"""The service's app with one more route, for ``benchmarks/serving.py --endpoint round-trip``.

``GET /bench/customers/<key>/round-trip`` does what every customer read does before its own
work, and nothing after it: the API key's check, then the rate limit and the customer's state
in one store round trip (``recsvc.api.access.requires``); it answers as /healthz does. Its
requests/s against /healthz on the same gunicorn is therefore the most any customer endpoint
can reach on that store, whatever its ranking costs.
"""

from __future__ import annotations

from flask import Response

from recsvc.api.access import requires
from recsvc.api.json import encoded
from recsvc.schemas import Health
from recsvc.wsgi import app

ROUTE = "/bench/customers/<key>/round-trip"


@app.get(ROUTE)
@requires("recs:read")
def round_trip(key: str) -> Response:
    return encoded(Health("ok"))
