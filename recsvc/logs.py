"""JSON log lines, one object per line, for recsvc and for gunicorn.

A line carries the time, level, logger and message, plus the fields a caller passed with
``extra={"fields": ...}``. Nothing here may put personal data in a line: request logs name the route
template (never the path, which holds a customer key) and a keyed hash of the customer key.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``msg``,
    the record's ``fields`` (``log.info("request", extra={"fields": {...}})``) and ``exc``."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, reused

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached, stamp = self._second
        if cached != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fields")
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str) -> None:
    """Send JSON lines to stderr, unless the host (gunicorn's logconfig, pytest) already set
    up the root logger. Records skip what no line shows (caller, thread and process names),
    which the logging module otherwise looks up for every record."""
    logging._srcfile = None  # the documented switch (logging HOWTO, Optimization)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
        # BLAKE2b's keyed mode is a MAC, as HMAC is, in one pass rather than HMAC's two. Its
        # key holds at most 64 bytes: a longer salt is hashed down to that.
        self._key = salt if len(salt) <= 64 else hashlib.blake2b(salt).digest()

    def __call__(self, key: str) -> str:
        return hashlib.blake2b(key.encode(), key=self._key, digest_size=8).hexdigest()
