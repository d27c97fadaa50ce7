"""recsvc: the recommendation service. Loads model bundles and serves them over HTTP."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

from flask import Flask

from recsvc import defaults, logs
from recsvc.auth import Authenticator
from recsvc.config import ServiceConfig
from recsvc.events import STORE_FILE, ErasureLog, EventLog, logs_origin
from recsvc.logs import CustomerHasher
from recsvc.ratelimit import RateLimiter
from recsvc.realtime import Realtime
from recsvc.registry import ModelRegistry
from recsvc.store import EmbeddedStore, RedisStore, Store

log = logging.getLogger(__name__)


def create_app(
    config: ServiceConfig | Mapping[str, str] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    wait: Callable[[float], object] = time.sleep,
) -> Flask:
    """Application factory. Without ``config`` the RECSVC_* environment is read, once, here.

    ``clock`` (the store's and the rate limiter's time) and ``wait`` (the bundle watcher's pause
    between checks) are seams for tests, which drive them instead of sleeping."""
    if config is None:
        config = ServiceConfig.from_mapping(os.environ)
    elif not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_mapping(config)
    logs.configure(config.log_level)
    if not config.auth:
        log.warning("RECSVC_AUTH=off: every request is allowed; use this for local work only")
    if config.identity_key.development:
        log.warning(
            "alias digests use the published development secret (RECSVC_ID_SECRET unset or set "
            "to it): anyone can reverse them; "
            "use this for local work only"
        )

    app = Flask(__name__)
    # Larger bodies get 413 (api.problems.refuse_large_body), unread where they declare a length.
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    from recsvc.api.json import OrjsonProvider

    app.json = OrjsonProvider(app)
    app.extensions["recsvc.config"] = config
    registry = ModelRegistry(config.models_dir, config.identity_key, wait=wait)
    registry.load()
    app.extensions["recsvc.registry"] = registry

    @app.before_request
    def watch_for_new_bundles() -> None:
        # Here rather than at start: a thread started before gunicorn forks its workers
        # would not run in them.
        registry.watch(config.reload_seconds)

    store = make_store(config, clock)
    realtime = Realtime(
        store, EventLog(config.events_dir), ErasureLog(config.events_dir), config.identity_key
    )
    if registry.model is not None:
        realtime.restore(registry.model)  # a Redis that lost its data is rebuilt before use
    app.extensions["recsvc.realtime"] = realtime
    app.extensions["recsvc.auth"] = Authenticator(config.api_keys) if config.auth else None
    app.extensions["recsvc.limiter"] = RateLimiter(store, config.rate_limit, clock)
    app.extensions["recsvc.hasher"] = CustomerHasher(config.log_salt or os.urandom(16))

    from recsvc import api

    api.init_app(app)
    return app


def make_store(config: ServiceConfig, clock: Callable[[], float] = time.time) -> Store:
    retention = config.event_retention_days * 86400.0
    if config.redis_url is None:
        return EmbeddedStore(config.events_dir / STORE_FILE, retention, clock)
    return RedisStore(
        config.redis_url,
        config.redis_prefix,
        retention,
        origin=logs_origin(config.events_dir),
        timeout=config.store_timeout_ms / 1000,
        cooldown=defaults.STORE_COOLDOWN_SECONDS,
        clock=clock,
    )
