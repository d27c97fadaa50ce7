"""The HTTP layer: one blueprint per resource, errors rendered as problem+json."""

from __future__ import annotations

from flask import Flask

from recsvc.api import (
    channels,
    cors,
    customers,
    events,
    health,
    observability,
    problems,
    recommendations,
    triggers,
)
from recsvc.api.context import extensions
from recsvc.realtime import Realtime
from recsvc.registry import ModelRegistry, ServedModel


def init_app(app: Flask) -> None:
    observability.init_app(app)
    problems.init_app(app)
    health.init_app(app)
    recommendations.init_app(app)
    events.init_app(app)
    customers.init_app(app)
    triggers.init_app(app)
    channels.init_app(app)
    cors.init_app(app)


def registry() -> ModelRegistry:
    found: ModelRegistry = extensions()["recsvc.registry"]
    return found


def realtime() -> Realtime:
    found: Realtime = extensions()["recsvc.realtime"]
    return found


def served_model() -> ServedModel:
    """The model for this request, or a 503 problem when none is loaded."""
    model = registry().model
    if model is None:
        raise problems.Problem(503, "No model loaded", registry().last_error or "no bundle yet")
    return model
