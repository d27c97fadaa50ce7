"""Real-time state shared by every worker: events reported since training (purchases, returns
and interactions),
erased customers, CRM triggers fired by events, email-pick snapshots, and the impressions the
service showed with the clicks and purchases attributed to them.

Store
├── EmbeddedStore   one SQLite file per host, shared by its workers (the default)
└── RedisStore      shared by every worker and host (RECSVC_REDIS_URL): one Redis, or a
                    Redis Cluster (redis+cluster://host:port,...) in the same key layout

Customers are stored under an opaque key (see ``customer_key``), never an email address.
Events are kept per customer in arrival order with their receipt time, for
``event_retention_days``; a reader asks for those received after its bundle's watermark, so an
event the bundle already learned from is never counted twice. Each event id is remembered for
the same period, which makes applying a batch idempotent.

Impressions (``record_impressions``) arrive in batches from each worker's buffer
(recsvc.impressions) and are kept for the attribution window. ``apply`` attributes each new
click (``CLICK_KINDS`` with an impression id) to its impression (when it listed the item)
and each new purchase to the customer's latest impression that listed the item within the
window (the embedded store in the same transaction as the event; Redis in a second script
right after it, in the slot the impressions share, since a customer's events and the
impressions live in different slots), idempotent by event id, so an event counts once
whether or not it is replayed; if that second step fails the event stands unattributed. A
click or purchase whose impression has not arrived yet waits for it
(``PENDING_ATTRIBUTION_SECONDS``). The figures are counts per (experiment, arm, model
version, surface) and, for an experiment's arms, running sums over customers (recsvc.stats);
they are analytics, not records: the durable logs do not hold impressions, so a Redis that
lost its data starts them again.

The durable event and erasure logs (recsvc.events) are the record; a store is rebuilt from them
when it lost its data (a Redis restarted empty): until then it is not ``restored`` and callers
treat it as unavailable.

On Redis, what is atomic with an event is what lives in its customer's slot: the event, its
idempotency marker and the checks against the customer's erasure and the slot's restored
marker (one script per slot of a batch; the slots already done are undone when one fails).
Aggregates follow idempotently: attribution and figures (above), the erased set, triggers.
On a cluster an event is acknowledged once a replica confirmed it (``WAIT``); see RedisStore
and docs/cluster.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from enum import IntEnum
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import hiredis
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from recsvc import defaults
from recsvc.errors import StoreNotRestored, StoreUnavailable
from recsvc.identity import IdentityKey

log = logging.getLogger(__name__)
T = TypeVar("T")
WAL_INDEX_HEADER = 48  # bytes of the wal-index header's first copy, at the start of -shm

# Every Redis key the service writes, in one place, in one layout for a single Redis and a
# Redis Cluster. A customer's keys share the hash tag {c:<customer>}: one slot, so reading
# their state is one round trip to one node and the apply and forget scripts touch one slot.
# The impressions, attributions, experiment figures and the erased set share the tag {a}
# (the attribution scripts read and write them together); the catalog and its stamp share
# {catalog}; the triggers, the restored markers and each rate-limit bucket are one key each.
CUSTOMER = "{prefix}:{{c:{customer}}}"
EVENT_KEY = CUSTOMER + ":event:{event_id}"  # idempotency marker, expires with the retention
CUSTOMER_EVENTS_KEY = CUSTOMER + ":events"  # sorted set, score = received_at
CUSTOMER_ERASED_KEY = CUSTOMER + ":erased"  # set (with no expiry) once the customer is erased
# Their first unsubscribe event, kept past the retention (consent lasts); the apply script
# writes it.
UNSUBSCRIBED_KEY = CUSTOMER + ":unsubscribed"
CANCEL_KEY = CUSTOMER + ":cancelled:{batch}"  # an apply the client gave up waiting for
SNAPSHOT_KEY = CUSTOMER + ":snapshot:{send}"  # email picks of one send, with a TTL
SNAPSHOTS_KEY = CUSTOMER + ":snapshots"  # set of the sends they have a snapshot of
CANCEL_SECONDS = 600
CANCEL_TRIES, CANCEL_TIMEOUT = 3, 2.0  # seconds: the store was slow, not gone
CLICK_KINDS = frozenset({"rec_click", "email_click"})  # recsvc.schemas.EventKind
UNSUBSCRIBE = "unsubscribe"  # the event kind (recsvc.schemas.EventKind) whose consent lasts
# One in every hash slot (see ``slot_tags``): events dir -> 1 once the logs of that dir are
# replayed. A marker lives with the data it vouches for: a node that lost its data lost its
# slots' markers too, and a read or write checks its own slot's in the same round trip.
RESTORED_KEY = "{prefix}:{{{tag}}}:restored"
SLOTS = 16384  # a Redis Cluster's hash slots
TRIGGERS_KEY = "{prefix}:triggers"  # sorted set of CRM triggers fired by events, score = time
RATE_KEY = "{prefix}:rate:{bucket}"  # an API key's rate-limit state (GCRA), with a TTL
CATALOG_KEY = "{prefix}:{{catalog}}"  # hash: JSON [item id, field] -> JSON value
CATALOG_STAMP_KEY = CATALOG_KEY + ":stamp"  # bumped by every catalog write
# Impressions and attribution; the Lua scripts below build these keys the same way from
# ATTRIBUTION (their ``P``).
ATTRIBUTION = "{prefix}:{{a}}"
ERASED_KEY = ATTRIBUTION + ":erased"  # set of erased customer keys
IMPRESSION_KEY = ATTRIBUTION + ":impression:{impression}"  # hash, for the attribution window
CUSTOMER_IMPRESSIONS_KEY = ATTRIBUTION + ":customer:{customer}:impressions"  # score = time
CUSTOMER_UNITS_KEY = ATTRIBUTION + ":customer:{customer}:units"  # their sums per experiment
PENDING_CLICKS_KEY = ATTRIBUTION + ":pending:impression:{impression}"  # event id -> click
PENDING_PURCHASES_KEY = ATTRIBUTION + ":pending:customer:{customer}"  # event id -> purchase
ATTRIBUTION_KEY = ATTRIBUTION + ":attribution:{event_id}"  # what one event was attributed to
FIGURES_KEY = ATTRIBUTION + ":figures"  # hash: experiment US arm US version US surface US figure
UNIT_SUMS_KEY = ATTRIBUTION + ":units"  # hash: experiment US arm US sum
SEPARATOR = "\x1f"  # joins the parts of a figure's field and an impression's items
# Per (experiment, arm, model version, surface): impressions; impressions clicked, and clicks;
# impressions converted, and purchases; attributed revenue.
FIGURES = ("impressions", "clicked", "clicks", "converted", "purchases", "revenue")
# An experiment's customers' sums per arm (recsvc.stats.UnitSums): customers, their
# impressions n, and for each figure m: sum m, sum m^2, sum n*m.
UNIT_FIGURES = ("clicked", "converted", "revenue")
UNIT_SUMS = (
    "customers",
    "n",
    "n_sq",
    *(
        f"{prefix}{m}{suffix}"
        for m in UNIT_FIGURES
        for prefix, suffix in (("", ""), ("", "_sq"), ("n_", ""))
    ),
)
# A customer's latest impressions a purchase looks through: a person sees a few dozen lists a
# day; a bot's thousands must not make a batch of purchases outlast the store's timeout.
PURCHASE_SCAN = 30
CLICK, PURCHASE = "c", "p"


def customer_key(key: IdentityKey, alias: str) -> str:
    """The store's key for a customer: a keyed digest of their canonical alias (``id:<id>``),
    or for a customer the bundle does not know, of the alias they were named by."""
    return key.hex(alias)


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    item_id: str  # "" for a kind without an item
    quantity: float
    price: float
    timestamp: str  # ISO 8601, UTC
    source: str
    received_at: float  # seconds since the epoch
    kind: str = "purchase"  # recsvc.schemas.EventKind
    session: str | None = None  # the store key of a session this event stitches in
    send_id: str | None = None
    impression_id: str | None = None
    model_version: str | None = None
    surface: str | None = None
    rank: int | None = None

    def to_json(self) -> str:
        fields = {key: value for key, value in asdict(self).items() if value is not None}
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredEvent:
        return cls(**json.loads(text))


class Impression(NamedTuple):  # built for every list answer: a tuple is the cheapest
    """A list the service showed: to whom (a store key; "" for an anonymous visitor), by which
    bundle and experiment arm ("" outside one), where, and its items in order."""

    impression_id: str
    shown_at: float  # seconds since the epoch, the store's clock
    customer: str
    model_version: str
    surface: str
    items: tuple[str, ...]
    experiment: str = ""
    arm: str = ""


@dataclass(frozen=True)
class Figures:
    """The counts (``FIGURES``) of one experiment arm, model version and surface."""

    experiment: str
    arm: str
    model_version: str
    surface: str
    values: dict[str, float]


@dataclass(frozen=True)
class ImpressionFigures:
    figures: list[Figures]
    units: dict[tuple[str, str], dict[str, float]]  # (experiment, arm) -> UNIT_SUMS


class Touch(NamedTuple):
    """What a new event may be attributed to an impression for."""

    event_id: str
    kind: str  # CLICK or PURCHASE
    item_id: str
    amount: float  # a purchase's revenue
    impression_id: str  # a click's impression
    customers: tuple[str, ...]  # a purchase's customer, and the session it names


def touch_of(customer: str, event: StoredEvent) -> Touch | None:
    """A click on a list shown (a rec_click, or an email_click naming its picks' impression
    and item), or a purchase of a positive quantity."""
    if event.kind in CLICK_KINDS and event.impression_id and event.item_id:
        return Touch(event.event_id, CLICK, event.item_id, 0.0, event.impression_id, ())
    if event.kind == "purchase" and event.quantity > 0:
        customers: tuple[str, ...] = (customer,)
        if event.session is not None and event.session != customer:
            customers += (event.session,)
        amount = event.quantity * event.price
        return Touch(event.event_id, PURCHASE, event.item_id, amount, "", customers)
    return None


def listed(items: str, item_id: str) -> bool:
    """Whether an impression's joined items hold ``item_id``."""
    return f"{SEPARATOR}{item_id}{SEPARATOR}" in items


def joined(items: Sequence[str]) -> str:
    return SEPARATOR + SEPARATOR.join(items) + SEPARATOR


class Applied(IntEnum):
    DUPLICATE = 0
    NEW = 1
    ERASED = 2  # the customer was erased; nothing stored


@dataclass(frozen=True)
class CatalogOverlay:
    """The catalog changes written since training: item id -> field -> value (JSON values:
    ``available``, ``price``, ``title``, ``url``, ``image``, ``categories``). A store hands
    back the same object until a write changes it, so callers may cache what they derive from
    it by identity."""

    stamp: int  # changes with every catalog write; 0: never written
    items: dict[str, dict[str, Any]]


EMPTY_CATALOG = CatalogOverlay(0, {})


