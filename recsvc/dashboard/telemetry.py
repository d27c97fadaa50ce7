"""The service's own request figures for the overview, read from the same collectors as
``GET /metrics`` (every gunicorn worker's counts added up, as a scrape adds them).

Counters only count up, so a rate needs two readings: each reading is remembered (per
process; the counts are the whole service's, so any worker's readings serve) and a rate is
measured against the oldest one of the last ``DASHBOARD_RATE_WINDOW_SECONDS``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from recsvc import defaults, metrics
from recsvc.registry import ModelRegistry
from recsvc.store import Store

API_PREFIX = "/v1"  # the dashboard's own pages and /metrics are not the service's traffic
QUANTILES = (0.5, 0.99)


@dataclass
class RouteFigures:
    route: str
    requests: float = 0.0
    client_errors: float = 0.0  # 4xx
    server_errors: float = 0.0  # 5xx
    fallbacks: float = 0.0
    degraded: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    rate: float | None = None  # requests per second lately; None: not measured yet

    def quantile(self, q: float) -> float | None:
        """The latency (seconds) below which ``q`` of the requests answered, interpolated
        within a histogram bucket as Prometheus's histogram_quantile does."""
        return bucket_quantile(self.buckets, q)


@dataclass(frozen=True)
class Reading:
    routes: list[RouteFigures]  # busiest first
    total: RouteFigures
    rate_over: float | None  # the seconds the rates were measured over


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count <= 0:
        return None
    wanted = q * count
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        cumulative = buckets[bound]
        if cumulative >= wanted:
            if math.isinf(bound):
                return previous_bound  # beyond the largest bucket: its bound is all we know
            inside = cumulative - previous_count
            fraction = (wanted - previous_count) / inside if inside else 1.0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, cumulative
    return previous_bound


def figures_of(families: Iterable[Metric]) -> dict[str, RouteFigures]:
    """Per API route, from collected metric families."""
    routes: dict[str, RouteFigures] = {}

    def of(route: str) -> RouteFigures:
        return routes.setdefault(route, RouteFigures(route))

    for family in families:
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if not route.startswith(API_PREFIX):
                continue
            name, value = sample.name, float(sample.value)
            if name == "recsvc_requests_total":
                figures = of(route)
                figures.requests += value
                status = sample.labels.get("status", "")
                if status.startswith("4"):
                    figures.client_errors += value
                elif status.startswith("5"):
                    figures.server_errors += value
            elif name == "recsvc_fallbacks_total":
                of(route).fallbacks += value
            elif name == "recsvc_degraded_total":
                of(route).degraded += value
            elif name == "recsvc_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets = of(route).buckets
                buckets[bound] = buckets.get(bound, 0.0) + value
    return routes


class Telemetry:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        window: float = defaults.DASHBOARD_RATE_WINDOW_SECONDS,
    ) -> None:
        self.clock = clock
        self.window = window
        self._lock = threading.Lock()
        self._readings: deque[tuple[float, dict[str, float]]] = deque()

    def read(self, registry: ModelRegistry, store: Store) -> Reading:
        routes = figures_of(metrics.collected(registry, store))
        now = self.clock()
        counts = {route: figures.requests for route, figures in routes.items()}
        with self._lock:
            while self._readings and now - self._readings[0][0] > self.window:
                self._readings.popleft()
            earlier = self._readings[0] if self._readings else None
            self._readings.append((now, counts))
        rate_over = None
        if earlier is not None and now - earlier[0] >= 1.0:
            rate_over = now - earlier[0]
            for route, figures in routes.items():
                change = figures.requests - earlier[1].get(route, 0.0)
                figures.rate = change / rate_over if change >= 0 else None  # a restart
        total = RouteFigures("all API routes")
        for figures in routes.values():
            total.requests += figures.requests
            total.client_errors += figures.client_errors
            total.server_errors += figures.server_errors
            total.fallbacks += figures.fallbacks
            total.degraded += figures.degraded
            for bound, count in figures.buckets.items():
                total.buckets[bound] = total.buckets.get(bound, 0.0) + count
        if rate_over is not None:
            known = [figures.rate for figures in routes.values() if figures.rate is not None]
            total.rate = sum(known) if known else 0.0
        busiest = sorted(routes.values(), key=lambda figures: (-figures.requests, figures.route))
        return Reading(busiest, total, rate_over)
