"""Every service tunable's default, in one place."""

from __future__ import annotations

from typing import Any

MODELS_DIR = "models"
RELOAD_SECONDS = 10  # how often each worker looks for a newly published bundle (0: never)
LOG_LEVEL = "INFO"
# gunicorn (gunicorn.conf.py): where it listens, and its workers (default: one per core)
BIND = "127.0.0.1:8000"  # loopback: nginx sits in front (README, Production topology)
WORKER_CLASS = "sync"
THREADS = 1
# Larger request bodies get 413 unread. A full batch of 1000 events is about 200 KB.
MAX_BODY_BYTES = 1024 * 1024

# GET /v1/customers/<id>/recommendations?n=
DEFAULT_N = 10
MAX_N = 100
CART_DEFAULT_N = 6
MAX_CART_ITEMS = 50  # item ids a cart's recommendations take
RECENTLY_VIEWED_N = 10
RECENTLY_VIEWED_MAX = 50

# The real-time store
REDIS_PREFIX = "recsvc"
STORE_TIMEOUT_MS = 50  # a slower store is treated as down: answers come from the bundle
STORE_COOLDOWN_SECONDS = 1.0  # after a store failure, skip it this long before retrying
EVENTS_DIR = "events"  # durable event log and erasure list
EVENT_RETENTION_DAYS = 90  # how long reported events and their ids are kept in the store
RETRY_AFTER_SECONDS = 1  # told to event writers while the store is down

# Per API key, requests per second (bursts of one second's worth); 0: unlimited. A website's
# publishable key carries every visitor's block requests, so give it its own higher rate.
RATE_LIMIT = 200

# Channels
SNAPSHOT_TTL_DAYS = 30  # how long one email send's picks stay fixed
EMAIL_DEFAULT_N = 4
EMAIL_MAX_N = 12

# Impressions and experiments (recsvc.impressions, recsvc.experiments)
ATTRIBUTION_HOURS = 24  # a click or purchase counts for an impression shown this long before
IMPRESSION_FLUSH_SECONDS = 1.0  # how often a worker writes the impressions it showed
IMPRESSION_BUFFER_MAX = 100_000  # impressions a worker keeps while the store does not answer
# A click or purchase whose impression is still in some worker's buffer waits this long for it.
PENDING_ATTRIBUTION_SECONDS = 300

# Visitor tokens (recsvc.tokens): how long one lasts, by default and at most
VISITOR_TOKEN_TTL = 3600
VISITOR_TOKEN_MAX_TTL = 86400

# The trainer's defaults (training.config.ChannelsConfig), and what the service uses for a
# bundle whose manifest has no channels.
DEFAULT_CHANNELS: dict[str, Any] = {
    "base_url": "https://shop.example.com",
    "product_path": "/products/{item_id}",
    "image_path": "/images/{item_id}.jpg",
    "currency_symbol": "£",
    "slots": {
        "home_hero": {"content": 1, "products": 4},
        "cart_cross_sell": {"content": 0, "products": 6},
    },
    "utm": {"utm_source": "recsvc", "utm_medium": "email", "utm_campaign": "{send_id}"},
}

# The dashboard (recsvc.dashboard)
DASHBOARD_SESSION_SECONDS = 8 * 3600  # a sign-in lasts a working day
DASHBOARD_PAGE = 50  # rows per page of its lists
DASHBOARD_RATE_WINDOW_SECONDS = 300  # request rates: over at most the last five minutes
DASHBOARD_HISTORY_SECONDS = 900  # an experiment's figures are read into its history this often