def _catalog_rows(changes: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(field key, value) pairs as both stores keep them: JSON ``[item, field]`` -> JSON."""
    return [
        (json.dumps([item, name], separators=(",", ":")), json.dumps(value))
        for item, fields in changes
        for name, value in sorted(fields.items())
    ]


def _catalog_items(rows: Iterator[tuple[str | bytes, str | bytes]]) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    for key, value in rows:
        item, name = json.loads(key)
        items.setdefault(item, {})[name] = json.loads(value)
    return items


@dataclass(slots=True)  # not frozen: built for every request, and frozen costs 3x to build
class CustomerState:
    events: list[StoredEvent]
    erased: bool
    # Their first unsubscribe, whenever it was: kept when the events are past the retention.
    unsubscribed: StoredEvent | None = None


@dataclass
class Ahead:
    """What one request read in advance, with its rate-limit take (``Store.take_and_read``):
    its customer's state (every event kept, as ``customer_state(customer, 0.0)``; used once),
    the catalog overlay, and the kept picks of the email send it asks for. Its own later
    reads use them instead of asking the store again."""

    customer: str | None = None
    state: CustomerState | None = None
    catalog: CatalogOverlay | None = None
    # An email send's kept picks: (customer, send, payload or None when none is kept).
    snapshot: tuple[str, str, str | None] | None = None


_AHEAD: ContextVar[Ahead | None] = ContextVar("recsvc_store_ahead", default=None)


@contextmanager
def request_reads() -> Iterator[Ahead]:
    """The scope of one request's read-ahead: reads outside one never use another's."""
    ahead = Ahead()
    token = _AHEAD.set(ahead)
    try:
        yield ahead
    finally:
        _AHEAD.reset(token)


def _ahead_state(customer: str) -> CustomerState | None:
    """The customer's state read ahead in this request, once."""
    ahead = _AHEAD.get()
    if ahead is None or ahead.customer != customer or ahead.state is None:
        return None
    state, ahead.state = ahead.state, None
    return state


def _ahead_snapshot(customer: str, send: str) -> tuple[bool, str | None]:
    """Whether this request read the kept picks of ``customer``'s ``send`` ahead, and them
    (None: none kept), once."""
    ahead = _AHEAD.get()
    if ahead is None or ahead.snapshot is None or ahead.snapshot[:2] != (customer, send):
        return False, None
    kept, ahead.snapshot = ahead.snapshot[2], None
    return True, kept


class Store(Protocol):
    retention: float  # seconds events and event ids are kept
    attribution_window: float  # seconds after an impression that its clicks and purchases count

    def customer_state(self, customer: str, since: float) -> CustomerState:
        """Events received after ``since`` (and inside the retention), whether the customer
        was erased, and their first unsubscribe however old; one round trip."""

    def customer_states(self, customers: Sequence[str], since: float) -> list[CustomerState]:
        """``customer_state`` of each of ``customers``, in one round trip."""

    def apply(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool = False
    ) -> list[Applied]:
        """Record (customer, event) pairs atomically, each at most once per event id, and
        attribute the new ones (``touch_of``) to impressions (not in the replay). Raises
        StoreNotRestored while the store is not restored, unless this is the replay."""

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        """Undo ``apply`` of these entries, their attribution included (used when the durable
        log write fails)."""

    def record_impressions(self, impressions: Sequence[Impression]) -> int:
        """Keep impressions for the attribution window, count them, and attribute the clicks
        and purchases that arrived before them; an impression id already kept, or of an
        erased customer, is skipped. Returns how many were new. Raises StoreNotRestored while
        the store is not restored."""
        ...

    def impression_figures(self) -> ImpressionFigures:
        """Every group's counts and every experiment arm's sums over customers."""
        ...

    def add_triggers(self, triggers: Sequence[tuple[float, str, str]]) -> None:
        """Record (fired_at, customer, JSON) triggers."""

    def triggers_since(self, since: float) -> list[str]:
        """Triggers fired after ``since``, oldest first."""

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        """Keep ``payload`` as the customer's snapshot for ``send`` unless one exists; return
        the snapshot kept (the first one written wins)."""

    def kept_snapshot(self, customer: str, send: str) -> str | None:
        """The customer's snapshot for ``send``, if one is kept (not expired)."""

    def erase(self, customer: str) -> int:
        """Remove the customer's events, triggers, snapshots, impressions and experiment sums
        and mark them erased; returns events removed. (The figures, counts without anyone in
        them, stay.)"""

    def mark_erased(self, customers: Sequence[str]) -> None:
        """Mark customers erased (reloading the durable erasure list at start)."""

    def erased_keys(self) -> set[str]:
        """Every erased customer key."""

    def restored(self) -> bool:
        """Whether the store holds what the durable logs hold (False after a data loss)."""

    def mark_restored(self) -> None:
        """Record that the durable logs were replayed into the store."""

    def set_items(self, changes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Merge (item id, fields) changes into the catalog overlay, atomically; a field
        written again takes the new value. Idempotent, so a replay may repeat a write."""

    def catalog(self) -> CatalogOverlay:
        """The catalog overlay: the same object while no write changed it. Cheap when nothing
        changed (no query on the embedded store, one round trip to Redis). Raises
        StoreNotRestored while the store is not restored."""
        ...

    def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one request from ``bucket`` (``rate`` per second, up to ``burst`` at once):
        0.0 if allowed, else the seconds until one would be."""
        ...

    def take_and_read(
        self,
        bucket: str | None,
        rate: float,
        burst: int,
        customer: str | None,
        send: str | None = None,
    ) -> float:
        """``take`` (none without a ``bucket``: 0.0), and read ahead, in the same round trip,
        what this request will read: ``customer``'s state, the catalog and the snapshot of
        their email ``send`` (see ``Ahead``; inside ``request_reads`` only). A read that
        fails is left to the request's own."""
        ...

    def ping(self) -> bool: ...


class EmbeddedStore:
    """The store in one SQLite database file (WAL mode) that every worker process of the host
    opens: one state for all of them, kept across restarts.

    Each process and thread has its own connection (a connection must not cross a fork). Reads
    take no lock; writes are short transactions that SQLite serialises between processes.
    Deleted rows are overwritten (``secure_delete``), and an erasure checkpoints the
    write-ahead log, so nothing of an erased customer stays in the file.

    A thread in each process folds the write-ahead log into the database every
    ``CHECKPOINT_SECONDS``. SQLite would otherwise do it in the commit that fills 1,000 pages,
    and that request waited for the checkpoint's fsyncs (4-9 ms in the load test on the
    test machine, every few seconds); a commit folds the log itself only past
    ``AUTOCHECKPOINT_PAGES``, should that thread fall behind.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        customer TEXT NOT NULL, received_at REAL NOT NULL, event_id TEXT NOT NULL,
        body TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS events_by_customer ON events (customer, received_at);
    CREATE INDEX IF NOT EXISTS events_by_time ON events (received_at);
    CREATE TABLE IF NOT EXISTS seen (
        event_id TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS erased (customer TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS unsubscribed (customer TEXT PRIMARY KEY, body TEXT NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS triggers (
        fired_at REAL NOT NULL, customer TEXT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS triggers_by_time ON triggers (fired_at);
    CREATE TABLE IF NOT EXISTS snapshots (
        customer TEXT NOT NULL, send TEXT NOT NULL, expires REAL NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (customer, send)) WITHOUT ROWID;
    -- Customers who got an event or were erased, in order: a reader follows it to know which
    -- customers have any state at all (most have none), without a query per request.
    CREATE TABLE IF NOT EXISTS touched (
        id INTEGER PRIMARY KEY AUTOINCREMENT, customer TEXT NOT NULL, at REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS catalog (field TEXT PRIMARY KEY, value TEXT NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS catalog_stamp (one INTEGER PRIMARY KEY CHECK (one = 1),
        stamp INTEGER NOT NULL);
    -- Impressions for the attribution window; clicks and purchases counted on each.
    CREATE TABLE IF NOT EXISTS impressions (
        id TEXT PRIMARY KEY, customer TEXT NOT NULL, shown_at REAL NOT NULL,
        experiment TEXT NOT NULL, arm TEXT NOT NULL, model_version TEXT NOT NULL,
        surface TEXT NOT NULL, items TEXT NOT NULL,
        clicks INTEGER NOT NULL DEFAULT 0, purchases INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS impressions_by_customer ON impressions (customer, shown_at);
    CREATE INDEX IF NOT EXISTS impressions_by_time ON impressions (shown_at);
    CREATE TABLE IF NOT EXISTS attributions (
        event_id TEXT PRIMARY KEY, impression TEXT NOT NULL, kind TEXT NOT NULL,
        amount REAL NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
    -- Clicks and purchases that came before their impression left a worker's buffer.
    CREATE TABLE IF NOT EXISTS pending (
        event_id TEXT NOT NULL, kind TEXT NOT NULL, impression TEXT NOT NULL,
        customer TEXT NOT NULL, item TEXT NOT NULL, amount REAL NOT NULL, at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS pending_by_impression ON pending (impression);
    CREATE INDEX IF NOT EXISTS pending_by_customer ON pending (customer);
    CREATE INDEX IF NOT EXISTS pending_by_event ON pending (event_id);
    CREATE TABLE IF NOT EXISTS figures (
        experiment TEXT NOT NULL, arm TEXT NOT NULL, model_version TEXT NOT NULL,
        surface TEXT NOT NULL, figure TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (experiment, arm, model_version, surface, figure)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS units (
        experiment TEXT NOT NULL, customer TEXT NOT NULL, n REAL NOT NULL,
        clicked REAL NOT NULL, converted REAL NOT NULL, revenue REAL NOT NULL,
        updated REAL NOT NULL, arm TEXT NOT NULL, PRIMARY KEY (experiment, customer))
        WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS units_by_customer ON units (customer);
    CREATE TABLE IF NOT EXISTS unit_sums (
        experiment TEXT NOT NULL, arm TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (experiment, arm, name)) WITHOUT ROWID;
    """
    PURGE_EVERY_SECONDS = 60.0  # how often a writer drops what is past the retention
    CHECKPOINT_SECONDS = 1.0
    AUTOCHECKPOINT_PAGES = 10_000  # 40 MB of write-ahead log
    CACHED_STATES = 65536  # customer states a thread keeps while nothing changes

    def __init__(
        self,
        path: Path,
        retention_seconds: float,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        attribution_window: float = defaults.ATTRIBUTION_HOURS * 3600.0,
    ) -> None:
        self.path = path
        self.retention = retention_seconds
        self.attribution_window = attribution_window
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._purged_at = 0.0
        self._checkpointing_pid: int | None = None
        self._checkpoint_warned_at = -60.0
        self._buckets = LocalBuckets(clock)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readable by the service's user and group only, like the event logs; SQLite gives
        # the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o640))
        try:
            self._connection().executescript(self.SCHEMA)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {path}: {error}") from error

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            connection = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
            )
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of the process; the fsynced event log covers a
            # power loss (a restart replays nothing it already holds).
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA secure_delete=ON")
            connection.execute(f"PRAGMA wal_autocheckpoint={self.AUTOCHECKPOINT_PAGES}")
            local.connection, local.pid = connection, os.getpid()
            local.version, local.states, local.known, local.touched = None, {}, set(), 0
            local.header = None  # the wal-index header, mapped at the first read
            local.catalog_version, local.catalog = None, EMPTY_CATALOG
            self._start_checkpointing()
        found: sqlite3.Connection = local.connection
        return found

    def _start_checkpointing(self) -> None:
        """Once per process (a gunicorn worker is forked): the thread that folds the log."""
        with _CHECKPOINTING_LOCK:
            if self._checkpointing_pid == os.getpid():
                return
            self._checkpointing_pid = os.getpid()
        threading.Thread(
            target=_checkpoint_every,
            args=(weakref.ref(self), self.CHECKPOINT_SECONDS),
            name="recsvc-store-checkpoint",
            daemon=True,
        ).start()

    def fold_log(self) -> None:
        """Copy the write-ahead log's committed pages into the database, without waiting for
        readers or writers (a passive checkpoint); the log is reused once folded. On a
        connection of its own, closed before it returns: a process forked meanwhile (from
        gunicorn's master, whose store folds too) inherits no connection of this thread."""
        try:
            with _FOLDING:  # a fork waits for it: briefly, as the checkpoint does not wait
                connection = sqlite3.connect(self.path, timeout=0.1)
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    connection.close()
        except sqlite3.Error as error:
            now = time.monotonic()
            if now - self._checkpoint_warned_at >= 60.0:  # once a minute, not every second
                self._checkpoint_warned_at = now
                log.warning("embedded store %s: checkpoint failed: %s", self.path, error)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error
        finally:
            self._local.version = None  # data_version does not count this connection's commits

    def _read(self, query: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return self._connection().execute(query, args).fetchall()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error

    def take(self, bucket: str, rate: float, burst: int) -> float:
        return self._buckets.take(bucket, rate, burst)

    def take_and_read(
        self,
        bucket: str | None,
        rate: float,
        burst: int,
        customer: str | None,
        send: str | None = None,
    ) -> float:
        return 0.0 if bucket is None else self.take(bucket, rate, burst)  # reads are local

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        now = self.clock()
        with self._transaction() as connection:
            connection.execute(
                "DELETE FROM snapshots WHERE customer = ? AND send = ? AND expires <= ?",
                (customer, send, now),
            )
            connection.execute(
                "INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?, ?)",
                (customer, send, now + ttl_seconds, payload),
            )
            kept: str = connection.execute(
                "SELECT payload FROM snapshots WHERE customer = ? AND send = ?", (customer, send)
            ).fetchone()[0]
        return kept

    def kept_snapshot(self, customer: str, send: str) -> str | None:
        rows = self._read(
            "SELECT payload FROM snapshots WHERE customer = ? AND send = ? AND expires > ?",
            (customer, send, self.clock()),
        )
        return str(rows[0][0]) if rows else None

    def add_triggers(self, triggers: Sequence[tuple[float, str, str]]) -> None:
        if not triggers:
            return
        with self._transaction() as connection:
            connection.executemany("INSERT INTO triggers VALUES (?, ?, ?)", triggers)

    def triggers_since(self, since: float) -> list[str]:
        horizon = max(since, self.clock() - self.retention)
        rows = self._read(
            "SELECT body FROM triggers WHERE fired_at > ? ORDER BY fired_at, rowid", (horizon,)
        )
        return [body for (body,) in rows]

    def customer_state(self, customer: str, since: float) -> CustomerState:
        horizon = self.clock() - self.retention
        connection = self._connection()
        local = self._local
        try:
            # Until a connection commits, this thread's answers stand: a read then costs a
            # look at the shared wal-index header instead of a query.
            version = self._version(connection)
            if version != local.version:
                self._follow(connection, version)
            if customer not in local.known:
                return CustomerState([], False)  # never had an event, never erased
            states: dict[tuple[str, float], CustomerState] = local.states
            state = states.get((customer, since))
            if state is None:
                rows = connection.execute(
                    "SELECT 0, body FROM events WHERE customer = ? AND received_at > ? "
                    "UNION ALL SELECT 1, NULL FROM erased WHERE customer = ? "
                    "UNION ALL SELECT 2, body FROM unsubscribed WHERE customer = ?",
                    (customer, since, customer, customer),
                ).fetchall()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error
        if state is None:
            if any(tag == 1 for tag, _ in rows):
                state = CustomerState([], True)
            else:
                state = CustomerState(
                    [StoredEvent.from_json(body) for tag, body in rows if tag == 0],
                    False,
                    next((StoredEvent.from_json(body) for tag, body in rows if tag == 2), None),
                )
            if len(states) >= self.CACHED_STATES:
                states.clear()
            states[(customer, since)] = state
        if any(event.received_at <= horizon for event in state.events):
            kept = [e for e in state.events if e.received_at > horizon]
            return CustomerState(kept, False, state.unsubscribed)
        return CustomerState(list(state.events), state.erased, state.unsubscribed)

    def customer_states(self, customers: Sequence[str], since: float) -> list[CustomerState]:
        return [self.customer_state(customer, since) for customer in customers]

    def set_items(self, changes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not changes:
            return
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO catalog VALUES (?, ?) ON CONFLICT (field) DO UPDATE "
                "SET value = excluded.value",
                _catalog_rows(changes),
            )
            connection.execute(
                "INSERT INTO catalog_stamp VALUES (1, 1) "
                "ON CONFLICT (one) DO UPDATE SET stamp = stamp + 1"
            )
        self._local.catalog_version = None  # data_version does not count this one's commits

    def catalog(self) -> CatalogOverlay:
        connection = self._connection()
        local = self._local
        try:
            version = self._version(connection)
            if version == local.catalog_version:
                found: CatalogOverlay = local.catalog
                return found
            row = connection.execute("SELECT stamp FROM catalog_stamp").fetchone()
            stamp = 0 if row is None else int(row[0])
            if stamp != local.catalog.stamp:
                rows = connection.execute("SELECT field, value FROM catalog").fetchall()
                local.catalog = CatalogOverlay(stamp, _catalog_items(iter(rows)))
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error
        local.catalog_version = version
        return local.catalog  # type: ignore[no-any-return]

    def _version(self, connection: sqlite3.Connection) -> object:
        """A value that changes whenever any connection commits: the first copy of the
        wal-index header in the ``-shm`` file, whose change counter every transaction bumps
        (https://sqlite.org/walformat.html), read through a shared mapping in a fraction of a
        microsecond. ``PRAGMA data_version`` says the same for ~5 us a call; it stands in when
        the header cannot be mapped."""
        local = self._local
        if local.header is None:
            local.header = False
            try:
                with open(f"{self.path}-shm", "rb") as handle:
                    descriptor = handle.fileno()
                    local.header = mmap.mmap(descriptor, WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                pass
        if local.header:
            return local.header[:WAL_INDEX_HEADER]
        version: int = connection.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _follow(self, connection: sqlite3.Connection, version: object) -> None:
        """Forget this thread's cached states and learn which customers were touched since
        it last looked (at the first look, every erased or unsubscribed one too: their state
        outlasts the retention that purges ``touched``)."""
        local = self._local
        if not local.touched:
            lasting = "SELECT customer FROM erased UNION ALL SELECT customer FROM unsubscribed"
            local.known.update(c for (c,) in connection.execute(lasting))
        rows = connection.execute(
            "SELECT id, customer FROM touched WHERE id > ? ORDER BY id", (local.touched,)
        ).fetchall()
        if rows:
            local.touched = rows[-1][0]
            local.known.update(customer for _, customer in rows)
        local.version, local.states = version, {}

    def apply(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool = False
    ) -> list[Applied]:
        if not entries:
            return []
        now = self.clock()
        results = []
        with self._transaction() as connection:
            self._purge(connection, now)
            for customer, event in entries:
                if connection.execute(
                    "SELECT 1 FROM erased WHERE customer = ?", (customer,)
                ).fetchone():
                    results.append(Applied.ERASED)
                    continue
                claimed = connection.execute(
                    "INSERT INTO seen VALUES (?, ?) ON CONFLICT (event_id) DO UPDATE "
                    "SET expires = excluded.expires WHERE seen.expires <= ?",
                    (event.event_id, now + self.retention, now),
                ).rowcount
                if not claimed:
                    results.append(Applied.DUPLICATE)
                    continue
                body = event.to_json()
                connection.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?)",
                    (customer, event.received_at, event.event_id, body),
                )
                if event.kind == UNSUBSCRIBE:
                    connection.execute(
                        "INSERT OR IGNORE INTO unsubscribed VALUES (?, ?)", (customer, body)
                    )
                connection.execute(
                    "INSERT INTO touched (customer, at) VALUES (?, ?)", (customer, now)
                )
                results.append(Applied.NEW)
                touch = None if restoring else touch_of(customer, event)
                if touch is not None:
                    self._attribute(connection, touch, now)
        return results

    def _attribute(self, connection: sqlite3.Connection, touch: Touch, now: float) -> None:
        """Credit a new click or purchase to its impression, or keep it pending until the
        impression arrives."""
        window = self.attribution_window
        if touch.kind == CLICK:
            row = connection.execute(
                "SELECT shown_at, items FROM impressions WHERE id = ?", (touch.impression_id,)
            ).fetchone()
            if row is None:
                _keep_pending(connection, touch, touch.impression_id, "", now)
            elif abs(now - row[0]) <= window and listed(row[1], touch.item_id):
                _credit(connection, touch.event_id, touch.impression_id, CLICK, 0.0, now)
            return
        for customer in touch.customers:
            rows = connection.execute(
                "SELECT id, items FROM impressions WHERE customer = ? AND shown_at >= ? "
                "AND shown_at <= ? ORDER BY shown_at DESC LIMIT ?",
                (customer, now - window, now, PURCHASE_SCAN),
            ).fetchall()
            for impression, items in rows:
                if listed(items, touch.item_id):
                    _credit(connection, touch.event_id, impression, PURCHASE, touch.amount, now)
                    return
        for customer in touch.customers:
            _keep_pending(connection, touch, "", customer, now)

    def record_impressions(self, impressions: Sequence[Impression]) -> int:
        if not impressions:
            return 0
        now = self.clock()
        with self._transaction() as connection:
            self._purge(connection, now)
            new = self._new_impressions(connection, impressions)
            connection.executemany(
                "INSERT INTO impressions (id, customer, shown_at, experiment, arm, "
                "model_version, surface, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (i.impression_id, i.customer, i.shown_at, *_group(i), joined(i.items))
                    for i in new
                ],
            )
            shown = Counter(_group(impression) for impression in new)
            for group, count in shown.items():  # one write per group, not per impression
                _add_figure(connection, group, "impressions", float(count))
            for impression in new:
                if impression.experiment and impression.customer:
                    unit = (impression.experiment, impression.arm, impression.customer)
                    _add_unit(connection, *unit, "n", 1.0, now)
            if connection.execute("SELECT 1 FROM pending LIMIT 1").fetchone():
                for impression in new:
                    self._credit_waiting(connection, impression, now)
            return len(new)

    @staticmethod
    def _new_impressions(
        connection: sqlite3.Connection, impressions: Sequence[Impression]
    ) -> list[Impression]:
        """Those of ``impressions`` not kept yet (each id once) and not of erased customers."""
        ids = list({impression.impression_id for impression in impressions})
        customers = list({impression.customer for impression in impressions} - {""})
        kept = _members(connection, "SELECT id FROM impressions WHERE id IN ({})", ids)
        erased = _members(
            connection, "SELECT customer FROM erased WHERE customer IN ({})", customers
        )
        new: list[Impression] = []
        for impression in impressions:
            if impression.impression_id in kept or impression.customer in erased:
                continue
            kept.add(impression.impression_id)
            new.append(impression)
        return new

    def _credit_waiting(
        self, connection: sqlite3.Connection, impression: Impression, now: float
    ) -> None:
        """Credit the clicks and purchases that arrived before ``impression``."""
        customer, shown_at, identifier = (
            impression.customer,
            impression.shown_at,
            impression.impression_id,
        )
        items = joined(impression.items)
        window = self.attribution_window
        clicks = connection.execute(
            "SELECT event_id, item, at FROM pending WHERE impression = ? AND kind = ?",
            (identifier, CLICK),
        ).fetchall()
        for event_id, item, at in clicks:
            if abs(at - shown_at) <= window and listed(items, item):
                _credit(connection, event_id, identifier, CLICK, 0.0, now)
        connection.execute("DELETE FROM pending WHERE impression = ?", (identifier,))
        purchases = connection.execute(
            "SELECT event_id, item, amount, at FROM pending WHERE customer = ? AND kind = ?",
            (customer, PURCHASE),
        ).fetchall()
        for event_id, item, amount, at in purchases if customer else ():
            if shown_at <= at <= shown_at + window and listed(items, item):
                _credit(connection, event_id, identifier, PURCHASE, amount, now)
                connection.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))

    def impression_figures(self) -> ImpressionFigures:
        return _collected(
            self._read("SELECT * FROM figures", ()), self._read("SELECT * FROM unit_sums", ())
        )

    def _purge(self, connection: sqlite3.Connection, now: float) -> None:
        if now - self._purged_at < self.PURGE_EVERY_SECONDS:
            return
        self._purged_at = now
        horizon = now - self.retention
        connection.execute("DELETE FROM seen WHERE expires <= ?", (now,))
        connection.execute("DELETE FROM events WHERE received_at <= ?", (horizon,))
        connection.execute("DELETE FROM triggers WHERE fired_at <= ?", (horizon,))
        connection.execute("DELETE FROM snapshots WHERE expires <= ?", (now,))
        connection.execute("DELETE FROM touched WHERE at <= ?", (horizon,))
        shown_since = now - self.attribution_window
        connection.execute("DELETE FROM impressions WHERE shown_at < ?", (shown_since,))
        connection.execute("DELETE FROM attributions WHERE at < ?", (shown_since,))
        pending_since = now - defaults.PENDING_ATTRIBUTION_SECONDS
        connection.execute("DELETE FROM pending WHERE at < ?", (pending_since,))
        connection.execute("DELETE FROM units WHERE updated <= ?", (horizon,))

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        now = self.clock()
        with self._transaction() as connection:
            for customer, event in entries:
                _uncredit(connection, event.event_id, now)
                connection.execute("DELETE FROM pending WHERE event_id = ?", (event.event_id,))
                connection.execute("DELETE FROM seen WHERE event_id = ?", (event.event_id,))
                connection.execute(
                    "DELETE FROM events WHERE customer = ? AND event_id = ?",
                    (customer, event.event_id),
                )
                connection.execute(
                    "DELETE FROM unsubscribed WHERE customer = ? AND body = ?",
                    (customer, event.to_json()),
                )

    def erase(self, customer: str) -> int:
        with self._transaction() as connection:
            connection.execute("INSERT OR IGNORE INTO erased VALUES (?)", (customer,))
            connection.execute(
                "INSERT INTO touched (customer, at) VALUES (?, ?)", (customer, self.clock())
            )
            connection.execute("DELETE FROM triggers WHERE customer = ?", (customer,))
            connection.execute("DELETE FROM snapshots WHERE customer = ?", (customer,))
            connection.execute("DELETE FROM impressions WHERE customer = ?", (customer,))
            connection.execute("DELETE FROM pending WHERE customer = ?", (customer,))
            units = connection.execute(
                "SELECT experiment, arm, n, clicked, converted, revenue FROM units "
                "WHERE customer = ?",
                (customer,),
            ).fetchall()
            for experiment, arm, n, *values in units:
                removal = unit_removal(n, dict(zip(UNIT_FIGURES, values, strict=True)))
                for name, change in removal.items():
                    connection.execute(
                        "UPDATE unit_sums SET value = value + ? "
                        "WHERE experiment = ? AND arm = ? AND name = ?",
                        (change, experiment, arm, name),
                    )
            connection.execute("DELETE FROM units WHERE customer = ?", (customer,))
            connection.execute("DELETE FROM unsubscribed WHERE customer = ?", (customer,))
            removed = connection.execute(
                "DELETE FROM events WHERE customer = ?", (customer,)
            ).rowcount
        self._checkpoint()
        return int(removed)

    def _checkpoint(self) -> None:
        """Fold the write-ahead log into the database and empty it, so the pages that held
        deleted rows survive in neither file. SQLite answers busy, without waiting, while
        another connection checkpoints (every process's thread does, every second): tried
        again until it is done or ``busy_timeout`` has passed."""
        deadline = time.monotonic() + self.busy_timeout
        connection = self._connection()
        while True:
            try:
                with _FOLDING:  # not this process's thread meanwhile
                    busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error:
                busy = 1
            if not busy:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "embedded store %s: the write-ahead log could not be emptied after an "
                    "erasure; the next checkpoint folds it",
                    self.path,
                )
                return
            time.sleep(0.01)

    def mark_erased(self, customers: Sequence[str]) -> None:
        if not customers:
            return
        now = self.clock()
        with self._transaction() as connection:
            connection.executemany(
                "INSERT OR IGNORE INTO erased VALUES (?)", [(c,) for c in customers]
            )
            connection.executemany(
                "INSERT INTO touched (customer, at) VALUES (?, ?)", [(c, now) for c in customers]
            )

    def erased_keys(self) -> set[str]:
        return {customer for (customer,) in self._read("SELECT customer FROM erased", ())}

    def restored(self) -> bool:
        return True  # the database is on disk: nothing to restore after a restart

    def mark_restored(self) -> None:
        return None

    def ping(self) -> bool:
        try:
            self._read("SELECT 1", ())
        except StoreUnavailable:
            return False
        return True


