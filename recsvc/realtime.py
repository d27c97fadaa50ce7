"""What changed since training: reading a customer's real-time state, recording events and
erasing customers. Ties the store, the durable logs and the served bundle together; no web
framework here."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from recsvc.errors import StoreUnavailable
from recsvc.events import ErasureLog, Event, EventLog, Rejection
from recsvc.identity import CANONICAL, IdentityKey, request_aliases
from recsvc.registry import ServedModel
from recsvc.store import Applied, Store, StoredEvent, customer_key

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: built for every request, and frozen costs 3x to build
class CustomerView:
    """A customer as the service sees them now: the bundle plus events since training."""

    row: int | None  # None: unknown to the model (or erased)
    customer_id: str | None  # canonical id, when known
    store_key: str
    events: list[StoredEvent]
    deltas: dict[int, float]  # net quantity change per catalog item since training
    degraded: bool  # the store did not answer; bundle data only
    erased: bool = False
    window_spend: float = 0.0  # spend in the tier window, events included
    lifetime_spend: float = 0.0

    @property
    def recent_spend(self) -> float:
        return spend_of(self.events)


@dataclass
class BatchResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class ErasureReceipt:
    customer_id: str | None
    aliases: int
    events_removed: int
    erased_at: str


class Realtime:
    def __init__(
        self,
        store: Store,
        event_log: EventLog,
        erasures: ErasureLog,
        key: IdentityKey,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.key = key
        self.event_log = event_log
        self.erasures = erasures
        self.clock = clock
        self._lock = threading.Lock()
        self._erased = set(erasures.customer_keys())  # this process's view; no round trip
        self._row_keys: dict[tuple[str, int], str] = {}  # (bundle version, row) -> store key
        try:
            store.mark_erased(sorted(self._erased))
        except StoreUnavailable as error:
            log.warning("could not restore erasures into the store: %s", error)

    @property
    def erased(self) -> frozenset[str]:
        """Customer keys erased through this process or before it started."""
        return frozenset(self._erased)

    def resolve(self, model: ServedModel, key: str) -> tuple[int | None, str]:
        """The customer's model row and store key; erased customers have no row."""
        ranker = model.ranker
        row = ranker.customer_row(key)
        if row is not None:
            cached = (model.version, row)
            store_key = self._row_keys.get(cached) or self._row_keys.setdefault(
                cached, customer_key(self.key, f"{CANONICAL}:{ranker.arrays.customer_ids[row]}")
            )
            alias = ""
        else:
            aliases = request_aliases(key, ranker.aliases.rules, ranker.aliases.namespaces)
            alias = aliases[-1]
            store_key = customer_key(self.key, alias)
        if store_key in self._erased or (
            self.key.rotated and self._erased_before(model, row, alias, store_key)
        ):
            return None, store_key
        return row, store_key

    def _erased_before(
        self, model: ServedModel, row: int | None, alias: str, store_key: str
    ) -> bool:
        """Erased under a retired secret (before a rotation), when their store key was the
        digest under that secret. Their key under the current secret is then marked erased
        too, here and in the store, so writes to it are refused like any erased key's."""
        if row is not None:
            alias = f"{CANONICAL}:{model.ranker.arrays.customer_ids[row]}"
        if not any(old in self._erased for old in self.key.all_hex(alias)[1:]):
            return False
        with self._lock:
            self._erased.add(store_key)
        try:
            self.store.mark_erased([store_key])
        except StoreUnavailable as error:  # this process refuses them; the others check too
            log.warning("could not mark an erasure in the store: %s", error)
        return True

    def view(self, model: ServedModel, key: str) -> CustomerView:
        row, store_key = self.resolve(model, key)
        if store_key in self._erased:
            return CustomerView(None, None, store_key, [], {}, degraded=False, erased=True)
        try:
            state = self.store.customer_state(store_key, model.events_through)
        except StoreUnavailable as error:
            log.warning("store unavailable, serving from the bundle: %s", error)
            return self._with_spend(model, row, store_key, [], {}, degraded=True)
        if state.erased:
            return CustomerView(None, None, store_key, [], {}, degraded=False, erased=True)
        deltas: dict[int, float] = {}
        for event in state.events:
            index = model.item_index.get(event.item_id)
            if index is not None:
                deltas[index] = deltas.get(index, 0.0) + event.quantity
        return self._with_spend(model, row, store_key, state.events, deltas, degraded=False)

    @staticmethod
    def _with_spend(
        model: ServedModel,
        row: int | None,
        store_key: str,
        events: list[StoredEvent],
        deltas: dict[int, float],
        degraded: bool,
    ) -> CustomerView:
        """The view, with spend from the bundle plus the events since training."""
        recent = spend_of(events)
        window = lifetime = recent
        if row is not None:
            window += float(model.ranker.arrays.window_spend[row])
            lifetime += float(model.ranker.arrays.customer_spend[row])
        return CustomerView(
            row,
            _canonical(model, row),
            store_key,
            events,
            deltas,
            degraded,
            window_spend=window,
            lifetime_spend=lifetime,
        )

    def record(self, model: ServedModel, batch: list[tuple[int, Event]]) -> BatchResult:
        """Apply valid events to the store, then append the new ones to the durable log.
        Raises StoreUnavailable (nothing applied) or OSError (the store change is undone)."""
        received = self.clock()
        entries: list[tuple[str, StoredEvent]] = []
        keys: list[str] = []
        for _, event in batch:
            _, store_key = self.resolve(model, event.customer)
            keys.append(store_key)
            entries.append(
                (
                    store_key,
                    StoredEvent(
                        event_id=event.event_id,
                        item_id=event.item_id,
                        quantity=event.quantity,
                        price=event.price,
                        timestamp=event.timestamp.isoformat(),
                        source=event.source,
                        received_at=received.timestamp(),
                    ),
                )
            )
        outcomes = self.store.apply(entries)
        result = BatchResult()
        new_entries = []
        records = []
        for (index, event), entry, outcome in zip(batch, entries, outcomes, strict=True):
            if outcome is Applied.NEW and entry[0] not in self._erased:
                result.accepted.append(event.event_id)
                new_entries.append(entry)
                records.append({**_log_record(event), "received_at": entry[1].received_at})
            elif outcome is Applied.DUPLICATE:
                result.duplicates.append(event.event_id)
            else:
                result.rejected.append(
                    Rejection(index, event.event_id, ["customer: this customer was erased"])
                )
        try:
            self.event_log.append(records)
        except OSError:
            self.store.forget(new_entries)
            raise
        self._fire_triggers(model, batch, entries, outcomes)
        return result

    def _fire_triggers(
        self,
        model: ServedModel,
        batch: list[tuple[int, Event]],
        entries: list[tuple[str, StoredEvent]],
        outcomes: list[Applied],
    ) -> None:
        """Tier upgrades and spend thresholds that this batch's new events crossed."""
        added: dict[str, float] = {}
        keys: dict[str, str] = {}
        for (_, event), (store_key, stored), outcome in zip(batch, entries, outcomes, strict=True):
            if outcome is Applied.NEW:
                added[store_key] = added.get(store_key, 0.0) + stored.quantity * stored.price
                keys[store_key] = event.customer
        tiers = model.ranker.tiers
        thresholds = model.bundle.manifest.get("tiers") or {}
        fired: list[tuple[float, str]] = []
        now = self.clock().timestamp()
        for store_key, amount in added.items():
            if amount <= 0:
                continue
            view = self.view(model, keys[store_key])
            customer = view.customer_id or keys[store_key]
            window_before = view.window_spend - amount
            lifetime_before = view.lifetime_spend - amount
            before, after = tiers.index(window_before), tiers.index(view.window_spend)
            if after > before:
                old, new = tiers.levels[before]["name"], tiers.levels[after]["name"]
                fired.append(
                    _trigger(
                        now,
                        store_key,
                        customer,
                        "tier_up",
                        f"moved up from {old} to {new}",
                        {"window_spend": round(view.window_spend, 2), "from": old, "to": new},
                    )
                )
            for threshold in thresholds.get("spend_thresholds", []):
                if lifetime_before < threshold <= view.lifetime_spend:
                    fired.append(
                        _trigger(
                            now,
                            store_key,
                            customer,
                            "threshold",
                            f"lifetime spend reached {threshold:g}",
                            {"spend": round(view.lifetime_spend, 2)},
                        )
                    )
            thank_you = thresholds.get("thank_you_spend")
            if thank_you is not None and lifetime_before < thank_you <= view.lifetime_spend:
                fired.append(
                    _trigger(
                        now,
                        store_key,
                        customer,
                        "thank_you",
                        "a loyal customer: thank them",
                        {"spend": round(view.lifetime_spend, 2)},
                    )
                )
        try:
            self.store.add_triggers(fired)
        except StoreUnavailable as error:  # the events are safe; only the alerts are late
            log.warning("could not record %d triggers: %s", len(fired), error)

    def erase(self, model: ServedModel, key: str) -> ErasureReceipt:
        """Forget a customer: every alias, their real-time events, and (through the durable
        erasure list) their rows in the next training run."""
        row, store_key = self.resolve(model, key)
        ranker = model.ranker
        digests = {
            self.key.hex(alias)
            for alias in request_aliases(key, ranker.aliases.rules, ranker.aliases.namespaces)
        }
        customer_id = None
        if row is not None:
            customer_id = str(ranker.arrays.customer_ids[row])
            digests |= {_hex(high, low) for high, low in ranker.aliases.of_row(row)}
        now = self.clock()
        removed = self.store.erase(store_key)
        self.erasures.record(sorted(digests), [store_key], now)
        with self._lock:
            self._erased.add(store_key)
        return ErasureReceipt(customer_id, len(digests), removed, now.isoformat(timespec="seconds"))


def _trigger(
    at: float, store_key: str, customer: str, kind: str, reason: str, figures: dict[str, object]
) -> tuple[float, str]:
    record = {
        "fired_at": at,
        "store_key": store_key,
        "customer_id": customer,
        "kind": kind,
        "reason": reason,
        "figures": figures,
    }
    return at, json.dumps(record, sort_keys=True)


def spend_of(events: list[StoredEvent]) -> float:
    """What reported events add to a customer's spend (returns subtract)."""
    return sum(event.quantity * event.price for event in events)


def _canonical(model: ServedModel, row: int | None) -> str | None:
    return None if row is None else str(model.ranker.arrays.customer_ids[row])


def _hex(high: np.uint64, low: np.uint64) -> str:
    return int(high).to_bytes(8, "big").hex() + int(low).to_bytes(8, "big").hex()


def _log_record(event: Event) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "customer": event.customer,
        "item_id": event.item_id,
        "quantity": event.quantity,
        "price": event.price,
        "timestamp": event.timestamp.isoformat(),
        "source": event.source,
    }
