"""Events reported by the shop: validation, and the durable logs.

An event is ``{event_id, customer, timestamp, source, kind, ...}``: a purchase (``item_id``,
``quantity``, ``price``; a negative quantity is a return), a return, or an interaction (a view,
a cart change, an email open or click, a click on something recsvc showed, an unsubscribe, a
login), each with the fields ``recsvc.schemas.KINDS`` names. ``EventLog`` appends every
accepted event to a JSON Lines file (one per process, fsynced before the request is
answered) that ``recsvc train`` reads as a source of kind ``events``; ``ErasureLog`` keeps
the digests of erased customers' aliases for the trainer and for the service's next start.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from recsvc.bundle import fsync_dir
from recsvc.errors import BatchError
from recsvc.identity import SESSION_PREFIX, is_session, normal_session
from recsvc.logrecords import (
    ALIAS_DIGESTS,
    CUSTOMER_KEYS,
    ErasureRecord,
    EventRecord,
    json_lines,
)
from recsvc.schemas import (
    DEFAULT_EVENT_SOURCE,
    EVENT_KINDS,
    KINDS,
    MAX_BATCH,
    MAX_EVENT_ID_LENGTH,
    MAX_IMPRESSION_ID_LENGTH,
    MAX_ITEM_ID_LENGTH,
    MAX_QUANTITY,
    MAX_RANK,
    MAX_SOURCE_LENGTH,
    MAX_SURFACE_LENGTH,
    MAX_UNIT_PRICE,
    PURCHASE_KINDS,
)
from recsvc.schemas import Event as EventFields
from recsvc.schemas import Rejection as Rejection  # the per-event outcome, here since before
from recsvc.text import MAX_KEY_LENGTH, MAX_SEND_ID_LENGTH, text_problem

MAX_FUTURE = timedelta(days=1)
FIELDS = frozenset(EventFields.__struct_fields__)
EVENTS_GLOB = "events-*.jsonl"
ERASURES_FILE = "erasures.jsonl"
ORIGIN_FILE = "origin"  # a random name for this directory's logs, made once
STORE_FILE = "store.sqlite3"  # the embedded store


@dataclass(frozen=True)
class Event:
    """A valid event. A return is a negative ``quantity`` of kind ``return`` (however it was
    reported); a kind without an item has ``item_id`` "", a kind without an amount 0."""

    event_id: str
    customer: str
    item_id: str
    quantity: float
    price: float
    timestamp: datetime  # UTC
    source: str
    kind: str = "purchase"
    session: str | None = None  # a session:<id> key whose history becomes the customer's
    send_id: str | None = None
    impression_id: str | None = None
    model_version: str | None = None
    surface: str | None = None
    rank: int | None = None


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
    """One event of a batch checked field by field against the bounds of
    ``recsvc.schemas.Event`` and the fields its kind needs (``recsvc.schemas.KINDS``), every
    problem named (not just the first, as a decode would)."""
    if not isinstance(raw, dict):
        return None, ["an event must be a JSON object"]
    errors = [f"{key}: unknown field" for key in sorted(set(raw) - FIELDS)]
    kind = raw.get("kind", "purchase")
    if kind not in EVENT_KINDS:
        errors.append(f"kind: {str(kind)[:40]!r} is not one of {', '.join(EVENT_KINDS)}")
        kind = None
    required, optional = KINDS[kind] if kind is not None else ((), ())
    allowed = {"event_id", "customer", "timestamp", "source", "kind", "session"}
    allowed |= set(required) | set(optional)
    if kind is not None:
        errors += [
            f"{key}: not a field of a {kind} event" for key in sorted((set(raw) & FIELDS) - allowed)
        ]

    def text(key: str, limit: int, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            errors.append(f"{key}: required, a non-empty string")
            return ""
        problem = text_problem(value, limit)
        if problem is not None:
            errors.append(f"{key}: {problem}")
        return value.strip()

    def given(key: str, limit: int) -> str | None:
        """A text field the kind requires, or may carry (None when absent)."""
        if key not in required and raw.get(key) is None:
            return None
        return text(key, limit) if key in allowed else None

    def number(key: str) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{key}: required, a number")
            return math.nan
        if not math.isfinite(value):
            errors.append(f"{key}: must be finite")
        return float(value)

    event_id = text("event_id", MAX_EVENT_ID_LENGTH)
    customer = text("customer", MAX_KEY_LENGTH)
    if customer.startswith(SESSION_PREFIX):
        if is_session(customer):
            customer = normal_session(customer)
        else:
            errors.append(f"customer: a session key is {SESSION_PREFIX}<id>, with an id")
    item_id = (given("item_id", MAX_ITEM_ID_LENGTH) or "").upper()
    source = text("source", MAX_SOURCE_LENGTH, default=DEFAULT_EVENT_SOURCE)
    session = given("session", MAX_KEY_LENGTH)
    if session and not is_session(session):
        errors.append(f"session: must be {SESSION_PREFIX}<id>")
    elif session:
        session = normal_session(session)
    if session is not None and is_session(customer):
        errors.append("session: a session's own event names no other session")
    quantity, price = 0.0, 0.0
    if kind in PURCHASE_KINDS:
        quantity = number("quantity")
        if quantity == 0 or abs(quantity) > MAX_QUANTITY:
            errors.append(
                "quantity: must be non-zero (negative for a return), "
                f"at most {_figure(MAX_QUANTITY)} in size"
            )
        if kind == "return":
            if quantity < 0:
                errors.append("quantity: a return's units, positive")
            quantity = -quantity
        price = number("price")
        if price < 0 or price > MAX_UNIT_PRICE:
            errors.append(f"price: must be from 0 to {_figure(MAX_UNIT_PRICE)}")
        if quantity < 0:
            kind = "return"
    elif kind in ("cart_add", "cart_remove") and "quantity" in raw:
        quantity = number("quantity")
        if not 0 < quantity <= MAX_QUANTITY:
            errors.append(f"quantity: a cart change's units, from 1 to {_figure(MAX_QUANTITY)}")
    elif kind == "cart_add":
        quantity = 1.0
    timestamp = _timestamp(raw.get("timestamp"), now, errors)
    rank = None
    if "rank" in allowed:
        value = raw.get("rank")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
            errors.append(f"rank: required, an integer from 1 (first) to {MAX_RANK}")
        else:
            rank = value
    event = Event(
        event_id,
        customer,
        item_id,
        quantity,
        price,
        timestamp or now,
        source,
        kind=kind or "purchase",
        session=session,
        send_id=given("send_id", MAX_SEND_ID_LENGTH),
        impression_id=given("impression_id", MAX_IMPRESSION_ID_LENGTH),
        model_version=given("model_version", MAX_EVENT_ID_LENGTH),
        surface=given("surface", MAX_SURFACE_LENGTH),
        rank=rank,
    )
    if errors or timestamp is None:
        return None, errors
    return event, []


def _figure(bound: float) -> str:
    """A bound as messages write it: 1e6, not 1e+06."""
    return re.sub(r"e\+0*", "e", f"{bound:g}")


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
    process, so concurrent workers never interleave lines. Each write holds the file's lock,
    which an erasure takes to rewrite the file without the erased customer's lines."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / f"events-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        append_durably(self.path, log_lines(records), self._lock)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of every process's log in the directory (for replay), skipping a
        torn last line."""
        yield from json_lines(self.directory, EVENTS_GLOB)

    def redact(self, erased: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite every log in the directory without the records ``erased`` picks, each file
        replaced atomically under its lock. Returns how many records were removed."""
        removed = 0
        for path in sorted(self.directory.glob(EVENTS_GLOB)):
            removed += _rewrite_without(path, erased)
        return removed


def log_record(event: Event, received_at: float) -> dict[str, Any]:
    """The event-log line (``recsvc.logrecords.EventRecord``) of an event accepted at
    ``received_at``, with the keys it was reported under; fields its kind does not carry
    left out."""
    record = EventRecord(
        event_id=event.event_id,
        customer=event.customer,
        item_id=event.item_id,
        quantity=event.quantity,
        price=event.price,
        timestamp=event.timestamp.isoformat(),
        source=event.source,
        received_at=received_at,
        kind=event.kind,
        session=event.session,
        send_id=event.send_id,
        impression_id=event.impression_id,
        model_version=event.model_version,
        surface=event.surface,
        rank=event.rank,
    )
    fields = msgspec.structs.asdict(record).items()
    return {key: value for key, value in fields if value is not None}


def log_lines(records: Iterable[dict[str, Any]]) -> str:
    """Records as the durable logs hold them: one compact JSON object a line."""
    return "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records)


def logs_origin(directory: Path) -> str:
    """A stable random name for the logs in ``directory``: a shared store records which
    directories' logs it was restored from (a host name changes with each container)."""
    path = directory / ORIGIN_FILE
    directory.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(8) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    for _ in range(100):  # another process may be writing it this instant
        origin = path.read_text().strip()
        if origin:
            return origin
        time.sleep(0.01)
    raise OSError(f"{path} is empty; delete it to make a new one")


@dataclass(frozen=True)
class Erasures:
    """What the erasure list says: erased customers' store keys and their alias digests."""

    customer_keys: frozenset[str]
    alias_digests: frozenset[str]

    def covers(self, store_key: str, digests: Iterable[str]) -> bool:
        return store_key in self.customer_keys or any(d in self.alias_digests for d in digests)


class ErasureLog:
    """Digests of every alias of every erased customer, one JSON line per erasure. The list
    is the source of truth for erasures: ``current`` re-reads what other processes appended
    (a ``stat`` at most every POLL_SECONDS, the new lines only when the file grew). Within
    that time the store carries a new erasure to every worker: an erasure marks the customer
    erased there before it is acknowledged."""

    POLL_SECONDS = 0.25

    def __init__(self, directory: Path) -> None:
        self.path = directory / ERASURES_FILE
        self._lock = threading.Lock()
        self._seen_size = -1
        self._checked_at = -1e9  # time.monotonic() of the last stat
        self._file = str(self.path)
        self._offset = 0
        self._keys: set[str] = set()
        self._digests: set[str] = set()
        self._current = Erasures(frozenset(), frozenset())

    def record(self, digests: list[str], customer_keys: list[str], now: datetime) -> None:
        record = ErasureRecord(
            erased_at=now.isoformat(timespec="seconds"),
            alias_digests=tuple(sorted(digests)),
            customer_keys=tuple(sorted(customer_keys)),
        )
        line = json.dumps(msgspec.structs.asdict(record), separators=(",", ":"))
        append_durably(self.path, line + "\n", self._lock)
        self._checked_at = -1e9  # this process sees its own erasure at once

    def current(self, fresh: bool = False) -> Erasures:
        """The list as last read; read again when POLL_SECONDS have passed, or ``fresh``."""
        now = time.monotonic()
        if not fresh and now - self._checked_at < self.POLL_SECONDS:
            return self._current
        self._checked_at = now
        try:
            size = os.stat(self._file).st_size
        except FileNotFoundError:
            size = 0
        if size == self._seen_size:
            return self._current
        with self._lock:
            if size < self._offset:  # replaced by a shorter file: read it all again
                self._offset, self._keys, self._digests = 0, set(), set()
            if size:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read(size - self._offset)
                complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits
                for line in complete.decode("utf-8").splitlines():
                    if line.strip():
                        record = json.loads(line)
                        self._keys.update(record.get(CUSTOMER_KEYS, []))
                        self._digests.update(record.get(ALIAS_DIGESTS, []))
                self._offset += len(complete)
            self._current = Erasures(frozenset(self._keys), frozenset(self._digests))
            self._seen_size = self._offset if self._offset < size else size
            return self._current


def _locked(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock. Retries when the file was
    replaced (by an erasure's rewrite) between opening and locking."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def append_durably(path: Path, text: str, lock: threading.Lock) -> None:
    """Append ``text`` under the file's lock and fsync it (every durable log does so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        descriptor = _locked(path)
        try:
            _drop_torn_line(descriptor)
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)  # releases the lock


def _drop_torn_line(descriptor: int) -> None:
    """Cut a last line that has no newline: a write that failed half way (a crash, a full
    disk) and so was never acknowledged. Left in place, the next record would be glued to it
    and lost to every reader."""
    size = os.fstat(descriptor).st_size
    if not size or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(descriptor, end - start, start).rfind(b"\n")
        if newline >= 0:
            os.ftruncate(descriptor, start + newline + 1)
            return
        end = start
    os.ftruncate(descriptor, 0)


def _rewrite_without(path: Path, erased: Callable[[dict[str, Any]], bool]) -> int:
    try:
        descriptor = _locked(path)
    except FileNotFoundError:
        return 0
    try:
        with open(descriptor, "rb", closefd=False) as handle:
            handle.seek(0)
            lines = handle.read().decode("utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                kept.append(line)  # not ours to judge; a torn line stays as it was
                continue
            if not (isinstance(record, dict) and erased(record)):
                kept.append(line)
        removed = len(lines) - len(kept)
        if removed:
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with temporary.open("w", encoding="utf-8") as out:
                out.writelines(kept)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o640)
            os.replace(temporary, path)
            fsync_dir(path.parent)
        return removed
    finally:
        os.close(descriptor)