_CHECKPOINTING_LOCK = threading.Lock()
# Held while a thread folds a log. A fork waits for it: a child forked in the middle of a
# checkpoint (gunicorn's master forks its workers, and its store has a checkpoint thread too)
# would inherit SQLite's mutexes locked by a thread it does not have, and hang on its first
# query.
_FOLDING = threading.Lock()
for _lock in (_CHECKPOINTING_LOCK, _FOLDING):  # neither is ever taken while holding the other
    os.register_at_fork(
        before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release
    )


def _checkpoint_every(store: weakref.ref[EmbeddedStore], seconds: float) -> None:
    """Fold ``store``'s log every ``seconds`` until the store is gone (a weak reference, so
    that the thread does not keep it alive)."""
    while True:
        time.sleep(seconds)
        alive = store()
        if alive is None:
            return
        try:
            alive.fold_log()
        except Exception:  # the thread must outlive any surprise, or commits fold again
            log.exception("embedded store: checkpoint failed")
        del alive


def _collected(
    figure_rows: Iterable[Sequence[Any]], unit_rows: Iterable[Sequence[Any]]
) -> ImpressionFigures:
    """Figures from rows (experiment, arm, model version, surface, figure, value) and unit
    sums from rows (experiment, arm, sum, value), as both stores keep them."""
    groups: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for experiment, arm, version, surface, figure, value in figure_rows:
        groups.setdefault((experiment, arm, version, surface), {})[figure] = float(value)
    units: dict[tuple[str, str], dict[str, float]] = {}
    for experiment, arm, name, value in unit_rows:
        units.setdefault((experiment, arm), {})[name] = float(value)
    return ImpressionFigures([Figures(*group, values) for group, values in groups.items()], units)


