"""gunicorn settings for recsvc: ``gunicorn -c gunicorn.conf.py recsvc.wsgi:app``.

Chosen by measurement on a 2-core machine (see README, Performance): sync workers, twice the
cores. The bundle is loaded before the fork (preload), so every worker shares its arrays
copy-on-write; BLAS is pinned to one thread per worker.
"""

from __future__ import annotations

import multiprocessing
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

bind = os.environ.get("RECSVC_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("RECSVC_WORKERS", str(2 * multiprocessing.cpu_count())))
worker_class = os.environ.get("RECSVC_WORKER_CLASS", "sync")
threads = int(os.environ.get("RECSVC_THREADS", "1"))
preload_app = True
keepalive = 5
timeout = 30
graceful_timeout = 20
max_requests = 0
accesslog = None
