"""Prometheus metrics.

Under gunicorn every worker counts into files in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py
sets it up) and a scrape adds the workers up. The bundle's figures are read at scrape time
from the worker that answers, as it sees them (it checks for new bundles every
RECSVC_RELOAD_SECONDS). The online figures (impressions, clicks, conversions, attributed
revenue) are the store's, so every worker and host scrapes the same totals.
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.errors import StoreUnavailable
from recsvc.registry import ModelRegistry
from recsvc.store import Store

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


ONLINE_LABELS = ["model_version", "experiment", "arm", "surface"]


class OnlineCollector(Collector):
    """What was shown and what came of it, per model version, experiment arm and surface,
    from the store (nothing while it does not answer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            figures = self.store.impression_figures().figures
        except StoreUnavailable:
            return
        counters = {
            name: CounterMetricFamily(f"recsvc_{name}", text, labels=ONLINE_LABELS)
            for name, text in (
                ("impressions", "Lists shown (answers with at least one item)"),
                ("impressions_clicked", "Impressions with at least one rec_click attributed"),
                ("impressions_converted", "Impressions with at least one purchase attributed"),
                ("attributed_revenue", "Revenue of the purchases attributed to impressions"),
            )
        }
        rates = {
            name: GaugeMetricFamily(f"recsvc_{name}", text, labels=ONLINE_LABELS)
            for name, text in (
                ("click_through_rate", "Impressions clicked / impressions"),
                ("conversion_rate", "Impressions converted / impressions"),
            )
        }
        for group in figures:
            labels = [group.model_version, group.experiment, group.arm, group.surface]
            values = group.values
            shown = values.get("impressions", 0.0)
            counters["impressions"].add_metric(labels, shown)
            counters["impressions_clicked"].add_metric(labels, values.get("clicked", 0.0))
            counters["impressions_converted"].add_metric(labels, values.get("converted", 0.0))
            counters["attributed_revenue"].add_metric(labels, values.get("revenue", 0.0))
            if shown:
                rates["click_through_rate"].add_metric(labels, values.get("clicked", 0.0) / shown)
                rates["conversion_rate"].add_metric(labels, values.get("converted", 0.0) / shown)
        yield from counters.values()
        yield from rates.values()


def _scrape(registry: ModelRegistry, store: Store) -> CollectorRegistry:
    """What one scrape reads: every worker's counts (under gunicorn), the bundle's, and the
    online figures the store holds."""
    scrape = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    else:
        scrape.register(METRICS)
    scrape.register(BundleCollector(registry))
    scrape.register(OnlineCollector(store))
    return scrape


def exposition(registry: ModelRegistry, store: Store) -> bytes:
    """The metrics text for one scrape."""
    return generate_latest(_scrape(registry, store))


def collected(registry: ModelRegistry, store: Store) -> list[Metric]:
    """The metric families a scrape would show, as objects (the dashboard reads these: the
    same numbers as /metrics)."""
    return list(_scrape(registry, store).collect())