def _keep_pending(
    connection: sqlite3.Connection, touch: Touch, impression: str, customer: str, now: float
) -> None:
    connection.execute(
        "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)",
        (touch.event_id, touch.kind, impression, customer, touch.item_id, touch.amount, now),
    )


def _credit(
    connection: sqlite3.Connection,
    event_id: str,
    impression: str,
    kind: str,
    amount: float,
    now: float,
) -> None:
    """Attribute an event to an impression, once per event id."""
    if connection.execute(
        "INSERT OR IGNORE INTO attributions VALUES (?, ?, ?, ?, ?)",
        (event_id, impression, kind, amount, now),
    ).rowcount:
        _count(connection, impression, kind, amount, 1, now)


def _uncredit(connection: sqlite3.Connection, event_id: str, now: float) -> None:
    """Take back what ``_credit`` counted for an event."""
    row = connection.execute(
        "SELECT impression, kind, amount FROM attributions WHERE event_id = ?", (event_id,)
    ).fetchone()
    if row is not None:
        connection.execute("DELETE FROM attributions WHERE event_id = ?", (event_id,))
        _count(connection, row[0], row[1], row[2], -1, now)


def _count(
    connection: sqlite3.Connection,
    impression: str,
    kind: str,
    amount: float,
    sign: int,
    now: float,
) -> None:
    """Add (``sign`` 1) or take back (-1) a click or a purchase of ``amount`` on an
    impression, its group's figures and its customer's experiment sums."""
    row = connection.execute(
        "SELECT customer, experiment, arm, model_version, surface, clicks, purchases "
        "FROM impressions WHERE id = ?",
        (impression,),
    ).fetchone()
    if row is None:  # gone with an erasure
        return
    customer, experiment, arm, version, surface, clicks, purchases = row
    group = (experiment, arm, version, surface)
    in_experiment = bool(experiment and customer)
    # The impression's first click or purchase (or, taken back, its last) changes whether it
    # counts as clicked or converted.
    if kind == CLICK:
        connection.execute(
            "UPDATE impressions SET clicks = ? WHERE id = ?", (clicks + sign, impression)
        )
        _add_figure(connection, group, "clicks", sign)
        if clicks + min(sign, 0) == 0:
            _add_figure(connection, group, "clicked", sign)
            if in_experiment:
                _add_unit(connection, experiment, arm, customer, "clicked", sign, now)
        return
    connection.execute(
        "UPDATE impressions SET purchases = ? WHERE id = ?", (purchases + sign, impression)
    )
    _add_figure(connection, group, "purchases", sign)
    _add_figure(connection, group, "revenue", sign * amount)
    if purchases + min(sign, 0) == 0:
        _add_figure(connection, group, "converted", sign)
        if in_experiment:
            _add_unit(connection, experiment, arm, customer, "converted", sign, now)
    if in_experiment:
        _add_unit(connection, experiment, arm, customer, "revenue", sign * amount, now)


def _group(impression: Impression) -> tuple[str, str, str, str]:
    """The figures' group of an impression: experiment, arm, model version, surface."""
    return impression.experiment, impression.arm, impression.model_version, impression.surface


def _members(connection: sqlite3.Connection, query: str, values: list[str]) -> set[str]:
    """The values of ``values`` that ``query`` (with one ``{}`` for the list) finds."""
    if not values:
        return set()
    marks = ",".join("?" * len(values))
    return {found for (found,) in connection.execute(query.format(marks), values)}


def _add_figure(
    connection: sqlite3.Connection, group: tuple[str, str, str, str], figure: str, delta: float
) -> None:
    connection.execute(
        "INSERT INTO figures VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
        "(experiment, arm, model_version, surface, figure) DO UPDATE SET value = value + ?",
        (*group, figure, delta, delta),
    )


def _add_unit(
    connection: sqlite3.Connection,
    experiment: str,
    arm: str,
    customer: str,
    figure: str,
    delta: float,
    now: float,
) -> None:
    """Add ``delta`` to one customer's figure (``n`` or one of ``UNIT_FIGURES``) and the
    arm's sums over customers that depend on it."""
    row = connection.execute(
        "SELECT n, clicked, converted, revenue FROM units WHERE experiment = ? AND customer = ?",
        (experiment, customer),
    ).fetchone()
    n, *rest = row if row is not None else (0.0, 0.0, 0.0, 0.0)
    values = dict(zip(UNIT_FIGURES, rest, strict=True))
    changes = _unit_changes(n, values, figure, delta, new_customer=row is None)
    for name, change in changes.items():
        if change:
            connection.execute(
                "INSERT INTO unit_sums VALUES (?, ?, ?, ?) ON CONFLICT (experiment, arm, name) "
                "DO UPDATE SET value = value + ?",
                (experiment, arm, name, change, change),
            )
    if figure == "n":
        n += delta
    else:
        values[figure] += delta
    connection.execute(
        "INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (experiment, customer, n, *(values[m] for m in UNIT_FIGURES), now, arm),
    )


def _unit_changes(
    n: float, values: dict[str, float], figure: str, delta: float, new_customer: bool
) -> dict[str, float]:
    """What the sums over customers (``UNIT_SUMS``) gain when one customer with ``n``
    impressions and ``values`` gains ``delta`` of ``figure``."""
    if figure == "n":
        changes = {
            "customers": 1.0 if new_customer else 0.0,
            "n": delta,
            "n_sq": (n + delta) ** 2 - n**2,
        }
        changes.update({f"n_{m}": delta * values[m] for m in UNIT_FIGURES})
        return changes
    old = values[figure]
    return {figure: delta, f"{figure}_sq": (old + delta) ** 2 - old**2, f"n_{figure}": n * delta}


def unit_removal(n: float, values: dict[str, float]) -> dict[str, float]:
    """What the sums over customers (``UNIT_SUMS``) lose when one customer with ``n``
    impressions and ``values`` leaves them (an erasure): all they added."""
    removal = {"customers": -1.0, "n": -n, "n_sq": -(n**2)}
    for m in UNIT_FIGURES:
        removal.update({m: -values[m], f"{m}_sq": -(values[m] ** 2), f"n_{m}": -n * values[m]})
    return removal


def _unit_removals(
    units: Mapping[bytes | str, bytes | str],
) -> dict[tuple[str, str], dict[str, float]]:
    """``unit_removal`` of each experiment in a customer's Redis units hash (fields
    ``experiment US n``, ``experiment US <figure>``, ``experiment US arm``), by (experiment,
    arm)."""
    by_experiment: dict[str, dict[str, str]] = {}
    for field, value in units.items():
        text = field.decode() if isinstance(field, bytes) else field
        experiment, _, name = text.rpartition(SEPARATOR)
        by_experiment.setdefault(experiment, {})[name] = (
            value.decode() if isinstance(value, bytes) else value
        )
    removals = {}
    for experiment, unit in by_experiment.items():
        values = {m: float(unit.get(m, 0.0)) for m in UNIT_FIGURES}
        removals[(experiment, unit.get("arm", ""))] = unit_removal(
            float(unit.get("n", 0.0)), values
        )
    return removals


