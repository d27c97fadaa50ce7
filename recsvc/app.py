"""The Flask application: ``create_app`` builds the service and its HTTP layer."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

from flask import Flask

from recsvc import logs
from recsvc.config import ServiceConfig
from recsvc.service import SERVICE, Service

log = logging.getLogger(__name__)


def create_app(
    config: ServiceConfig | Mapping[str, str] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    wait: Callable[[float], object] = time.sleep,
) -> Flask:
    """Application factory. Without ``config`` the RECSVC_* environment is read, once, here.

    ``clock`` and ``wait`` are the service's seams for tests (see ``Service.start``)."""
    if config is None:
        config = ServiceConfig.from_mapping(os.environ)
    elif not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_mapping(config)
    logs.configure(config.log_level)
    if not config.auth:
        log.warning("RECSVC_AUTH=off: every request is allowed; use this for local work only")

    app = Flask(__name__)
    # Larger bodies get 413 (api.problems.refuse_large_body), unread where they declare a length.
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    from recsvc.api.json import OrjsonProvider

    app.json = OrjsonProvider(app)
    service = Service.start(config, clock, wait)
    app.extensions[SERVICE] = service

    @app.before_request
    def watch_for_new_bundles() -> None:
        # Here rather than at start: a thread started before gunicorn forks its workers
        # would not run in them.
        service.registry.watch(config.reload_seconds)

    from recsvc import api, dashboard

    api.init_app(app)
    dashboard.init_app(app)
    return app
