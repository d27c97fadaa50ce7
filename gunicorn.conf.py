"""gunicorn settings for recsvc: ``gunicorn -c gunicorn.conf.py recsvc.wsgi:app``.

Chosen by measurement on a 2-core machine (see README, Performance): sync workers, one per
core. The bundle is loaded before the fork (preload): its per-customer arrays are
memory-mapped files every worker shares through the page cache, and the rest is shared
copy-on-write, frozen out of the garbage collector's reach so that it stays shared.
BLAS is pinned to one thread per worker. A sync worker is held by one client until its request
is read in full, so two slow clients stop two workers: gunicorn must sit behind a buffering
proxy (deploy/nginx.conf; README, Production topology), and it listens on 127.0.0.1 unless
RECSVC_BIND says otherwise. Workers count Prometheus metrics into
PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless set), which /metrics adds up. Every
log line, gunicorn's included, is one JSON object.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Before anything imports prometheus_client, which reads it once.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recsvc-metrics-")


def _service_config() -> Any:
    """RECSVC_* read and checked as the app will (recsvc.config); a bad one stops the start."""
    from recsvc.config import ServiceConfig
    from recsvc.errors import ConfigError

    try:
        return ServiceConfig.from_mapping(os.environ)
    except ConfigError as error:
        sys.exit(f"recsvc: {error}")


_config = _service_config()
bind = _config.bind
workers = _config.workers
worker_class = _config.worker_class
threads = _config.threads
preload_app = True
keepalive = 5
limit_request_line = 8190  # gunicorn's largest; the common 8 KiB URL limit of proxies
timeout = 30
graceful_timeout = 20
max_requests = 0


class NoAccessLogger(Logger):
    """gunicorn's logger without its access log. recsvc logs each request itself, as JSON
    without personal data; gunicorn would otherwise build every access line's fields (its
    access log counts as on whenever logconfig_dict is set), only to drop them."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = NoAccessLogger
logconfig_dict = {
    "formatters": {"json": {"()": "recsvc.logs.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    # Counts left by an earlier run in the same folder would be added to this one's.
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def pre_fork(server: Any, worker: Any) -> None:
    # Move everything loaded so far out of the garbage collector's reach. A worker's full
    # collection otherwise walks the preloaded app and bundle and writes to each object's
    # header: measured, the first one took 45 ms and made 16 MB of the shared pages private.
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