# Attribution in Lua, as _attribute, _credit, _count and _add_unit do it in SQLite. Every
# script that attributes starts with ``setup``: prefix, now, window, pending ttl, unit ttl.
_ATTRIBUTION_LUA = r"""
local US = '\31'
local SCAN = {scan}
local UNIT_FIGURES = {'clicked', 'converted', 'revenue'}
local P, NOW, WINDOW, PENDING_TTL, UNIT_TTL, WINDOW_TTL

local function setup(at)
  P, NOW, WINDOW = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  PENDING_TTL, UNIT_TTL = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  WINDOW_TTL = math.ceil(WINDOW) + PENDING_TTL
end

local function num(value) return string.format('%.17g', value) end

local function listed(items, item) return string.find(items, US .. item .. US, 1, true) ~= nil end

local function split(text)
  local parts, start = {}, 1
  while true do
    local at = string.find(text, US, start, true)
    if not at then parts[#parts + 1] = string.sub(text, start); return parts end
    parts[#parts + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
end

local function add(key, field, delta)
  if delta ~= 0 then redis.call('HINCRBYFLOAT', key, field, num(delta)) end
end

local function add_unit(experiment, arm, customer, figure, delta)
  local units = P .. ':customer:' .. customer .. ':units'
  local sums, base, x = P .. ':units', experiment .. US .. arm .. US, experiment .. US
  local v = redis.call('HMGET', units, x .. 'n', x .. 'clicked', x .. 'converted', x .. 'revenue')
  local n = tonumber(v[1]) or 0
  local values = {clicked = tonumber(v[2]) or 0, converted = tonumber(v[3]) or 0,
                  revenue = tonumber(v[4]) or 0}
  if figure == 'n' then
    if not v[1] then add(sums, base .. 'customers', 1) end
    add(sums, base .. 'n', delta)
    add(sums, base .. 'n_sq', (n + delta) ^ 2 - n ^ 2)
    for _, m in ipairs(UNIT_FIGURES) do add(sums, base .. 'n_' .. m, delta * values[m]) end
    redis.call('HSET', units, x .. 'n', num(n + delta))
  else
    local old = values[figure]
    add(sums, base .. figure, delta)
    add(sums, base .. figure .. '_sq', (old + delta) ^ 2 - old ^ 2)
    add(sums, base .. 'n_' .. figure, n * delta)
    redis.call('HSET', units, x .. figure, num(old + delta))
  end
  redis.call('HSET', units, x .. 'arm', arm)
  redis.call('EXPIRE', units, UNIT_TTL)
end

local function count(impression, kind, amount, sign)
  local key = P .. ':impression:' .. impression
  local h = redis.call('HMGET', key, 'c', 'x', 'a', 'v', 's')
  if not h[5] then return end
  local customer, experiment, arm = h[1], h[2], h[3]
  local figures = P .. ':figures'
  local group = experiment .. US .. arm .. US .. h[4] .. US .. h[5] .. US
  local in_experiment = experiment ~= '' and customer ~= ''
  if kind == 'c' then
    local clicks = redis.call('HINCRBY', key, 'k', sign)
    add(figures, group .. 'clicks', sign)
    if clicks - math.max(sign, 0) == 0 then
      add(figures, group .. 'clicked', sign)
      if in_experiment then add_unit(experiment, arm, customer, 'clicked', sign) end
    end
    return
  end
  local purchases = redis.call('HINCRBY', key, 'p', sign)
  add(figures, group .. 'purchases', sign)
  add(figures, group .. 'revenue', sign * amount)
  if purchases - math.max(sign, 0) == 0 then
    add(figures, group .. 'converted', sign)
    if in_experiment then add_unit(experiment, arm, customer, 'converted', sign) end
  end
  if in_experiment then add_unit(experiment, arm, customer, 'revenue', sign * amount) end
end

local function credit(event_id, impression, kind, amount)
  local record = impression .. US .. kind .. US .. num(amount)
  if redis.call('SET', P .. ':attribution:' .. event_id, record, 'NX', 'EX', WINDOW_TTL) then
    count(impression, kind, amount, 1)
  end
end

local function uncredit(event_id)
  local key = P .. ':attribution:' .. event_id
  local record = redis.call('GET', key)
  if not record then return end
  redis.call('DEL', key)
  local parts = split(record)
  count(parts[1], parts[2], tonumber(parts[3]), -1)
end

local function keep_pending(key, event_id, value)
  redis.call('HSET', key, event_id, value)
  redis.call('EXPIRE', key, PENDING_TTL)
end

local function attribute(event_id, kind, item, amount, impression, customers)
  if kind == 'c' then
    local h = redis.call('HMGET', P .. ':impression:' .. impression, 't', 'items')
    if not h[1] then
      keep_pending(P .. ':pending:impression:' .. impression, event_id, item .. US .. num(NOW))
    elseif math.abs(NOW - tonumber(h[1])) <= WINDOW and listed(h[2], item) then
      credit(event_id, impression, 'c', 0)
    end
    return
  end
  for _, customer in ipairs(customers) do
    local ids = redis.call('ZREVRANGEBYSCORE', P .. ':customer:' .. customer .. ':impressions',
                           num(NOW), num(NOW - WINDOW), 'LIMIT', 0, SCAN)
    for _, id in ipairs(ids) do
      local items = redis.call('HGET', P .. ':impression:' .. id, 'items')
      if items and listed(items, item) then
        credit(event_id, id, 'p', amount)
        return
      end
    end
  end
  for _, customer in ipairs(customers) do
    keep_pending(P .. ':pending:customer:' .. customer, event_id,
                 item .. US .. num(amount) .. US .. num(NOW))
  end
end
""".replace("{scan}", str(PURCHASE_SCAN))

# Both in a customer's slot: no attribution here (its keys are in another slot).
_APPLY_SCRIPT = """
-- KEYS: per event: marker key, events key, erased marker, unsubscribed key, restored marker;
-- last, this batch's cancel marker (set when the client gave up waiting: nothing to do)
-- ARGV[1] = retention seconds, ARGV[2] = events dir, ARGV[3] = 1 to refuse while not
-- restored; then per event: score, member, 1 if an unsubscribe
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  return {-2}
end
local n = (#KEYS - 1) / 5
if ARGV[3] == '1' then
  for j = 1, n do
    if redis.call('HEXISTS', KEYS[5 * j], ARGV[2]) == 0 then return {-1} end
  end
end
local ttl = tonumber(ARGV[1])
local results = {}
for j = 1, n do
  local marker, events = KEYS[5 * j - 4], KEYS[5 * j - 3]
  local score, member = ARGV[3 * j + 1], ARGV[3 * j + 2]
  if redis.call('EXISTS', KEYS[5 * j - 2]) == 1 then
    results[j] = 2
  elseif redis.call('SET', marker, '1', 'NX', 'EX', ttl) then
    redis.call('ZADD', events, score, member)
    redis.call('EXPIRE', events, ttl)
    if ARGV[3 * j + 3] == '1' then redis.call('SET', KEYS[5 * j - 1], member, 'NX') end
    results[j] = 1
  else
    results[j] = 0
  end
end
return results
"""

_FORGET_SCRIPT = """
-- KEYS: per event: marker key, events key, unsubscribed key; ARGV: per event: member
for j = 1, #KEYS / 3 do
  local member = ARGV[j]
  redis.call('DEL', KEYS[3 * j - 2])
  redis.call('ZREM', KEYS[3 * j - 1], member)
  if redis.call('GET', KEYS[3 * j]) == member then redis.call('DEL', KEYS[3 * j]) end
end
return 0
"""

# In the attribution slot, after the apply script said which events are new (idempotent all
# the same: an event is credited once, by its attribution key).
_ATTRIBUTE_SCRIPT = (
    _ATTRIBUTION_LUA
    + """
-- ARGV[1..5] = setup; then per touch: event id, kind, item, amount, impression, customer,
-- session
setup(1)
for at = 5, #ARGV - 1, 7 do
  local customers = {ARGV[at + 6]}
  if ARGV[at + 7] ~= '' then customers[2] = ARGV[at + 7] end
  attribute(ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], tonumber(ARGV[at + 4]), ARGV[at + 5],
            customers)
end
return 0
"""
)

_UNCREDIT_SCRIPT = (
    _ATTRIBUTION_LUA
    + """
-- ARGV[1..5] = setup; then per event: event id, impression, customer, session
setup(1)
for at = 5, #ARGV - 1, 4 do
  local event_id = ARGV[at + 1]
  uncredit(event_id)
  redis.call('HDEL', P .. ':pending:impression:' .. ARGV[at + 2], event_id)
  redis.call('HDEL', P .. ':pending:customer:' .. ARGV[at + 3], event_id)
  redis.call('HDEL', P .. ':pending:customer:' .. ARGV[at + 4], event_id)
end
return 0
"""
)

_RECORD_SCRIPT = (
    _ATTRIBUTION_LUA
    + """
-- KEYS[1] = erased set, KEYS[2] = this slot's restored marker
-- ARGV[1] = events dir, ARGV[2..6] = setup; then per impression: id, customer, shown at,
-- experiment, arm, model version, surface, items
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
setup(2)
-- What the batch needs besides writing its impressions, each asked once for the batch: any
-- click or purchase that came before its impression (rare: the buffer is written every
-- second), the figures by group, and the trimming of each customer's list.
local waiting, customers, groups = {}, {}, {}
for at = 6, #ARGV - 1, 8 do
  waiting[#waiting + 1] = P .. ':pending:impression:' .. ARGV[at + 1]
  local customer = ARGV[at + 2]
  if customer ~= '' and not customers[customer] then
    customers[customer] = true
    waiting[#waiting + 1] = P .. ':pending:customer:' .. customer
  end
end
local pending_any = false
for first = 1, #waiting, 1000 do  -- Lua unpacks at most about 8,000 values at once
  if redis.call('EXISTS', unpack(waiting, first, math.min(first + 999, #waiting))) > 0 then
    pending_any = true
    break
  end
end
local recorded = 0
for at = 6, #ARGV - 1, 8 do
  local id, customer, shown = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local experiment, arm, version = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local surface, items = ARGV[at + 7], ARGV[at + 8]
  local key = P .. ':impression:' .. id
  if (customer == '' or redis.call('SISMEMBER', KEYS[1], customer) == 0)
      and redis.call('EXISTS', key) == 0 then
    recorded = recorded + 1
    redis.call('HSET', key, 't', shown, 'c', customer, 'x', experiment, 'a', arm, 'v', version,
               's', surface, 'items', items, 'k', '0', 'p', '0')
    redis.call('EXPIRE', key, WINDOW_TTL)
    if customer ~= '' then
      redis.call('ZADD', P .. ':customer:' .. customer .. ':impressions', shown, id)
    end
    local group = experiment .. US .. arm .. US .. version .. US .. surface .. US
    groups[group] = (groups[group] or 0) + 1
    if experiment ~= '' and customer ~= '' then add_unit(experiment, arm, customer, 'n', 1) end
    if pending_any then
      local t = tonumber(shown)
      local pending_key = P .. ':pending:impression:' .. id
      local pending = redis.call('HGETALL', pending_key)
      for i = 1, #pending, 2 do
        local parts = split(pending[i + 1])
        if math.abs(tonumber(parts[2]) - t) <= WINDOW and listed(items, parts[1]) then
          credit(pending[i], id, 'c', 0)
        end
      end
      redis.call('DEL', pending_key)
      if customer ~= '' then
        pending_key = P .. ':pending:customer:' .. customer
        pending = redis.call('HGETALL', pending_key)
        for i = 1, #pending, 2 do
          local parts = split(pending[i + 1])
          local bought = tonumber(parts[3])
          if t <= bought and bought - t <= WINDOW and listed(items, parts[1]) then
            credit(pending[i], id, 'p', tonumber(parts[2]))
            redis.call('HDEL', pending_key, pending[i])
          end
        end
      end
    end
  end
end
for customer in pairs(customers) do
  -- Kept as long as the impressions it lists, so erasure finds every one of them.
  local mine = P .. ':customer:' .. customer .. ':impressions'
  redis.call('ZREMRANGEBYSCORE', mine, '-inf', '(' .. num(NOW - WINDOW_TTL))
  redis.call('EXPIRE', mine, WINDOW_TTL)
end
for group, n in pairs(groups) do add(P .. ':figures', group .. 'impressions', n) end
return recorded
"""
)


