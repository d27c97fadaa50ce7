"""GET /v1/experiments (metrics:read) and POST /v1/experiments/end (admin): an A/B test of
bundles, its arms' online figures, and its end (see recsvc.experiments)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response
from msgspec import UNSET

from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.params import body_as, query_args
from recsvc.api.problems import invalid_parameter
from recsvc.openapi import END_EXPERIMENT, EXPERIMENTS
from recsvc.schemas import ExperimentEnd

blueprint = Blueprint("experiments", __name__, url_prefix="/v1")


@blueprint.get("/experiments")
@requires(EXPERIMENTS.key_scope)
def experiments() -> Response:
    query_args(EXPERIMENTS)
    return encoded(this_service().experiments())


@blueprint.post("/experiments/end")
@requires(END_EXPERIMENT.key_scope)
def end() -> Response:
    query_args(END_EXPERIMENT)
    asked = body_as(ExperimentEnd)
    promote = None if asked.promote is UNSET else asked.promote
    drop = None if asked.drop is UNSET else asked.drop
    if (promote is None) == (drop is None):
        raise invalid_parameter("promote", "give one of promote (an arm) or drop (an arm)")
    return encoded(this_service().end_experiment(promote, drop))


def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
