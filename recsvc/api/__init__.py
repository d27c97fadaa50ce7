"""The HTTP layer: one blueprint per resource, errors rendered as problem+json."""

from __future__ import annotations

from flask import Flask

from recsvc.api import (
    catalog,
    channels,
    cors,
    customers,
    events,
    experiments,
    health,
    observability,
    problems,
    products,
    recommendations,
    triggers,
)


def init_app(app: Flask) -> None:
    observability.init_app(app)
    problems.init_app(app)
    health.init_app(app)
    recommendations.init_app(app)
    products.init_app(app)
    events.init_app(app)
    catalog.init_app(app)
    customers.init_app(app)
    triggers.init_app(app)
    experiments.init_app(app)
    channels.init_app(app)
    cors.init_app(app)
