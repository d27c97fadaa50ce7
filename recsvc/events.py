"""Purchase and return events reported by the shop: validation, and the durable logs.

An event is ``{event_id, customer, item_id, quantity, price, timestamp, source}``; a negative
quantity is a return. ``EventLog`` appends every accepted event to a JSON Lines file (one per
process, fsynced before the request is answered) that ``recsvc train`` reads as a source of
kind ``events``; ``ErasureLog`` keeps the digests of erased customers' aliases for the
trainer and for the service's next start.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MAX_BATCH = 1000
MAX_FUTURE = timedelta(days=1)
FIELDS = {"event_id", "customer", "item_id", "quantity", "price", "timestamp", "source"}
EVENTS_GLOB = "events-*.jsonl"
ERASURES_FILE = "erasures.jsonl"


@dataclass(frozen=True)
class Event:
    event_id: str
    customer: str
    item_id: str
    quantity: float
    price: float
    timestamp: datetime  # UTC
    source: str


@dataclass(frozen=True)
class Rejection:
    index: int
    event_id: str | None
    errors: list[str]


class BatchError(ValueError):
    """The request body is not a batch of events at all."""


def parse_batch(payload: Any, now: datetime) -> tuple[list[tuple[int, Event]], list[Rejection]]:
    """Valid events (with their position in the batch) and a precise error for each other."""
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise BatchError('the body must be a JSON object {"events": [...]}')
    raw_events = payload["events"]
    if not 1 <= len(raw_events) <= MAX_BATCH:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH} events, got {len(raw_events)}")
    valid: list[tuple[int, Event]] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(raw_events):
        event, errors = parse_event(raw, now)
        if event is None:
            event_id = raw.get("event_id") if isinstance(raw, dict) else None
            rejected.append(
                Rejection(index, event_id if isinstance(event_id, str) else None, errors)
            )
        else:
            valid.append((index, event))
    return valid, rejected


def parse_event(raw: Any, now: datetime) -> tuple[Event | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["an event must be a JSON object"]
    errors = [f"{key}: unknown field" for key in sorted(set(raw) - FIELDS)]

    def text(key: str, limit: int, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            errors.append(f"{key}: required, a non-empty string")
            return ""
        if len(value) > limit or any(ord(c) < 32 for c in value):
            errors.append(f"{key}: at most {limit} printable characters")
        return value.strip()

    def number(key: str) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{key}: required, a number")
            return math.nan
        if not math.isfinite(value):
            errors.append(f"{key}: must be finite")
        return float(value)

    event_id = text("event_id", 128)
    customer = text("customer", 256)
    item_id = text("item_id", 64).upper()
    source = text("source", 64, default="api")
    quantity = number("quantity")
    if quantity == 0 or abs(quantity) > 1e6:
        errors.append("quantity: must be non-zero (negative for a return), at most 1e6 in size")
    price = number("price")
    if price < 0 or price > 1e7:
        errors.append("price: must be from 0 to 1e7")
    timestamp = _timestamp(raw.get("timestamp"), now, errors)
    if errors or timestamp is None:
        return None, errors
    return Event(event_id, customer, item_id, quantity, price, timestamp, source), []


def _timestamp(value: Any, now: datetime, errors: list[str]) -> datetime | None:
    if not isinstance(value, str):
        errors.append("timestamp: required, an ISO 8601 string")
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        errors.append(f"timestamp: {value!r} is not ISO 8601 (e.g. 2011-12-09T12:50:00Z)")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # documented: no offset means UTC
    moment = moment.astimezone(UTC)
    if moment > now + MAX_FUTURE:
        errors.append(f"timestamp: {value!r} is more than a day in the future")
    if moment.year < 1970:
        errors.append(f"timestamp: {value!r} is before 1970")
    return moment


class EventLog:
    """Appends accepted events to ``<directory>/events-<host>-<pid>.jsonl``: one file per
    process, so concurrent workers never interleave lines."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / f"events-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        lines = "".join(
            json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records
        )
        _append_durably(self.path, lines, self._lock)


class ErasureLog:
    """Digests of every alias of every erased customer, one JSON line per erasure."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ERASURES_FILE
        self._lock = threading.Lock()

    def record(self, digests: list[str], customer_keys: list[str], now: datetime) -> None:
        line = json.dumps(
            {
                "erased_at": now.isoformat(timespec="seconds"),
                "alias_digests": sorted(digests),
                "customer_keys": sorted(customer_keys),
            },
            separators=(",", ":"),
        )
        _append_durably(self.path, line + "\n", self._lock)

    def customer_keys(self) -> list[str]:
        """Every store key ever erased (to restore the store's erased set at start)."""
        if not self.path.exists():
            return []
        keys: list[str] = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    keys.extend(json.loads(line).get("customer_keys", []))
        return keys


def _append_durably(path: Path, text: str, lock: threading.Lock) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
