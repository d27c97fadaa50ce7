"""Prometheus metrics.

Under gunicorn every worker counts into files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py
sets it up) and a scrape adds the workers up. The bundle's figures are read at scrape time
from the worker that answers, as it sees them (it checks for new bundles every
RECSVC_RELOAD_SECONDS).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.registry import ModelRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Ours alone, so a scrape does not carry the client library's process and GC metrics twice.
METRICS = CollectorRegistry()

REQUESTS = Counter(
    "recsvc_requests",
    "HTTP requests answered, by route template",
    ["route", "method", "status"],
    registry=METRICS,
)
LATENCY = Histogram(
    "recsvc_request_duration_seconds",
    "Time from receiving a request to its response being ready, by route template",
    ["route"],
    registry=METRICS,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FALLBACKS = Counter(
    "recsvc_fallbacks",
    "Answers for customers the model does not know (popular items instead of personal ones)",
    ["route"],
    registry=METRICS,
)
DEGRADED = Counter(
    "recsvc_degraded",
    "Answers from the bundle alone because the real-time store was unavailable",
    ["route"],
    registry=METRICS,
)


class BundleCollector(Collector):
    """The served bundle's version and age, the refusals of broken bundles, and whether a
    fallback is served."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        model = self.registry.model
        info = GaugeMetricFamily(
            "recsvc_bundle_info", "The bundle being served (value 1)", labels=["version"]
        )
        age = GaugeMetricFamily(
            "recsvc_bundle_age_seconds", "Seconds since the served bundle was trained"
        )
        if model is not None:
            info.add_metric([model.version], 1.0)
            age.add_metric([], max(time.time() - model.created, 0.0))
        refused = GaugeMetricFamily(
            "recsvc_bundle_refused",
            "1 while the published bundle has been refused (failed verification) and an older "
            "one is served",
            labels=["version"],
        )
        if self.registry.refused is not None:
            refused.add_metric([self.registry.refused], 1.0)
        fallback = GaugeMetricFamily(
            "recsvc_bundle_fallback",
            "1 while the bundle served was chosen at start because the one current names was "
            "refused (version: served, current: the refused one)",
            labels=["version", "current"],
        )
        if model is not None and self.registry.fallback_from is not None:
            fallback.add_metric([model.version, self.registry.fallback_from], 1.0)
        refusals = GaugeMetricFamily(
            "recsvc_bundle_refusals",
            "Published bundles this worker refused since it started",
            value=float(self.registry.refusals),
        )
        yield from (info, age, refused, fallback, refusals)


def _scrape(registry: ModelRegistry) -> CollectorRegistry:
    """What one scrape reads: every worker's counts (under gunicorn) and the bundle's."""
    scrape = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    else:
        scrape.register(METRICS)
    scrape.register(BundleCollector(registry))
    return scrape


def exposition(registry: ModelRegistry) -> bytes:
    """The metrics text for one scrape."""
    return generate_latest(_scrape(registry))


def collected(registry: ModelRegistry) -> list[Metric]:
    """The metric families a scrape would show, as objects (the dashboard reads these: the
    same numbers as /metrics)."""
    return list(_scrape(registry).collect())
