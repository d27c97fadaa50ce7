"""JSON log lines, one object per line, for recsvc and for gunicorn.

A line carries the time, level, logger and message, plus the fields a caller passed with
``extra=``. Nothing here may put personal data in a line: request logs name the route
template (never the path, which holds a customer key) and a keyed hash of the customer key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str) -> None:
    """Send JSON lines to stderr, unless the host (gunicorn's logconfig, pytest) already set
    up the root logger."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("recsvc").setLevel(level)


class CustomerHasher:
    """A keyed hash of customer keys for log lines: the same customer gives the same value
    within one deployment (one salt), and the value cannot be reversed by hashing candidate
    ids without the salt."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt

    def __call__(self, key: str) -> str:
        return hmac.new(self._salt, key.encode(), hashlib.sha256).hexdigest()[:16]
