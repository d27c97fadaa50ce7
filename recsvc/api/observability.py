"""Every request counted, timed and logged as one JSON line; GET /metrics.

A log line names the route template, never the path, because paths hold customer keys; the
customer appears only as a keyed hash (see recsvc.logs.CustomerHasher).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, Response

from recsvc import metrics
from recsvc.api.access import KEY_NAME, requires
from recsvc.api.context import this_request, this_service

access_log = logging.getLogger("recsvc.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "unmatched"  # one label for every path no route knows, so 404 scans add no series


# Per-request state lives in the WSGI environ: one lookup of the request, not one context-local
# lookup per value.
STARTED = "recsvc.started"
REQUEST_ID = "recsvc.request_id"
ANSWER = "recsvc.answer"  # (fallback, degraded)


def answered(*, fallback: bool = False, degraded: bool = False) -> None:
    """Note what kind of answer this request got, for the metrics and the log line."""
    this_request().environ[ANSWER] = (fallback, degraded)


def _start() -> None:
    environ = this_request().environ
    environ[STARTED] = time.perf_counter()
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    environ[REQUEST_ID] = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)


class _RouteMetrics:
    """The labelled metric children of one (route, method, status), looked up once."""

    def __init__(self, route: str, method: str, status: int) -> None:
        self.requests = metrics.REQUESTS.labels(route, method, str(status))
        self.latency = metrics.LATENCY.labels(route)
        self.fallbacks = metrics.FALLBACKS.labels(route)
        self.degraded = metrics.DEGRADED.labels(route)


_route_metrics: dict[tuple[str, str, int], _RouteMetrics] = {}


def _finish(response: Response) -> Response:
    served = this_request()
    environ = served.environ
    started = environ.get(STARTED)
    elapsed = time.perf_counter() - started if started is not None else 0.0
    rule = served.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    status = response.status_code
    method = served.method
    labels = (route, method, status)
    counted = _route_metrics.get(labels)
    if counted is None:
        counted = _route_metrics.setdefault(labels, _RouteMetrics(*labels))
    counted.requests.inc()
    counted.latency.observe(elapsed)
    fallback, degraded = environ.get(ANSWER, (False, False))
    if fallback:
        counted.fallbacks.inc()
    if degraded:
        counted.degraded.inc()
    identifier = environ.get(REQUEST_ID) or secrets.token_hex(8)
    response.headers["X-Request-ID"] = identifier
    line: dict[str, object] = {
        "request_id": identifier,
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": round(elapsed * 1000, 3),
    }
    customer_key = (served.view_args or {}).get("key")
    if customer_key is not None:
        line["customer"] = this_service().hasher(str(customer_key))
    key_name = environ.get(KEY_NAME)
    if key_name is not None:
        line["api_key"] = key_name
    if fallback:
        line["fallback"] = True
    if degraded:
        line["degraded"] = True
    access_log.info("request", extra={"fields": line})
    return response


@requires("metrics:read")
def metrics_view() -> Response:
    service = this_service()
    service.impressions.flush()  # this worker's impressions count at once
    exposition = metrics.exposition(service.registry, service.store)
    return Response(exposition, content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask) -> None:
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
