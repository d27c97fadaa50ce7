"""Real-time state shared by every worker: events reported since training (purchases, returns
and interactions),
erased customers, CRM triggers fired by events, and email-pick snapshots.

Store
├── EmbeddedStore   one SQLite file per host, shared by its workers (the default)
└── RedisStore      shared by every worker and host (RECSVC_REDIS_URL)

Customers are stored under an opaque key (see ``customer_key``), never an email address.
Events are kept per customer in arrival order with their receipt time, for
``event_retention_days``; a reader asks for those received after its bundle's watermark, so an
event the bundle already learned from is never counted twice. Each event id is remembered for
the same period, which makes applying a batch idempotent.

The durable event and erasure logs (recsvc.events) are the record; a store is rebuilt from them
when it lost its data (a Redis restarted empty): until then it is not ``restored`` and callers
treat it as unavailable.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis

from recsvc.errors import StoreNotRestored, StoreUnavailable
from recsvc.identity import IdentityKey

T = TypeVar("T")
WAL_INDEX_HEADER = 48  # bytes of the wal-index header's first copy, at the start of -shm

# Every Redis key the service writes, in one place.
EVENT_KEY = "{prefix}:event:{event_id}"  # idempotency marker, expires with the retention
CUSTOMER_EVENTS_KEY = "{prefix}:customer:{customer}:events"  # sorted set, score = received_at
ERASED_KEY = "{prefix}:erased"  # set of erased customer keys
RESTORED_KEY = "{prefix}:restored:{origin}"  # set once the logs of one events dir are replayed
TRIGGERS_KEY = "{prefix}:triggers"  # sorted set of CRM triggers fired by events, score = time
SNAPSHOT_KEY = "{prefix}:snapshot:{customer}:{send}"  # email picks of one send, with a TTL
RATE_KEY = "{prefix}:rate:{bucket}"  # an API key's rate-limit state (GCRA), with a TTL
CATALOG_KEY = "{prefix}:catalog"  # hash: JSON [item id, field] -> JSON value
CATALOG_STAMP_KEY = "{prefix}:catalog:stamp"  # bumped by every catalog write


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


class Store(Protocol):
    retention: float  # seconds events and event ids are kept

    def customer_state(self, customer: str, since: float) -> CustomerState:
        """Events received after ``since`` and whether the customer was erased; one round
        trip."""

    def apply(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool = False
    ) -> list[Applied]:
        """Record (customer, event) pairs atomically, each at most once per event id. Raises
        StoreNotRestored while the store is not restored, unless this is the replay."""

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        """Undo ``apply`` of these entries (used when the durable log write fails)."""

    def add_triggers(self, triggers: Sequence[tuple[float, str, str]]) -> None:
        """Record (fired_at, customer, JSON) triggers."""

    def triggers_since(self, since: float) -> list[str]:
        """Triggers fired after ``since``, oldest first."""

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        """Keep ``payload`` as the customer's snapshot for ``send`` unless one exists; return
        the snapshot kept (the first one written wins)."""

    def erase(self, customer: str) -> int:
        """Remove the customer's events, triggers and snapshots and mark them erased; returns
        events removed."""

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

    def ping(self) -> bool: ...


class EmbeddedStore:
    """The store in one SQLite database file (WAL mode) that every worker process of the host
    opens: one state for all of them, kept across restarts.

    Each process and thread has its own connection (a connection must not cross a fork). Reads
    take no lock; writes are short transactions that SQLite serialises between processes.
    Deleted rows are overwritten (``secure_delete``), and an erasure checkpoints the
    write-ahead log, so nothing of an erased customer stays in the file.
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
    """
    PURGE_EVERY_SECONDS = 60.0  # how often a writer drops what is past the retention
    CACHED_STATES = 65536  # customer states a thread keeps while nothing changes

    def __init__(
        self,
        path: Path,
        retention_seconds: float,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.retention = retention_seconds
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._purged_at = 0.0
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
            local.connection, local.pid = connection, os.getpid()
            local.version, local.states, local.known, local.touched = None, {}, set(), 0
            local.header = None  # the wal-index header, mapped at the first read
            local.catalog_version, local.catalog = None, EMPTY_CATALOG
        found: sqlite3.Connection = local.connection
        return found

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
                    "SELECT body FROM events WHERE customer = ? AND received_at > ? "
                    "UNION ALL SELECT NULL FROM erased WHERE customer = ?",
                    (customer, since, customer),
                ).fetchall()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"embedded store {self.path}: {error}") from error
        if state is None:
            if rows and rows[-1][0] is None:
                state = CustomerState([], True)
            else:
                state = CustomerState([StoredEvent.from_json(body) for (body,) in rows], False)
            if len(states) >= self.CACHED_STATES:
                states.clear()
            states[(customer, since)] = state
        if any(event.received_at <= horizon for event in state.events):
            return CustomerState([e for e in state.events if e.received_at > horizon], False)
        return CustomerState(list(state.events), state.erased)

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
        it last looked (at the first look, every erased one too)."""
        local = self._local
        if not local.touched:
            local.known.update(c for (c,) in connection.execute("SELECT customer FROM erased"))
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
                connection.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?)",
                    (customer, event.received_at, event.event_id, event.to_json()),
                )
                connection.execute(
                    "INSERT INTO touched (customer, at) VALUES (?, ?)", (customer, now)
                )
                results.append(Applied.NEW)
        return results

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

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        with self._transaction() as connection:
            for customer, event in entries:
                connection.execute("DELETE FROM seen WHERE event_id = ?", (event.event_id,))
                connection.execute(
                    "DELETE FROM events WHERE customer = ? AND event_id = ?",
                    (customer, event.event_id),
                )

    def erase(self, customer: str) -> int:
        with self._transaction() as connection:
            connection.execute("INSERT OR IGNORE INTO erased VALUES (?)", (customer,))
            connection.execute(
                "INSERT INTO touched (customer, at) VALUES (?, ?)", (customer, self.clock())
            )
            connection.execute("DELETE FROM triggers WHERE customer = ?", (customer,))
            connection.execute("DELETE FROM snapshots WHERE customer = ?", (customer,))
            removed = connection.execute(
                "DELETE FROM events WHERE customer = ?", (customer,)
            ).rowcount
        self._checkpoint()
        return int(removed)

    def _checkpoint(self) -> None:
        """Fold the write-ahead log into the database and empty it, so the pages that held
        deleted rows survive in neither file (best effort while other readers are active)."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

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


_APPLY_SCRIPT = """
-- KEYS[1] = erased set, KEYS[2] = restored marker; then per event: marker key, events key
-- ARGV[1] = retention seconds, ARGV[2] = 1 to refuse while not restored;
-- then per event: customer, score, member
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1}
end
local ttl = tonumber(ARGV[1])
local results = {}
local n = (#KEYS - 2) / 2
for j = 1, n do
  local marker, events = KEYS[2 * j + 1], KEYS[2 * j + 2]
  local customer, score, member = ARGV[3 * j], ARGV[3 * j + 1], ARGV[3 * j + 2]
  if redis.call('SISMEMBER', KEYS[1], customer) == 1 then
    results[j] = 2
  elseif redis.call('SET', marker, '1', 'NX', 'EX', ttl) then
    redis.call('ZADD', events, score, member)
    redis.call('EXPIRE', events, ttl)
    results[j] = 1
  else
    results[j] = 0
  end
end
return results
"""


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


# The same algorithm in Redis, on the server's clock so every worker and host agrees.
_TAKE_SCRIPT = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local arrival = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now) + interval
local wait = arrival - now - tonumber(ARGV[2]) * interval
if wait > 1e-9 then return tostring(wait) end
local ttl_ms = math.ceil((arrival - now) * 1000) + 1
redis.call('SET', KEYS[1], string.format('%.6f', arrival), 'PX', ttl_ms)
return '0'
"""


class RedisStore:
    """The store in Redis. Every call fails fast (``timeout`` seconds) with
    StoreUnavailable; after a failure, calls fail at once for ``cooldown`` seconds so a dead
    server costs requests nothing, then the next call tries again (redis-py reconnects)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        retention_seconds: float,
        origin: str = "default",
        timeout: float = 0.05,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self.prefix = prefix
        self.retention = retention_seconds
        # Which durable logs this store was restored from: one marker per events directory.
        self._restored_key = RESTORED_KEY.format(prefix=prefix, origin=origin)
        self.cooldown = cooldown
        self.clock = clock
        self._down_until = 0.0
        self._apply = self.client.register_script(_APPLY_SCRIPT)
        self._take = self.client.register_script(_TAKE_SCRIPT)
        self._catalog_key = CATALOG_KEY.format(prefix=prefix)
        self._catalog_stamp_key = CATALOG_STAMP_KEY.format(prefix=prefix)
        self._catalog = EMPTY_CATALOG

    def set_items(self, changes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not changes:
            return

        def write() -> None:
            pipeline = self.client.pipeline(transaction=True)
            pipeline.hset(self._catalog_key, mapping=dict(_catalog_rows(changes)))
            # A random stamp, not a counter: a Redis that lost its data and was replayed must
            # not come back to a stamp a reader cached with other contents.
            pipeline.set(self._catalog_stamp_key, secrets.randbits(62) + 1)
            pipeline.execute()

        self._call(write)

    def catalog(self) -> CatalogOverlay:
        def read() -> CatalogOverlay:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.get(self._catalog_stamp_key)
            pipeline.exists(self._restored_key)
            found, restored = pipeline.execute()
            if not restored:
                raise StoreNotRestored("redis lost its data; replaying the durable logs")
            if int(found or 0) == self._catalog.stamp:
                return self._catalog
            pipeline = self.client.pipeline(transaction=True)
            pipeline.get(self._catalog_stamp_key)
            pipeline.hgetall(self._catalog_key)
            stamp_now, rows = pipeline.execute()
            self._catalog = CatalogOverlay(int(stamp_now or 0), _catalog_items(iter(rows.items())))
            return self._catalog

        return self._call(read)

    def take(self, bucket: str, rate: float, burst: int) -> float:
        key = RATE_KEY.format(prefix=self.prefix, bucket=bucket)
        wait = self._call(lambda: self._take(keys=[key], args=[rate, burst]))
        return float(wait)

    def _events_key(self, customer: str) -> str:
        return CUSTOMER_EVENTS_KEY.format(prefix=self.prefix, customer=customer)

    def _marker_key(self, event_id: str) -> str:
        return EVENT_KEY.format(prefix=self.prefix, event_id=event_id)

    def _erased_key(self) -> str:
        return ERASED_KEY.format(prefix=self.prefix)

    def _triggers_key(self) -> str:
        return TRIGGERS_KEY.format(prefix=self.prefix)

    def add_triggers(self, triggers: Sequence[tuple[float, str, str]]) -> None:
        if not triggers:
            return

        def add() -> None:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.zadd(self._triggers_key(), {text: at for at, _, text in triggers})
            pipeline.zremrangebyscore(self._triggers_key(), "-inf", self.clock() - self.retention)
            pipeline.execute()

        self._call(add)

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        key = SNAPSHOT_KEY.format(prefix=self.prefix, customer=customer, send=send)

        def keep() -> str:
            pipeline = self.client.pipeline(transaction=True)
            pipeline.set(key, payload, nx=True, ex=max(int(ttl_seconds), 1))
            pipeline.get(key)
            kept = pipeline.execute()[1]
            return kept.decode() if isinstance(kept, bytes) else str(kept)

        return self._call(keep)

    def triggers_since(self, since: float) -> list[str]:
        members = self._call(
            lambda: self.client.zrangebyscore(self._triggers_key(), f"({since}", "+inf")
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def _call(self, operation: Callable[[], T]) -> T:
        if self.clock() < self._down_until:
            raise StoreUnavailable("redis is unavailable (cooling down after a failure)")
        try:
            return operation()
        except StoreNotRestored:
            raise
        except redis.RedisError as error:
            self._down_until = self.clock() + self.cooldown
            raise StoreUnavailable(f"redis: {error}") from error

    def customer_state(self, customer: str, since: float) -> CustomerState:
        horizon = max(since, self.clock() - self.retention)

        def read() -> CustomerState:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.zrangebyscore(self._events_key(customer), f"({horizon}", "+inf")
            pipeline.sismember(self._erased_key(), customer)
            pipeline.exists(self._restored_key)
            members, erased, restored = pipeline.execute()
            if not restored:
                raise StoreNotRestored("redis lost its data; replaying the durable logs")
            return CustomerState([StoredEvent.from_json(m) for m in members], bool(erased))

        return self._call(read)

    def apply(
        self, entries: Sequence[tuple[str, StoredEvent]], restoring: bool = False
    ) -> list[Applied]:
        """As Store.apply; refused with StoreNotRestored until the store is restored, except
        for the replay itself (``restoring``)."""
        if not entries:
            return []
        keys = [self._erased_key(), self._restored_key]
        args: list[str | float | int] = [int(self.retention), 0 if restoring else 1]
        for customer, event in entries:
            keys += [self._marker_key(event.event_id), self._events_key(customer)]
            args += [customer, event.received_at, event.to_json()]
        results = self._call(lambda: self._apply(keys=keys, args=args))
        if list(results) == [-1]:
            raise StoreNotRestored("redis lost its data; replaying the durable logs")
        return [Applied(int(code)) for code in results]

    def restored(self) -> bool:
        return bool(self._call(lambda: self.client.exists(self._restored_key)))

    def mark_restored(self) -> None:
        self._call(lambda: self.client.set(self._restored_key, "1"))

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        def undo() -> None:
            pipeline = self.client.pipeline(transaction=True)
            for customer, event in entries:
                pipeline.delete(self._marker_key(event.event_id))
                pipeline.zrem(self._events_key(customer), event.to_json())
            pipeline.execute()

        self._call(undo)

    def erase(self, customer: str) -> int:
        def run() -> int:
            members = self.client.zrange(self._triggers_key(), 0, -1)
            mine = [m for m in members if isinstance(m, bytes) and customer.encode() in m]
            pattern = SNAPSHOT_KEY.format(prefix=self.prefix, customer=customer, send="*")
            snapshots = list(self.client.scan_iter(match=pattern, count=500))
            pipeline = self.client.pipeline(transaction=True)
            pipeline.zcard(self._events_key(customer))
            pipeline.delete(self._events_key(customer))
            pipeline.sadd(self._erased_key(), customer)
            if mine:
                pipeline.zrem(self._triggers_key(), *mine)
            if snapshots:
                pipeline.delete(*snapshots)
            count = pipeline.execute()[0]
            return int(count)

        return self._call(run)

    def mark_erased(self, customers: Sequence[str]) -> None:
        if customers:
            self._call(lambda: self.client.sadd(self._erased_key(), *customers))

    def erased_keys(self) -> set[str]:
        members = self._call(lambda: self.client.smembers(self._erased_key()))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except StoreUnavailable:
            return False