class LocalBuckets:
    """Rate-limit buckets in this process, by the generic cell rate algorithm: a bucket is
    one timestamp, the theoretical arrival time of the next request at the bucket's rate."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._arrivals: dict[str, float] = {}

    def take(self, bucket: str, rate: float, burst: int) -> float:
        """0.0 if one more request is allowed now, else the seconds until one would be."""
        interval = 1.0 / rate
        with self._lock:
            now = self.clock()
            arrival = max(self._arrivals.get(bucket, 0.0), now) + interval
            wait = arrival - now - burst * interval
            if wait > 1e-9:  # not 0: float rounding must not refuse the last of a burst
                return wait
            self._arrivals[bucket] = arrival
            return 0.0


# The same algorithm in Redis, on the server's clock so every worker and host agrees: the
# wait as a string ("0": taken).
_TAKE_LUA = """
local function take(key, rate, burst)
  local now = redis.call('TIME')
  now = tonumber(now[1]) + tonumber(now[2]) / 1000000
  local interval = 1 / tonumber(rate)
  local arrival = math.max(tonumber(redis.call('GET', key) or 0), now) + interval
  local wait = arrival - now - tonumber(burst) * interval
  if wait > 1e-9 then return tostring(wait) end
  local ttl_ms = math.ceil((arrival - now) * 1000) + 1
  redis.call('SET', key, string.format('%.6f', arrival), 'PX', ttl_ms)
  return '0'
end
"""
_TAKE_SCRIPT = _TAKE_LUA + "return take(KEYS[1], ARGV[1], ARGV[2])\n"

# A request's reads ahead (``RedisStore.take_and_read``) in one script call per hash slot,
# by parts, ARGV[1] naming those in this call, in this order: "t" the rate-limit take (KEYS:
# the bucket), "s" the customer's state (their events, erasure marker, unsubscription and
# their slot's restored marker), "k" the kept picks of one of their email sends (KEYS: its
# snapshot), "c" the catalog overlay's stamp and its slot's restored marker. ARGV[2..5] =
# rate, burst, the events' horizon, the events dir. The replies of every part, one after
# another (REQUEST_PARTS: how many each).
_REQUEST_SCRIPT = (
    _TAKE_LUA
    + """
