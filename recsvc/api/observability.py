"""Every request counted, timed and logged as one JSON line; GET /metrics.

A log line names the route template, never the path, because paths hold customer keys; the
customer appears only as a keyed hash (see recsvc.logs.CustomerHasher).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, Response, current_app, g, request

from recsvc import api, metrics
from recsvc.api.access import requires
from recsvc.logs import CustomerHasher

access_log = logging.getLogger("recsvc.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "unmatched"  # one label for every path no route knows, so 404 scans add no series


def answered(*, fallback: bool = False, degraded: bool = False) -> None:
    """Note what kind of answer this request got, for the metrics and the log line."""
    g.recsvc_fallback = fallback
    g.recsvc_degraded = degraded


def request_id() -> str:
    found: str = g.get("recsvc_request_id") or ""
    return found


def _start() -> None:
    g.recsvc_started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.recsvc_request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)


def _finish(response: Response) -> Response:
    started = g.get("recsvc_started")
    elapsed = time.perf_counter() - started if started is not None else 0.0
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    status = response.status_code
    metrics.REQUESTS.labels(route, request.method, str(status)).inc()
    metrics.LATENCY.labels(route).observe(elapsed)
    fallback = g.get("recsvc_fallback", False)
    degraded = g.get("recsvc_degraded", False)
    if fallback:
        metrics.FALLBACKS.labels(route).inc()
    if degraded:
        metrics.DEGRADED.labels(route).inc()
    identifier = request_id()
    response.headers["X-Request-ID"] = identifier
    line: dict[str, object] = {
        "request_id": identifier,
        "method": request.method,
        "route": route,
        "status": status,
        "latency_ms": round(elapsed * 1000, 3),
    }
    customer_key = (request.view_args or {}).get("key")
    if customer_key is not None:
        hasher: CustomerHasher = current_app.extensions["recsvc.hasher"]
        line["customer"] = hasher(str(customer_key))
    key_name = g.get("recsvc_key_name")
    if key_name is not None:
        line["api_key"] = key_name
    if fallback:
        line["fallback"] = True
    if degraded:
        line["degraded"] = True
    access_log.info("request", extra=line)
    return response


@requires("metrics:read")
def metrics_view() -> Response:
    return Response(metrics.exposition(api.registry()), content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask) -> None:
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
