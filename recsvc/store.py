"""Real-time state shared by every worker: purchases and returns reported since training,
and erased customers.

Store
├── EmbeddedStore   in-process, for one process (the default, and the demo)
└── RedisStore      shared by every worker and host (RECSVC_REDIS_URL)

Customers are stored under an opaque key (see ``customer_key``), never an email address.
Events are kept per customer in arrival order with their receipt time, for
``event_retention_days``; a reader asks for those received after its bundle's watermark, so an
event the bundle already learned from is never counted twice. Each event id is remembered for
the same period, which makes applying a batch idempotent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

import redis

from recsvc.errors import StoreUnavailable
from recsvc.identity import IdentityKey

T = TypeVar("T")

# Every Redis key the service writes, in one place.
EVENT_KEY = "{prefix}:event:{event_id}"  # idempotency marker, expires with the retention
CUSTOMER_EVENTS_KEY = "{prefix}:customer:{customer}:events"  # sorted set, score = received_at
ERASED_KEY = "{prefix}:erased"  # set of erased customer keys
TRIGGERS_KEY = "{prefix}:triggers"  # sorted set of CRM triggers fired by events, score = time
SNAPSHOT_KEY = "{prefix}:snapshot:{customer}:{send}"  # email picks of one send, with a TTL
RATE_KEY = "{prefix}:rate:{bucket}"  # an API key's rate-limit state (GCRA), with a TTL


def customer_key(key: IdentityKey, alias: str) -> str:
    """The store's key for a customer: a keyed digest of their canonical alias (``id:<id>``),
    or for a customer the bundle does not know, of the alias they were named by."""
    return key.hex(alias)


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    item_id: str
    quantity: float
    price: float
    timestamp: str  # ISO 8601, UTC
    source: str
    received_at: float  # seconds since the epoch

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredEvent:
        return cls(**json.loads(text))


class Applied(IntEnum):
    DUPLICATE = 0
    NEW = 1
    ERASED = 2  # the customer was erased; nothing stored


@dataclass(slots=True)  # not frozen: built for every request, and frozen costs 3x to build
class CustomerState:
    events: list[StoredEvent]
    erased: bool


class Store(Protocol):
    def customer_state(self, customer: str, since: float) -> CustomerState:
        """Events received after ``since`` and whether the customer was erased; one round
        trip."""

    def apply(self, entries: Sequence[tuple[str, StoredEvent]]) -> list[Applied]:
        """Record (customer, event) pairs atomically, each at most once per event id."""

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        """Undo ``apply`` of these entries (used when the durable log write fails)."""

    def add_triggers(self, triggers: Sequence[tuple[float, str]]) -> None:
        """Record (fired_at, JSON) triggers; each JSON names its customer's store key."""

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

    def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one request from ``bucket`` (``rate`` per second, up to ``burst`` at once):
        0.0 if allowed, else the seconds until one would be."""
        ...

    def ping(self) -> bool: ...


class EmbeddedStore:
    """The store in this process's memory; right for one process, lost on restart."""

    def __init__(self, retention_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.retention = retention_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # event id -> expiry
        self._events: dict[str, list[StoredEvent]] = {}
        self._erased: set[str] = set()
        self._triggers: list[tuple[float, str]] = []
        self._snapshots: dict[tuple[str, str], tuple[float, str]] = {}  # -> (expiry, payload)
        self._buckets = LocalBuckets(clock)

    def take(self, bucket: str, rate: float, burst: int) -> float:
        return self._buckets.take(bucket, rate, burst)

    def snapshot(self, customer: str, send: str, payload: str, ttl_seconds: float) -> str:
        with self._lock:
            now = self.clock()
            kept = self._snapshots.get((customer, send))
            if kept is None or kept[0] <= now:
                kept = (now + ttl_seconds, payload)
                self._snapshots[(customer, send)] = kept
            return kept[1]

    def add_triggers(self, triggers: Sequence[tuple[float, str]]) -> None:
        with self._lock:
            horizon = self.clock() - self.retention
            self._triggers = sorted([t for t in self._triggers if t[0] > horizon] + list(triggers))

    def triggers_since(self, since: float) -> list[str]:
        with self._lock:
            return [text for at, text in self._triggers if at > since]

    def customer_state(self, customer: str, since: float) -> CustomerState:
        if customer not in self._events and customer not in self._erased:
            return CustomerState([], False)  # the common case, without the lock
        with self._lock:
            horizon = self.clock() - self.retention
            events = [
                e for e in self._events.get(customer, ()) if e.received_at > max(since, horizon)
            ]
            return CustomerState(events=events, erased=customer in self._erased)

    def apply(self, entries: Sequence[tuple[str, StoredEvent]]) -> list[Applied]:
        with self._lock:
            now = self.clock()
            results = []
            for customer, event in entries:
                if customer in self._erased:
                    results.append(Applied.ERASED)
                elif self._seen.get(event.event_id, 0.0) > now:
                    results.append(Applied.DUPLICATE)
                else:
                    self._seen[event.event_id] = now + self.retention
                    self._events.setdefault(customer, []).append(event)
                    results.append(Applied.NEW)
            return results

    def forget(self, entries: Sequence[tuple[str, StoredEvent]]) -> None:
        with self._lock:
            for customer, event in entries:
                self._seen.pop(event.event_id, None)
                kept = [e for e in self._events.get(customer, []) if e != event]
                self._events[customer] = kept

    def erase(self, customer: str) -> int:
        with self._lock:
            self._erased.add(customer)
            self._triggers = [t for t in self._triggers if customer not in t[1]]
            for key in [key for key in self._snapshots if key[0] == customer]:
                del self._snapshots[key]
            return len(self._events.pop(customer, []))

    def mark_erased(self, customers: Sequence[str]) -> None:
        with self._lock:
            self._erased.update(customers)

    def erased_keys(self) -> set[str]:
        with self._lock:
            return set(self._erased)

    def ping(self) -> bool:
        return True


_APPLY_SCRIPT = """
-- KEYS[1] = erased set; then per event: marker key, customer events key
-- ARGV[1] = retention seconds; then per event: customer, score, member
local ttl = tonumber(ARGV[1])
local results = {}
local n = (#KEYS - 1) / 2
for j = 1, n do
  local marker, events = KEYS[2 * j], KEYS[2 * j + 1]
  local customer, score, member = ARGV[3 * j - 1], ARGV[3 * j], ARGV[3 * j + 1]
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
        timeout: float = 0.05,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self.prefix = prefix
        self.retention = retention_seconds
        self.cooldown = cooldown
        self.clock = clock
        self._down_until = 0.0
        self._apply = self.client.register_script(_APPLY_SCRIPT)
        self._take = self.client.register_script(_TAKE_SCRIPT)

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

    def add_triggers(self, triggers: Sequence[tuple[float, str]]) -> None:
        if not triggers:
            return

        def add() -> None:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.zadd(self._triggers_key(), {text: at for at, text in triggers})
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
        except redis.RedisError as error:
            self._down_until = self.clock() + self.cooldown
            raise StoreUnavailable(f"redis: {error}") from error

    def customer_state(self, customer: str, since: float) -> CustomerState:
        horizon = max(since, self.clock() - self.retention)

        def read() -> CustomerState:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.zrangebyscore(self._events_key(customer), f"({horizon}", "+inf")
            pipeline.sismember(self._erased_key(), customer)
            members, erased = pipeline.execute()
            return CustomerState([StoredEvent.from_json(m) for m in members], bool(erased))

        return self._call(read)

    def apply(self, entries: Sequence[tuple[str, StoredEvent]]) -> list[Applied]:
        if not entries:
            return []
        keys = [self._erased_key()]
        args: list[str | float | int] = [int(self.retention)]
        for customer, event in entries:
            keys += [self._marker_key(event.event_id), self._events_key(customer)]
            args += [customer, event.received_at, event.to_json()]
        results = self._call(lambda: self._apply(keys=keys, args=args))
        return [Applied(int(code)) for code in results]

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