local parts, k, out = ARGV[1], 1, {}
local function has(part) return string.find(parts, part, 1, true) ~= nil end
if has('t') then
  out[#out + 1] = take(KEYS[k], ARGV[2], ARGV[3])
  k = k + 1
end
if has('s') then
  out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. ARGV[4], '+inf')
  out[#out + 1] = redis.call('EXISTS', KEYS[k + 1])
  out[#out + 1] = redis.call('GET', KEYS[k + 2])
  out[#out + 1] = redis.call('HEXISTS', KEYS[k + 3], ARGV[5])
  k = k + 4
end
if has('k') then
  out[#out + 1] = redis.call('GET', KEYS[k])
  k = k + 1
end
if has('c') then
  out[#out + 1] = redis.call('GET', KEYS[k])
  out[#out + 1] = redis.call('HEXISTS', KEYS[k + 1], ARGV[5])
end
return out
"""
)
REQUEST_PARTS = {"t": 1, "s": 4, "k": 1, "c": 2}  # replies of each part of _REQUEST_SCRIPT


def _offsets(names: str) -> Iterator[tuple[str, int]]:
    """Each part of a _REQUEST_SCRIPT call and where its replies start."""
    at = 0
    for name in names:
        yield name, at
        at += REQUEST_PARTS[name]


CLUSTER_SCHEME = "redis+cluster://"
TAG_LETTERS = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"


@cache
def slot_tags() -> tuple[str, ...]:
    """A hash tag for each of the SLOTS slots: the first three-letter tag (of TAG_LETTERS)
    whose slot it is (CRC16-XMODEM of the tag, modulo SLOTS), found for every tag at once."""
    table = []
    for byte in range(256):
        value = byte << 8
        for _ in range(8):
            value = (value << 1) ^ 0x1021 if value & 0x8000 else value << 1
        table.append(value & 0xFFFF)
    crc_of = np.array(table, dtype=np.int64)
    letters = np.frombuffer(TAG_LETTERS, dtype=np.uint8).astype(np.int64)
    size = len(letters)
    tags = np.arange(size**3)
    crc = np.zeros(len(tags), dtype=np.int64)
    for letter in (tags // size**2, tags // size % size, tags % size):
        crc = ((crc << 8) & 0xFFFF) ^ crc_of[((crc >> 8) ^ letters[letter]) & 0xFF]
    first = np.full(SLOTS, -1, dtype=np.int64)
    first[(crc % SLOTS)[::-1]] = tags[::-1]  # the last write wins: the first tag
    assert (first >= 0).all(), "every slot has a three-letter tag"
    text = TAG_LETTERS.decode()
    return tuple(
        text[tag // size**2] + text[tag // size % size] + text[tag % size] for tag in first.tolist()
    )


ERASE_TRIES = 3  # each step of an erasure, through a failover or a short outage
RedisClient = redis.Redis | redis.RedisCluster


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes of a ``redis+cluster://host:port[,host:port...]`` URL.
    ValueError for anything else: a cluster has one keyspace, so no database number."""
    rest = url.removeprefix(CLUSTER_SCHEME)
    if "/" in rest.rstrip("/") or "?" in rest or "@" in rest:
        raise ValueError(
            "a Redis Cluster URL is redis+cluster://host:port[,host:port...]: a cluster has "
            "no database numbers (nor options here)"
        )
    nodes = []
    for part in rest.rstrip("/").split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part.strip()!r} is not a cluster node as host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def connect(url: str, **options: Any) -> RedisClient:
    """A client for ``url``: one Redis (redis://, rediss://, unix://) or a Redis Cluster
    (redis+cluster://), which follows the cluster's masters as they change."""
    if not url.startswith(CLUSTER_SCHEME):
        return redis.Redis.from_url(url, **options)
    options.pop("retry_on_timeout", None)  # the cluster client's ``retry`` says it
    return redis.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        require_full_coverage=False,  # a slot without a master fails alone
        retry=Retry(NoBackoff(), 1),  # once, after following a moved slot: then fail fast
        **options,
    )


class RedisStore:
    """The store in one Redis or a Redis Cluster (the key layout above). Every call fails fast
    (``timeout`` seconds) with StoreUnavailable; after a failure, calls fail at once for
    ``cooldown`` seconds (on a cluster, the calls to that master) so a dead server costs
    requests nothing, then the next call tries again (redis-py reconnects; on a cluster the
    client first learns the masters anew).

    What is atomic on a cluster: an event is recorded with its idempotency marker, against
    the customer's erasure marker, by one script in the customer's slot (a batch of several
    customers runs one script per slot; if one fails, those already run are undone, so
    StoreUnavailable still means nothing applied). Its attribution to impressions follows, by
    a second script in the attribution slot, idempotent by event id; if that one fails the
    event stands and the attribution is lost (analytics, not records: see the module
    docstring). An erasure clears the customer's slot first (from then on nothing more is
    recorded for them), then the attribution slot and the triggers, each step retried.

    On a cluster an event is acknowledged only once a replica has it too (``WAIT 1``), so the
    replica that takes over when its master fails holds every acknowledged event; when no
    replica confirmed in time the events are undone and the call raises StoreUnavailable (the
    caller answers 503; the event is not in the durable log either, and the client retries).
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        retention_seconds: float,
        origin: str = "default",
        timeout: float = 0.05,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.time,
        attribution_window: float = defaults.ATTRIBUTION_HOURS * 3600.0,
    ) -> None:
        self.url = url
        self.cluster = url.startswith(CLUSTER_SCHEME)
        self.timeout = timeout
        self._client: RedisClient | None = None
        self._patient_client: RedisClient | None = None
        self._connecting = threading.Lock()  # one client per store, whichever thread is first
        # Replicas that must confirm an event before it is acknowledged, and how long they
        # may take (within the call's own timeout).
        self.replicas = 1 if self.cluster else 0
        self._wait_ms = max(1, int(timeout * 500))
        self.prefix = prefix
        self.retention = retention_seconds
        self.attribution_window = attribution_window
        # Which durable logs this store was restored from: a field per events directory.
        self.origin = origin
        self.cooldown = cooldown
        self.clock = clock
        self._down_until: dict[str, float] = {}  # by _scope
        self._stale_topology = False
        self._apply = Script(_APPLY_SCRIPT)
        self._forget = Script(_FORGET_SCRIPT)
        self._attribute = Script(_ATTRIBUTE_SCRIPT)
        self._uncredit = Script(_UNCREDIT_SCRIPT)
        self._record = Script(_RECORD_SCRIPT)
        self._take = Script(_TAKE_SCRIPT)
        self._request = Script(_REQUEST_SCRIPT)
        self._attribution = ATTRIBUTION.format(prefix=prefix)
        self._erased_key = ERASED_KEY.format(prefix=prefix)
        self._figures_key = FIGURES_KEY.format(prefix=prefix)
        self._triggers_key = TRIGGERS_KEY.format(prefix=prefix)
        self._catalog_key = CATALOG_KEY.format(prefix=prefix)
        self._catalog_stamp_key = CATALOG_STAMP_KEY.format(prefix=prefix)
        self._catalog_restored_key = self._restored_key(self._catalog_key)
        self._catalog = EMPTY_CATALOG

    @property
    def client(self) -> RedisClient:
        """Made at the first call (a cluster client asks the cluster for its masters, which
        must not stop the service from starting while the cluster is down)."""
        if self._client is not None:
            return self._client
        with self._connecting:
            if self._client is None:
                self._client = connect(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry_on_timeout=False,
                )
            return self._client

    @property
    def _patient(self) -> RedisClient:
        """A client that waits: for what must be confirmed (undoing an apply, erasing)."""
        with self._connecting:
            if self._patient_client is None:
                self._patient_client = connect(self.url, socket_timeout=CANCEL_TIMEOUT)
            return self._patient_client

    def close(self) -> None:
        """Close the clients' connections (a later call connects again)."""
        for client in (self._client, self._patient_client):
            if client is not None:
                client.close()

    def _node(self, key: str, client: RedisClient | None = None) -> redis.Redis:
        """A client for the node that holds ``key`` (the one Redis, or the slot's master)."""
        found = self.client if client is None else client
        if isinstance(found, redis.RedisCluster):
            owner = found.get_node_from_key(key)  # type: ignore[no-untyped-call]
            node: redis.Redis = found.get_redis_connection(owner)
            return node
        return found

    def _customer_key(self, template: str, customer: str, **parts: str) -> str:
        return template.format(prefix=self.prefix, customer=customer, **parts)

    def _events_key(self, customer: str) -> str:
        return self._customer_key(CUSTOMER_EVENTS_KEY, customer)

    def _slots(self, keys: Sequence[str]) -> dict[int, list[int]]:
        """The indices of ``keys`` by hash slot (all in one group on a single Redis, where a
        script may touch any keys)."""
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slot = key_slot(key.encode()) if self.cluster else 0
            groups.setdefault(slot, []).append(index)
        return groups

    def _scope(self, key: str | None) -> str:
        """What a failure cools down: on a cluster, the master that holds ``key`` (as the
        client last learned it; no call), so the customers of the other masters are served
        while one has failed; otherwise ("") every call."""
        client = self._client
        if key is None or not isinstance(client, redis.RedisCluster):
            return ""
        try:
            node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        except (redis.RedisError, RedisClusterException):
            return ""
        return str(node.name)

    def _call(self, operation: Callable[[], T], key: str | None = None) -> T:
        """Run ``operation`` (on the node that holds ``key``, when given)."""
        now, scope = self.clock(), self._scope(key)
        if now < max(self._down_until.get("", 0.0), self._down_until.get(scope, 0.0)):
            raise StoreUnavailable("redis is unavailable (cooling down after a failure)")
        try:
            if self._stale_topology:
                self._stale_topology = False
                cluster = self.client
                if isinstance(cluster, redis.RedisCluster):
                    cluster.nodes_manager.initialize()  # learn which nodes are masters now
            return operation()
        except StoreNotRestored:
            raise
        except (redis.RedisError, RedisClusterException) as error:
            self._down_until[scope] = self.clock() + self.cooldown
            self._stale_topology = self.cluster
            raise StoreUnavailable(f"redis: {error}") from error

    def _restored_key(self, key: str) -> str:
        """The restored marker in ``key``'s slot."""
        tag = slot_tags()[key_slot(key.encode())]
        return RESTORED_KEY.format(prefix=self.prefix, tag=tag)

    def set_items(self, changes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not changes:
            return

        def write() -> None:
            pipeline = self._node(self._catalog_key).pipeline(transaction=True)
            pipeline.hset(self._catalog_key, mapping=dict(_catalog_rows(changes)))
            # A random stamp, not a counter: a Redis that lost its data and was replayed must
            # not come back to a stamp a reader cached with other contents.
            pipeline.set(self._catalog_stamp_key, secrets.randbits(62) + 1)
            pipeline.execute()

        self._call(write, self._catalog_key)

    def catalog(self) -> CatalogOverlay:
        ahead = _AHEAD.get()
        if ahead is not None and ahead.catalog is not None:
            return ahead.catalog

        def read() -> CatalogOverlay:
            node = self._node(self._catalog_key)
            pipeline = node.pipeline(transaction=False)
            pipeline.get(self._catalog_stamp_key)
            pipeline.hexists(self._catalog_restored_key, self.origin)
            found, restored = pipeline.execute()
            if not restored:
                raise StoreNotRestored("redis lost its data; replaying the durable logs")
            if int(found or 0) == self._catalog.stamp:
                return self._catalog
            pipeline = node.pipeline(transaction=True)
            pipeline.get(self._catalog_stamp_key)
            pipeline.hgetall(self._catalog_key)
            stamp_now, rows = pipeline.execute()
            self._catalog = CatalogOverlay(int(stamp_now or 0), _catalog_items(iter(rows.items())))
            return self._catalog

        return self._call(read, self._catalog_key)

    def take_and_read(
        self,
        bucket: str | None,
        rate: float,
        burst: int,
        customer: str | None,
        send: str | None = None,
    ) -> float:
        ahead = _AHEAD.get()
        if ahead is None or (bucket is None and customer is None):  # nothing to go along with
            return 0.0 if bucket is None else self.take(bucket, rate, burst)
        rate_key = None if bucket is None else RATE_KEY.format(prefix=self.prefix, bucket=bucket)
        parts: list[tuple[str, list[str]]] = []
        if rate_key is not None:
            parts.append(("t", [rate_key]))
        if customer is not None:
            events = self._events_key(customer)
            erased = self._customer_key(CUSTOMER_ERASED_KEY, customer)
            unsubscribed = self._customer_key(UNSUBSCRIBED_KEY, customer)
            parts.append(("s", [events, erased, unsubscribed, self._restored_key(events)]))
            if send is not None:
                parts.append(("k", [self._customer_key(SNAPSHOT_KEY, customer, send=send)]))
        parts.append(("c", [self._catalog_stamp_key, self._catalog_restored_key]))
        horizon = repr(self.clock() - self.retention)
        arguments = (rate, burst, horizon, self.origin)

        def read() -> float:
            # A script call per slot (one on a single Redis), each sent before any reply is
            # read: one round trip.
            calls: dict[int, tuple[str, list[str]]] = {}
            for name, keys in parts:
                slot = key_slot(keys[0].encode()) if self.cluster else 0
                names, slot_keys = calls.get(slot, ("", []))
                calls[slot] = (names + name, slot_keys + keys)
            groups = list(calls.values())
            replies = self._request.run_each(
                [(self._node(keys[0]), keys, (names, *arguments)) for names, keys in groups],
                raise_errors=False,
            )
            found: dict[str, list[Any]] = {}
            for (names, _), reply in zip(groups, replies, strict=True):
                if isinstance(reply, Exception):
                    # A node failed or a slot moved: the next call learns the masters anew.
                    self._stale_topology = self.cluster
                    # The take's failure is the caller's; a read's, the request's own read's
                    # to report.
                    if "t" in names:
                        raise reply
                    continue
                found |= {
                    name: reply[at : at + REQUEST_PARTS[name]] for name, at in _offsets(names)
                }
            wait = float(found["t"][0]) if "t" in found else 0.0
            if "s" in found and found["s"][3]:  # read ahead only from a restored slot
                ahead.customer, ahead.state = customer, self._state(*found["s"][:3])
                if "k" in found and customer is not None and send is not None:
                    kept = found["k"][0]
                    ahead.snapshot = (customer, send, None if kept is None else kept.decode())
            if "c" not in found:
                return wait
            stamp_now, restored = found["c"]
            if restored and int(stamp_now or 0) == self._catalog.stamp:
                ahead.catalog = self._catalog
            return wait

        if not self.cluster:
            return self._call(read)
        # On a cluster the calls reach up to three masters, and a failure must cool down
        # only the one that failed: a read's is left to the request's own read, the take's
        # cools down the bucket's master. The take is not sent again: it may have run.
        now = self.clock()
        scopes = ["", *(self._scope(keys[0]) for _, keys in parts)]
        if not all(now >= self._down_until.get(scope, 0.0) for scope in scopes):
            return 0.0 if bucket is None else self.take(bucket, rate, burst)
        try:
            return read()
        except (redis.RedisError, RedisClusterException) as error:
            if rate_key is None:
                return 0.0
            self._down_until[self._scope(rate_key)] = self.clock() + self.cooldown
            self._stale_topology = True
            raise StoreUnavailable(f"redis: {error}") from error

    def take(self, bucket: str, rate: float, burst: int) -> float:
        key = RATE_KEY.format(prefix=self.prefix, bucket=bucket)
        wait = self._call(lambda: self._take.run(self._node(key), [key], [rate, burst]), key)
        return float(wait)

    def add_triggers(self, triggers: Sequence[tuple[float, str, str]]) -> None:
        if not triggers:
            return

        def add() -> None:
            key = self._triggers_key
            pipeline = self._node(key).pipeline(transaction=False)
            pipeline.zadd(key, {text: at for at, _, text in triggers})
            pipeline.zremrangebyscore(key, "-inf", self.clock() - self.retention)
            pipeline.execute()

        self._call(add, self._triggers_key)

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        key = self._customer_key(SNAPSHOT_KEY, customer, send=send)
        sends = self._customer_key(SNAPSHOTS_KEY, customer)
        ttl = max(int(ttl_seconds), 1)

        def keep() -> str:
            pipeline = self._node(key).pipeline(transaction=True)
            pipeline.set(key, payload, nx=True, ex=ttl)
            pipeline.get(key)
            # The sends are kept as long as the longest-lived snapshot, for erasure to find.
            pipeline.sadd(sends, send)
            pipeline.expire(sends, ttl, nx=True)
            pipeline.expire(sends, ttl, gt=True)
            kept = pipeline.execute()[1]
            return kept.decode() if isinstance(kept, bytes) else str(kept)

        return self._call(keep, key)

    def kept_snapshot(self, customer: str, send: str) -> str | None:
        read, kept = _ahead_snapshot(customer, send)
        if read:
            return kept
        key = self._customer_key(SNAPSHOT_KEY, customer, send=send)
        found = self._call(lambda: self._node(key).get(key), key)
        return found.decode() if isinstance(found, bytes) else found

    def triggers_since(self, since: float) -> list[str]:
        key = self._triggers_key
        members = self._call(lambda: self._node(key).zrangebyscore(key, f"({since}", "+inf"), key)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def customer_state(self, customer: str, since: float) -> CustomerState:
        return self.customer_states([customer], since)[0]

    def customer_states(self, customers: Sequence[str], since: float) -> list[CustomerState]:
        if len(customers) == 1 and since == 0.0:
            state = _ahead_state(customers[0])
            if state is not None:
                return [state]
        horizon = max(since, self.clock() - self.retention)

        def read() -> list[CustomerState]:
            # One customer: one round trip to one node. Several (a session's): pipelined per
            # node on a cluster.
            if len(customers) == 1:
                pipeline: Any = self._node(self._events_key(customers[0])).pipeline(False)
            else:
                pipeline = self.client.pipeline(transaction=False)
            for customer in customers:
                self._queue_state(pipeline, customer, horizon)
            replies = pipeline.execute()
            if not all(replies[3::4]):
                raise StoreNotRestored("redis lost its data; replaying the durable logs")
            return [
                self._state(*state)
                for state in zip(replies[0::4], replies[1::4], replies[2::4], strict=True)
            ]

        if not customers:
            return []
        return self._call(read, self._events_key(customers[0]) if len(customers) == 1 else None)

    def _queue_state(self, pipeline: Any, customer: str, horizon: float) -> None:
        """Queue the four reads of a customer's state: events, erasure, consent, restored."""
        events = self._events_key(customer)
        pipeline.zrangebyscore(events, f"({horizon}", "+inf")
        pipeline.exists(self._customer_key(CUSTOMER_ERASED_KEY, customer))
        pipeline.get(self._customer_key(UNSUBSCRIBED_KEY, customer))
        pipeline.hexists(self._restored_key(events), self.origin)

    @staticmethod
    def _state(members: list[bytes], erased: int, unsubscribed: bytes | None) -> CustomerState:
        return CustomerState(
            [StoredEvent.from_json(member) for member in members],
            bool(erased),
            None if unsubscribed is None else StoredEvent.from_json(unsubscribed),
        )

    def apply(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool = False
    ) -> list[Applied]:
        """As Store.apply; refused with StoreNotRestored until the store is restored, except
        for the replay itself (``restoring``)."""
        if not entries:
            return []
        results: list[Applied] = [Applied.DUPLICATE] * len(entries)
        new: list[tuple[str, StoredEvent]] = []  # undone if a later slot fails
        for indices in self._slots([self._events_key(c) for c, _ in entries]).values():
            try:
                codes = self._apply_slot([entries[i] for i in indices], restoring)
            except StoreUnavailable:
                if new:
                    self._undo(new, None)
                raise
            for index, code in zip(indices, codes, strict=True):
                results[index] = code
                if code == Applied.NEW:
                    new.append(entries[index])
        touches = [] if restoring else [t for c, e in new if (t := touch_of(c, e)) is not None]
        if touches:
            try:
                self._call(lambda: self._attribute_touches(touches), self._figures_key)
            except StoreUnavailable as error:
                log.warning(
                    "%d events recorded without their attribution (%s)", len(touches), error
                )
        return results

    def _apply_slot(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool
    ) -> list[Applied]:
        """Run the apply script on entries of one slot; on a cluster, acknowledged once a
        replica confirmed them."""
        keys: list[str] = []
        args: list[str | float | int] = [int(self.retention), self.origin, int(not restoring)]
        for customer, event in entries:
            events = self._events_key(customer)
            keys += [
                self._customer_key(EVENT_KEY, customer, event_id=event.event_id),
                events,
                self._customer_key(CUSTOMER_ERASED_KEY, customer),
                self._customer_key(UNSUBSCRIBED_KEY, customer),
                self._restored_key(events),
            ]
            args += [event.received_at, event.to_json(), int(event.kind == UNSUBSCRIBE)]
        batch = secrets.token_hex(8)
        cancel = self._customer_key(CANCEL_KEY, entries[0][0], batch=batch)
        keys.append(cancel)

        def run() -> tuple[list[int], int]:
            node = self._node(keys[0])
            if not self.replicas:
                return self._apply.run(node, keys, args), 0
            wait = ("WAIT", self.replicas, self._wait_ms)
            codes, confirmed = self._apply.run_then(node, keys, args, wait)
            return codes, int(confirmed)

        try:
            codes, confirmed = self._call(run, keys[0])
        except StoreUnavailable as error:
            if isinstance(error.__cause__, redis.TimeoutError):
                self._undo(entries, cancel)  # the script may run all the same
            raise
        if list(codes) == [-1]:
            raise StoreNotRestored("redis lost its data; replaying the durable logs")
        results = [Applied(int(code)) for code in codes]
        if confirmed < self.replicas and Applied.NEW in results:
            self._undo([e for e, r in zip(entries, results, strict=True) if r == Applied.NEW], None)
            raise StoreUnavailable("no replica confirmed the events in time; nothing recorded")
        return results

    def _setup(self) -> list[str | float | int]:
        """The attribution scripts' ``setup`` arguments."""
        return [
            self._attribution,
            repr(self.clock()),
            repr(self.attribution_window),
            defaults.PENDING_ATTRIBUTION_SECONDS,
            int(self.retention),
        ]

    def _attribute_touches(self, touches: Sequence[Touch]) -> None:
        args = self._setup()
        for touch in touches:
            session = touch.customers[1] if len(touch.customers) > 1 else ""
            customer = touch.customers[0] if touch.customers else ""
            args += [touch.event_id, touch.kind, touch.item_id, repr(touch.amount)]
            args += [touch.impression_id, customer, session]
        keys = [self._figures_key]
        self._attribute.run(self._node(keys[0]), keys, args)

    def record_impressions(self, impressions: Sequence[Impression]) -> int:
        if not impressions:
            return 0
        args: list[str | float | int] = [self.origin, *self._setup()]
        for impression in impressions:
            args += [
                impression.impression_id,
                impression.customer,
                repr(impression.shown_at),
                impression.experiment,
                impression.arm,
                impression.model_version,
                impression.surface,
                joined(impression.items),
            ]
        keys = [self._erased_key, self._restored_key(self._erased_key)]
        recorded = int(
            self._call(lambda: self._record.run(self._node(keys[0]), keys, args), keys[0])
        )
        if recorded == -1:
            raise StoreNotRestored("redis lost its data; replaying the durable logs")
        return recorded

    def impression_figures(self) -> ImpressionFigures:
        def read() -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
            pipeline = self._node(self._figures_key).pipeline(transaction=False)
            pipeline.hgetall(self._figures_key)
            pipeline.hgetall(UNIT_SUMS_KEY.format(prefix=self.prefix))
            figures, units = pipeline.execute()
            return figures, units

        figure_rows, unit_rows = self._call(read, self._figures_key)
        return _collected(
            (field.decode().split(SEPARATOR) + [value] for field, value in figure_rows.items()),
            (field.decode().split(SEPARATOR) + [value] for field, value in unit_rows.items()),
        )

    def restored(self) -> bool:
        """Whether the markers name this store's events dir: one slot's per master is enough
        (a master that lost its data lost every marker of its slots; a slot moves with its
        marker)."""

        def look() -> bool:
            client = self.client
            slots = [0]
            if isinstance(client, redis.RedisCluster):
                first: dict[str, int] = {}
                for slot, nodes in sorted(client.nodes_manager.slots_cache.items()):
                    first.setdefault(nodes[0].name, slot)
                slots = list(first.values())
            tags = slot_tags()
            pipeline = client.pipeline(transaction=False)
            for slot in slots:
                marker = RESTORED_KEY.format(prefix=self.prefix, tag=tags[slot])
                pipeline.hexists(marker, self.origin)
            return all(pipeline.execute())

        return self._call(look)

    def mark_restored(self) -> None:
        def mark() -> None:  # 16,384 writes: on the client that waits
            pipeline = self._patient.pipeline(transaction=False)
            for tag in slot_tags():
                pipeline.hset(RESTORED_KEY.format(prefix=self.prefix, tag=tag), self.origin, 1)
            pipeline.execute()

        self._call(mark)

    def _undo(self, entries: Sequence[tuple[str, StoredEvent]], cancel: str | None) -> None:
        """Forget what an apply recorded in the customers' slots (its attribution has not
        run). After an apply that timed out (``cancel``: its batch's cancel marker): Redis
        runs a script it received to the end whatever the client does, maybe after this. So
        cancel the batch (an apply that has not run yet does nothing) and forget what it
        recorded if it ran, in one transaction: a StoreUnavailable from ``apply`` then means
        nothing applied, and a retry records (and logs) the batch. Sent past the cooldown; if
        even this cannot be sent, the log says the outcome is unknown."""
        problem: Exception | None = None
        for _ in range(CANCEL_TRIES):  # on a connection that waits: this must be confirmed
            try:
                self._forget_events(entries, self._patient, cancel)
                return
            except (redis.RedisError, RedisClusterException) as error:
                problem = error
        log.warning(
            "an apply of %d events failed and could not be undone (%s): a retry may find "
            "some recorded already",
            len(entries),
            problem,
        )

    def _forget_events(
        self, entries: Sequence[tuple[str, StoredEvent]], client: RedisClient, cancel: str | None
    ) -> None:
        """Run the forget script on each slot's entries, in a transaction that first sets
        ``cancel`` when given (entries of one slot then, the cancel marker's)."""
        for indices in self._slots([self._events_key(c) for c, _ in entries]).values():
            keys: list[str] = []
            args: list[str] = []
            for customer, event in (entries[i] for i in indices):
                keys += [
                    self._customer_key(EVENT_KEY, customer, event_id=event.event_id),
                    self._events_key(customer),
                    self._customer_key(UNSUBSCRIBED_KEY, customer),
                ]
                args.append(event.to_json())
            pipeline = self._node(keys[0], client).pipeline(transaction=True)
            if cancel is not None:
                pipeline.set(cancel, 1, ex=CANCEL_SECONDS)
            pipeline.eval(_FORGET_SCRIPT, len(keys), *keys, *args)
            pipeline.execute()

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        if not entries:
            return

        def run() -> None:
            self._forget_events(entries, self.client, None)
            args = self._setup()
            for customer, event in entries:
                args += [event.event_id, event.impression_id or "", customer, event.session or ""]
            self._uncredit.run(self._node(self._figures_key), [self._figures_key], args)

        self._call(run)

    def erase(self, customer: str) -> int:
        """As Store.erase: the customer's slot first (their erasure marker, events, consent
        and snapshots), then the attribution slot (impressions, experiment sums, the erased
        set), then the triggers; each step idempotent and tried ERASE_TRIES times."""
        events = self._events_key(customer)
        sends_key = self._customer_key(SNAPSHOTS_KEY, customer)

        def clear_customer() -> int:
            node = self._node(events, self._patient)
            sends = [_text(s) for s in node.smembers(sends_key)]
            snapshots = [self._customer_key(SNAPSHOT_KEY, customer, send=s) for s in sends]
            pipeline = node.pipeline(transaction=True)
            pipeline.set(self._customer_key(CUSTOMER_ERASED_KEY, customer), 1)
            pipeline.zcard(events)
            pipeline.delete(
                events, self._customer_key(UNSUBSCRIBED_KEY, customer), sends_key, *snapshots
            )
            return int(pipeline.execute()[1])

        def clear_attribution() -> None:
            node = self._node(self._figures_key, self._patient)
            key = partial(str.format, prefix=self.prefix, customer=customer)
            shown = key(CUSTOMER_IMPRESSIONS_KEY)
            impressions = [
                IMPRESSION_KEY.format(prefix=self.prefix, impression=_text(member))
                for member in node.zrange(shown, 0, -1)
            ]
            units = node.hgetall(key(CUSTOMER_UNITS_KEY))
            pipeline = node.pipeline(transaction=True)
            sums = UNIT_SUMS_KEY.format(prefix=self.prefix)
            for (experiment, arm), removal in _unit_removals(units).items():
                for name, change in removal.items():
                    pipeline.hincrbyfloat(sums, SEPARATOR.join((experiment, arm, name)), change)
            pipeline.sadd(self._erased_key, customer)
            pipeline.delete(
                shown, *impressions, key(PENDING_PURCHASES_KEY), key(CUSTOMER_UNITS_KEY)
            )
            pipeline.execute()

        def clear_triggers() -> None:
            node = self._node(self._triggers_key, self._patient)
            members = [_text(m) for m in node.zrange(self._triggers_key, 0, -1)]
            mine = [m for m in members if customer in m]
            if mine:
                node.zrem(self._triggers_key, *mine)

        removed = self._persist(clear_customer, events)
        self._persist(clear_attribution, self._figures_key)
        self._persist(clear_triggers, self._triggers_key)
        return removed

    def _persist(self, step: Callable[[], T], key: str) -> T:
        """Run one idempotent step of an erasure, again after a failure (past the cooldown,
        on the masters the cluster has then), up to ERASE_TRIES times."""
        for _ in range(ERASE_TRIES - 1):
            try:
                return self._call(step, key)
            except StoreUnavailable:
                cooled = max(self._down_until.values(), default=0.0)
                time.sleep(max(cooled - self.clock(), 0.0))
        return self._call(step, key)

    def mark_erased(self, customers: Sequence[str]) -> None:
        if not customers:
            return

        def mark() -> None:
            pipeline = self.client.pipeline(transaction=False)
            for customer in customers:
                pipeline.set(self._customer_key(CUSTOMER_ERASED_KEY, customer), 1)
            pipeline.sadd(self._erased_key, *customers)
            pipeline.execute()

        self._call(mark)

    def erased_keys(self) -> set[str]:
        key = self._erased_key
        members = self._call(lambda: self._node(key).smembers(key), key)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    def ping(self) -> bool:
        try:
            return bool(self._call(lambda: self.client.ping()))
        except StoreUnavailable:
            return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Script:
    """A Lua script run by its SHA1 on one node (a cluster's client would pick a node for a
    script by its first key; these pick the node themselves), loaded there when missing."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def run(self, node: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.run_each([(node, keys, args)])[0]

    def run_each(
        self,
        calls: Sequence[tuple[redis.Redis, Sequence[str], Sequence[Any]]],
        raise_errors: bool = True,
    ) -> list[Any]:
        """Run the script once per (node, keys, args), every call sent before any reply is
        read: one round trip to each node, at once. Straight on the nodes' pooled
        connections, packed by hiredis: a request's reads are the hot path, and redis-py's
        command machinery cost a request more than the round trip itself. A node that lacks
        the script is given it and its call is sent again; any other failure (an error
        reply, a refused connection, a timeout) is raised, or with ``raise_errors=False``
        given in its place."""
        commands = [
            (node, ("EVALSHA", self.sha, len(keys), *keys, *args)) for node, keys, args in calls
        ]
        replies = _send_each(commands)
        missing = [
            index
            for index, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]
        if missing:
            for index in missing:
                commands[index][0].script_load(self.text)
            again = _send_each([commands[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        for reply in replies:
            if raise_errors and isinstance(reply, Exception):
                raise reply
        return replies

    def run_then(
        self, node: redis.Redis, keys: Sequence[str], args: Sequence[Any], *then: Any
    ) -> list[Any]:
        """Run the script and then the commands ``then`` (tuples of arguments) in one
        pipeline on ``node``: the script's reply and theirs."""
        for attempt in range(2):
            pipeline = node.pipeline(transaction=False)
            pipeline.evalsha(self.sha, len(keys), *keys, *args)
            for command in then:
                pipeline.execute_command(*command)  # type: ignore[no-untyped-call]
            try:
                replies: list[Any] = pipeline.execute()
                return replies
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                node.script_load(self.text)
        raise AssertionError("unreachable")


def _send_each(commands: Sequence[tuple[redis.Redis, tuple[Any, ...]]]) -> list[Any]:
    """Send each command on a connection of its node's pool, then read every reply: one
    round trip to each node, at once. A node's failure (an error reply, a refused connection,
    a timeout) is that command's reply, as its exception, and the others are still read. A
    connection whose reply may be unread is closed, never handed back to the pool with it.
    Nothing is retried: the store's callers decide (see RedisStore)."""
    try:
        packed = [hiredis.pack_command(command) for _, command in commands]
    except TypeError as error:  # an argument hiredis cannot pack (str, bytes, int, float)
        raise redis.exceptions.DataError(str(error)) from error
    failures = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    replies: list[Any] = [None] * len(commands)
    taken: list[tuple[Any, Any]] = []
    sent: list[tuple[int, Any]] = []
    try:
        for index, (node, _) in enumerate(commands):
            pool: Any = node.connection_pool
            try:
                connection = pool.get_connection()
            except failures as error:
                replies[index] = error
                continue
            taken.append((pool, connection))
            try:
                connection.send_packed_command([packed[index]])
            except failures as error:
                connection.disconnect()
                replies[index] = error
                continue
            sent.append((index, connection))
        for index, connection in sent:
            try:
                replies[index] = connection.read_response()
            except redis.exceptions.ResponseError as error:
                replies[index] = error
            except failures as error:
                connection.disconnect()  # its reply may still come
                replies[index] = error
    except BaseException:
        for _, connection in taken:
            connection.disconnect()
        raise
    finally:
        for pool, connection in taken:
            pool.release(connection)
    return replies
