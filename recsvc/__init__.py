"""recsvc: the recommendation service. Loads model bundles and serves them over HTTP."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from flask import Flask

from recsvc.config import ServiceConfig
from recsvc.registry import ModelRegistry


def create_app(config: ServiceConfig | Mapping[str, str] | None = None) -> Flask:
    """Application factory. Without ``config`` the RECSVC_* environment is read, once, here."""
    if config is None:
        config = ServiceConfig.from_mapping(os.environ)
    elif not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_mapping(config)
    logging.getLogger("recsvc").setLevel(config.log_level)

    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["recsvc.config"] = config
    registry = ModelRegistry(config.models_dir)
    registry.load()
    app.extensions["recsvc.registry"] = registry

    from recsvc import api

    api.init_app(app)
    return app
