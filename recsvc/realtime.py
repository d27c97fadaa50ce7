"""What changed since training: reading a customer's real-time state, recording events and
erasing customers. Ties the store, the durable logs and the served bundle together; no web
framework here."""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import numpy as np

from recsvc import engagement, interactions, policy
from recsvc.catalog import CatalogLog
from recsvc.errors import StoreNotRestored, StoreUnavailable, UnknownCustomer
from recsvc.events import ErasureLog, Erasures, Event, EventLog, Rejection, log_record
from recsvc.identity import CANONICAL, IdentityKey, normal_session, request_aliases
from recsvc.logrecords import SESSION, EventRecord
from recsvc.registry import ServedModel
from recsvc.schemas import PURCHASE_KINDS as OWNED_KINDS
from recsvc.store import UNSUBSCRIBE, Applied, Store, StoredEvent, customer_key

log = logging.getLogger(__name__)

RESTORE_LOCK_FILE = ".restore.lock"
REPLAY_BATCH = 500  # events per store call while replaying the logs
_RESTORE_LOCK = threading.Lock()


@dataclass(slots=True)  # not frozen: built for every request, and frozen costs 3x to build
class CustomerView:
    """A customer as the service sees them now: the bundle plus events since training."""

    row: int | None  # None: unknown to the model (or erased)
    customer_id: str | None  # canonical id, when known
    store_key: str
    events: list[StoredEvent]  # purchases and returns reported since training
    deltas: dict[int, float]  # net quantity change per catalog item since training
    degraded: bool  # the store did not answer; bundle data only
    erased: bool = False
    window_spend: float = 0.0  # spend in the tier window, events included
    lifetime_spend: float = 0.0
    # Every other kind of event the store keeps (event_retention_days, whether or not the
    # bundle learned from it), oldest first, stitched sessions' included.
    interactions: list[StoredEvent] = field(default_factory=list)
    # Weights of the items viewed or carted lately, by item index (recsvc.interactions).
    interest: dict[int, float] = field(default_factory=dict)

    @property
    def recent_spend(self) -> float:
        return spend_of(self.events)


class Resolved(NamedTuple):
    """Who a customer key names, as the served model and the erasure list have it."""

    row: int | None  # None: unknown to the model, or erased
    customer_id: str | None  # canonical id, when the model knows them (and they are not erased)
    store_key: str
    erased: bool


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
        self.catalog_log = CatalogLog(event_log.directory)
        self.clock = clock
        # Store keys of the customers asked about lately, by canonical key: a bounded cache,
        # not one entry per customer of the bundle.
        self._store_key = functools.lru_cache(maxsize=65536)(functools.partial(customer_key, key))
        # Rows of the served bundle that the erasure list names, per (version, list state).
        self._erased_rows: tuple[str, Erasures, frozenset[int]] | None = None
        self._restorer: threading.Thread | None = None

    @property
    def erased(self) -> frozenset[str]:
        """Store keys of every customer on the durable erasure list."""
        return self.erasures.current().customer_keys

    def resolve(self, model: ServedModel, key: str) -> Resolved:
        """The customer's model row, canonical id, store key, and whether the erasure list
        names them (an erased customer has no row). The list is checked before anything else,
        in memory."""
        ranker = model.ranker
        erasures = self.erasures.current()
        row = ranker.customer_row(key)
        if row is not None:
            customer_id = str(ranker.arrays.customer_ids[row])
            canonical = f"{CANONICAL}:{customer_id}"
            store_key = self._store_key(canonical)
            if (
                row in self._rows_erased(model, erasures)
                or store_key in erasures.customer_keys
                or (self.key.rotated and self._erased_before(erasures, [canonical]))
            ):
                return Resolved(None, None, store_key, True)
            return Resolved(row, customer_id, store_key, False)
        aliases = request_aliases(key, ranker.aliases.rules, ranker.aliases.namespaces)
        store_key = customer_key(self.key, aliases[-1])
        erased = bool(erasures.customer_keys or erasures.alias_digests) and (
            erasures.covers(store_key, (customer_key(self.key, alias) for alias in aliases))
            or (self.key.rotated and self._erased_before(erasures, aliases))
        )
        return Resolved(None, None, store_key, erased)

    def _erased_before(self, erasures: Erasures, aliases: list[str]) -> bool:
        """Erased under a retired secret, before a rotation: the list holds their digests
        under that secret."""
        return any(
            old in erasures.customer_keys or old in erasures.alias_digests
            for alias in aliases
            for old in self.key.all_hex(alias)[1:]
        )

    def _rows_erased(self, model: ServedModel, erasures: Erasures) -> frozenset[int]:
        """The served bundle's rows that carry an erased alias (e.g. a bundle trained without
        the erasure list): computed once per bundle and list state."""
        cached = self._erased_rows
        if cached is not None and cached[0] == model.version and cached[1] is erasures:
            return cached[2]
        rows: frozenset[int] = frozenset()
        if erasures.alias_digests:
            aliases = model.ranker.aliases
            wanted = {bytes.fromhex(d) for d in erasures.alias_digests}
            highs = np.array([int.from_bytes(d[:8], "big") for d in wanted], dtype=np.uint64)
            candidates = np.flatnonzero(np.isin(aliases.high, highs))
            rows = frozenset(
                int(aliases.rows[p])
                for p in candidates
                if _digest_bytes(aliases.high[p], aliases.low[p]) in wanted
            )
        self._erased_rows = (model.version, erasures, rows)
        return rows

    def view(self, model: ServedModel, key: str) -> CustomerView:
        row, customer_id, store_key, erased = self.resolve(model, key)
        if erased:
            return CustomerView(None, None, store_key, [], {}, degraded=False, erased=True)
        try:
            # Everything kept: interactions count for as long as the store keeps them;
            # purchases only when the bundle has not learned them (below).
            state = self.store.customer_state(store_key, 0.0)
        except StoreUnavailable as error:
            if isinstance(error, StoreNotRestored):
                self.restore_soon(model)
            log.warning("store unavailable, serving from the bundle: %s", error)
            return self._with_spend(model, row, customer_id, store_key, [], {}, degraded=True)
        if state.erased:
            return CustomerView(None, None, store_key, [], {}, degraded=False, erased=True)
        events = state.events
        kept = state.unsubscribed
        if kept is not None and all(event.event_id != kept.event_id for event in events):
            events = [kept, *events]  # past the retention: consent lasts
        since = model.events_through
        unlearned: list[StoredEvent] = []
        if any(event.session is not None for event in events):
            try:
                events, unlearned = self._with_sessions(events, since)
            except StoreUnavailable as error:
                log.warning("store unavailable reading linked sessions: %s", error)
        purchases = [e for e in events if e.kind in OWNED_KINDS and e.received_at > since]
        purchases += unlearned
        deltas: dict[int, float] = {}
        for event in purchases:
            index = model.item_index.get(event.item_id)
            if index is not None:
                deltas[index] = deltas.get(index, 0.0) + event.quantity
        view = self._with_spend(model, row, customer_id, store_key, purchases, deltas, False)
        if len(purchases) < len(events):
            view.interactions = [e for e in events if e.kind not in OWNED_KINDS]
            view.interest = interactions.interest(
                view.interactions, model.item_index, self.clock().timestamp()
            )
        return view

    def _with_sessions(
        self, events: list[StoredEvent], since: float
    ) -> tuple[list[StoredEvent], list[StoredEvent]]:
        """``events`` and those of every session they stitch in (one store round trip), in
        the order received: what a visitor did before signing in is the customer's. Also
        the purchases and returns the bundle (trained on what was received by ``since``)
        could not learn as the customer's although received by then: those of a session
        first stitched in after ``since`` (the trainer took them for nobody's)."""
        first_link: dict[str, float] = {}
        for event in events:
            if event.session is not None:
                at = first_link.get(event.session, event.received_at)
                first_link[event.session] = min(at, event.received_at)
        erased = self.erasures.current().customer_keys
        sessions = [session for session in first_link if session not in erased]
        merged, unlearned = list(events), []
        for session, state in zip(sessions, self.store.customer_states(sessions, 0.0), strict=True):
            if state.erased:
                continue
            merged += state.events
            if first_link[session] > since:
                unlearned += [
                    e for e in state.events if e.kind in OWNED_KINDS and e.received_at <= since
                ]
        merged.sort(key=lambda e: e.received_at)
        return merged, unlearned

    @staticmethod
    def _with_spend(
        model: ServedModel,
        row: int | None,
        customer_id: str | None,
        store_key: str,
        events: list[StoredEvent],
        deltas: dict[int, float],
        degraded: bool,
    ) -> CustomerView:
        """The view, with spend from the bundle plus the events since training (never below
        zero: a refund cannot be worth more than was spent)."""
        lifetime = spend_of(events)
        window = spend_of([e for e in events if _moment(e.timestamp) >= model.window_start])
        if row is not None:
            window += float(model.ranker.arrays.window_spend[row])
            lifetime += float(model.ranker.arrays.customer_spend[row])
        return CustomerView(
            row,
            customer_id,
            store_key,
            events,
            deltas,
            degraded,
            window_spend=max(window, 0.0),
            lifetime_spend=max(lifetime, 0.0),
        )

    def record(self, model: ServedModel, batch: list[tuple[int, Event]]) -> BatchResult:
        """Apply valid events to the store, then append the new ones to the durable log.

        Events of erased customers, and returns of more than the customer holds, are rejected
        per event and never stored. Raises StoreUnavailable (nothing applied) or OSError (the
        store change is undone)."""
        received = self.clock().timestamp()
        erasures = self.erasures.current(fresh=True)
        result = BatchResult()
        accepted: list[tuple[int, Event, str, StoredEvent]] = []
        holdings = _Holdings(self, model)
        in_batch: set[str] = set()
        for index, event in batch:
            if event.event_id in in_batch:  # a repeat within the batch changes nothing
                result.duplicates.append(event.event_id)
                continue
            in_batch.add(event.event_id)
            row, _, store_key, erased = self.resolve(model, event.customer)
            if erased:
                result.rejected.append(
                    Rejection(index, event.event_id, ["customer: this customer was erased"])
                )
                continue
            session_key = None
            if event.session is not None:
                session = self.resolve(model, event.session)
                if session.erased:
                    result.rejected.append(
                        Rejection(index, event.event_id, ["session: this session was erased"])
                    )
                    continue
                session_key = session.store_key
            if event.kind == "return":
                problem = holdings.take_back(row, store_key, event.item_id, -event.quantity)
                if problem:
                    result.rejected.append(Rejection(index, event.event_id, [problem]))
                    continue
            elif event.kind == "purchase":
                holdings.add(store_key, event.item_id, event.quantity)
            stored = StoredEvent(
                event_id=event.event_id,
                item_id=event.item_id,
                quantity=event.quantity,
                price=event.price,
                timestamp=event.timestamp.isoformat(),
                source=event.source,
                received_at=received,
                kind=event.kind,
                session=session_key,
                send_id=event.send_id,
                impression_id=event.impression_id,
                model_version=event.model_version,
                surface=event.surface,
                rank=event.rank,
            )
            accepted.append((index, event, store_key, stored))
        entries = [(store_key, stored) for _, _, store_key, stored in accepted]
        outcomes = self.store.apply(entries)
        new_entries = []
        records = []
        for (index, event, store_key, stored), outcome in zip(accepted, outcomes, strict=True):
            if outcome is Applied.NEW:
                result.accepted.append(event.event_id)
                new_entries.append((store_key, stored))
                records.append(log_record(event, received))
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
        if records and self.erasures.current(fresh=True) is not erasures:
            self._redact_late(model, records)
        self._fire_triggers(model, [(e, s) for _, e, _, s in accepted], entries, outcomes)
        return result

    def _fire_triggers(
        self,
        model: ServedModel,
        events: list[tuple[Event, StoredEvent]],
        entries: list[tuple[str, StoredEvent]],
        outcomes: list[Applied],
    ) -> None:
        """Tier upgrades, spend thresholds and disengaged customers that this batch's new
        events crossed."""
        added: dict[str, float] = {}
        added_in_window: dict[str, float] = {}
        keys: dict[str, str] = {}
        opened: dict[str, tuple[str, set[str]]] = {}  # store key -> (key sent, new open ids)
        for (event, _), (store_key, stored), outcome in zip(events, entries, outcomes, strict=True):
            if outcome is Applied.NEW and stored.kind == engagement.OPEN:
                opened.setdefault(store_key, (event.customer, set()))[1].add(stored.event_id)
            if outcome is Applied.NEW and stored.kind in OWNED_KINDS:
                amount = stored.quantity * stored.price
                added[store_key] = added.get(store_key, 0.0) + amount
                if _moment(stored.timestamp) >= model.window_start:
                    added_in_window[store_key] = added_in_window.get(store_key, 0.0) + amount
                keys[store_key] = event.customer
        tiers = model.ranker.tiers
        rules = model.bundle.manifest.tiers
        fired: list[tuple[float, str, str]] = []
        now = self.clock().timestamp()
        for store_key, amount in added.items():
            if amount <= 0:
                continue
            view = self.view(model, keys[store_key])
            if view.erased:
                continue
            # A customer the bundle does not know is named by their store key: the key they
            # were reported under may be an address, which the store never holds.
            customer = view.customer_id or store_key
            window_before = view.window_spend - added_in_window.get(store_key, 0.0)
            lifetime_before = view.lifetime_spend - amount
            before, after = tiers.index(window_before), tiers.index(view.window_spend)
            if after > before:
                old, new = tiers.levels[before].name, tiers.levels[after].name
                fired.append(
                    _trigger(
                        now,
                        store_key,
                        customer,
                        "tier_up",
                        policy.tier_up_reason(old, new),
                        {"window_spend": round(view.window_spend, 2), "from": old, "to": new},
                    )
                )
            for threshold in rules.spend_thresholds:
                if policy.crossed(lifetime_before, view.lifetime_spend, threshold):
                    fired.append(
                        _trigger(
                            now,
                            store_key,
                            customer,
                            "threshold",
                            policy.spend_reason(threshold),
                            {"spend": round(view.lifetime_spend, 2)},
                        )
                    )
            # Real time knows spend, not orders: only the spend half of the rule fires here.
            if policy.crossed(lifetime_before, view.lifetime_spend, rules.thank_you_spend):
                fired.append(
                    _trigger(
                        now,
                        store_key,
                        customer,
                        "thank_you",
                        policy.THANK_YOU_REASON,
                        {"spend": round(view.lifetime_spend, 2)},
                    )
                )
        for key, new_opens in opened.values():
            fired += self._disengaged(model, key, new_opens, now)
        try:
            self.store.add_triggers(fired)
        except StoreUnavailable as error:  # the events are safe; these triggers are lost
            log.warning("could not record %d triggers: %s", len(fired), error)

    def _disengaged(
        self, model: ServedModel, key: str, new_opens: set[str], now: float
    ) -> list[tuple[float, str, str]]:
        """The ``disengaged`` trigger when one of the opens ``new_opens`` (event ids) made
        the customer ``key`` names disengaged, the opens taken in the order they happened: a
        batch holding both the open that completes a run and the click that ends it still
        fires."""
        view = self.view(model, key)
        if view.erased or view.degraded:
            return []
        rules = model.bundle.manifest.tiers
        completing = engagement.disengaging_opens(view.interactions, rules) & new_opens
        if not completing:
            return []
        email = engagement.of(view.interactions)
        figures: dict[str, object] = {
            "sends_opened_since_click": rules.disengaged_opens,
            "sends_opened": email.sends_opened,
            "sends_clicked": email.sends_clicked,
        }
        customer = view.customer_id or view.store_key  # never the key: it may be an address
        reason = policy.disengaged_reason(rules.disengaged_opens)
        return [_trigger(now, view.store_key, customer, "disengaged", reason, figures)]

    def erase(self, model: ServedModel, key: str) -> ErasureReceipt:
        """Forget a customer: every alias, their real-time events, their lines in the durable
        event logs, and (through the durable erasure list) their rows in the next training.

        The erasure list is written first: from then on every worker of every host honours it,
        whatever the store's state; then the event logs are rewritten without the customer's
        lines, then the store is cleared (StoreUnavailable: retry; each step is idempotent).
        Raises UnknownCustomer, with the key recorded all the same, when nobody is known by it.
        """
        ranker = model.ranker
        row = ranker.customer_row(key)
        aliases = request_aliases(key, ranker.aliases.rules, ranker.aliases.namespaces)
        digests = {self.key.hex(alias) for alias in aliases}
        customer_id = None
        if row is not None:
            customer_id = str(ranker.arrays.customer_ids[row])
            digests |= {_digest_bytes(high, low).hex() for high, low in ranker.aliases.of_row(row)}
            store_keys = {customer_key(self.key, f"{CANONICAL}:{customer_id}")}
        else:
            store_keys = {customer_key(self.key, aliases[-1])}
        # The sessions their logins stitched in are theirs too.
        digests |= self._linked_sessions(model, digests, store_keys)
        store_keys |= digests  # events reported before linking were kept under an alias's key
        now = self.clock()
        self.erasures.record(sorted(digests), sorted(store_keys), now)
        redacted = self.event_log.redact(
            lambda record: self._names(model, record, digests, store_keys)
        )
        removed = sum(self.store.erase(store_key) for store_key in sorted(store_keys))
        if row is None and not redacted and not removed:
            raise UnknownCustomer("no customer is known by this key")
        return ErasureReceipt(
            customer_id, len(digests), max(removed, redacted), now.isoformat(timespec="seconds")
        )

    def _linked_sessions(
        self, model: ServedModel, digests: set[str], store_keys: set[str]
    ) -> set[str]:
        """Alias digests (their store keys) of every session an event of this customer's
        stitched in: named by this host's durable log, and by the customer's events in the
        store (a login another host logged)."""
        sessions = set()
        for raw in self.event_log.records():
            session = raw.get(SESSION)
            if isinstance(session, str) and self._names(model, raw, digests, store_keys):
                sessions.add(self.key.hex(normal_session(session)))
        try:
            for store_key in sorted(store_keys | digests):
                events = self.store.customer_state(store_key, 0.0).events
                sessions.update(e.session for e in events if e.session is not None)
        except StoreUnavailable:
            pass  # the erasure stops at the store; its retry reads them
        return sessions

    def _redact_late(self, model: ServedModel, records: list[dict[str, object]]) -> None:
        """An erasure landed while this batch was being recorded: it rewrote the logs before
        this batch's lines were appended, so take out any of them it names now. (The store
        needs nothing: it refuses, or the erasure removes, what reaches it.)"""
        erased_now = {
            str(record["customer"])
            for record in records
            if self.resolve(model, str(record["customer"])).erased
        }
        if erased_now:
            self.event_log.redact(lambda record: record.get("customer") in erased_now)

    def _names(
        self, model: ServedModel, record: dict[str, object], digests: set[str], keys: set[str]
    ) -> bool:
        """Whether a logged event belongs to the customer with these alias digests."""
        key = record.get("customer")
        if not isinstance(key, str):
            return False
        ranker = model.ranker
        aliases = request_aliases(key, ranker.aliases.rules, ranker.aliases.namespaces)
        if any(self.key.hex(alias) in digests for alias in aliases):
            return True
        row = ranker.customer_row(key)
        return (
            row is not None
            and customer_key(self.key, f"{CANONICAL}:{ranker.arrays.customer_ids[row]}") in keys
        )

    def restore(self, model: ServedModel) -> bool:
        """Replay the durable logs into a store that lost its data (a Redis restarted empty):
        erasures first, then every event still inside the retention window, each at most once,
        then the catalog changes in the order received.
        One process of the host does it (a lock file beside the logs); True once restored."""
        try:
            if self.store.restored():
                return True
        except StoreUnavailable:
            return False
        lock_path = self.erasures.path.parent / RESTORE_LOCK_FILE
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process of this host is replaying
            try:
                if self.store.restored():
                    return True
                replayed = self._replay(model)
                self.store.mark_restored()
            except StoreUnavailable as error:
                log.warning("could not restore the store from the durable logs: %s", error)
                return False
        log.info("store restored from the durable logs: %d events replayed", replayed)
        return True

    def _replay(self, model: ServedModel) -> int:
        self.store.mark_erased(sorted(self.erased))
        horizon = self.clock().timestamp() - self.store.retention
        batch: list[tuple[str, StoredEvent]] = []
        replayed = 0
        for raw in self.event_log.records():
            try:
                record = msgspec.convert(raw, EventRecord)
            except msgspec.ValidationError:
                continue  # not a record this service wrote
            if record.received_at <= horizon and record.kind != UNSUBSCRIBE:
                continue  # past the retention; an unsubscribe lasts
            _, _, store_key, erased = self.resolve(model, record.customer)
            session = None if record.session is None else self.resolve(model, record.session)
            if erased or (session is not None and session.erased):
                continue
            batch.append(
                (store_key, _stored(record, None if session is None else session.store_key))
            )
            if len(batch) >= REPLAY_BATCH:
                replayed += self.store.apply(batch, restoring=True).count(Applied.NEW)
                batch = []
        replayed += self.store.apply(batch, restoring=True).count(Applied.NEW)
        changes = [(r.item_id, dict(r.changes)) for r in self.catalog_log.records()]
        for start in range(0, len(changes), REPLAY_BATCH):
            self.store.set_items(changes[start : start + REPLAY_BATCH])
        return replayed

    def restore_soon(self, model: ServedModel) -> None:
        """Start restoring in the background (reads stay degraded until it is done)."""
        with _RESTORE_LOCK:
            if self._restorer is not None and self._restorer.is_alive():
                return
            self._restorer = threading.Thread(
                target=self.restore, args=(model,), name="recsvc-store-restore", daemon=True
            )
            self._restorer.start()


class _Holdings:
    """How many units of each item a batch's customers hold now (bundle + events since
    training + this batch so far), read from the store once per customer with a return."""

    def __init__(self, realtime: Realtime, model: ServedModel) -> None:
        self.realtime = realtime
        self.model = model
        self._held: dict[str, dict[str, float]] = {}
        self._pending: dict[str, dict[str, float]] = {}  # purchases earlier in this batch

    def add(self, store_key: str, item_id: str, quantity: float) -> None:
        mine = self._pending.setdefault(store_key, {})
        mine[item_id] = mine.get(item_id, 0.0) + quantity
        if store_key in self._held:
            held = self._held[store_key]
            held[item_id] = held.get(item_id, 0.0) + quantity
            mine.pop(item_id)

    def take_back(self, row: int | None, store_key: str, item_id: str, quantity: float) -> str:
        """An error when the customer holds fewer than ``quantity`` units; else records the
        return and gives ''."""
        held = self._held.get(store_key)
        if held is None:
            held = self._read(row, store_key)
            for item, pending in self._pending.pop(store_key, {}).items():
                held[item] = held.get(item, 0.0) + pending
            self._held[store_key] = held
        have = held.get(item_id, 0.0)
        if have <= 0:
            return f"item_id: this customer has not bought {item_id}; nothing to return"
        if quantity > have + 1e-9:
            return f"quantity: returns {quantity:g} but the customer holds {have:g}"
        held[item_id] = have - quantity
        return ""

    def _read(self, row: int | None, store_key: str) -> dict[str, float]:
        model = self.model
        held: dict[str, float] = {}
        if row is not None:
            arrays = model.ranker.arrays
            start, end = int(arrays.owned_indptr[row]), int(arrays.owned_indptr[row + 1])
            for item, quantity in zip(
                arrays.owned_indices[start:end].tolist(),
                arrays.owned_quantity[start:end].tolist(),
                strict=True,
            ):
                held[model.item_ids[item]] = float(quantity)
        since = model.events_through
        events = self.realtime.store.customer_state(store_key, 0.0).events
        unlearned: list[StoredEvent] = []
        if any(event.session is not None for event in events):  # what they bought signed out
            events, unlearned = self.realtime._with_sessions(events, since)
        for event in [e for e in events if e.received_at > since] + unlearned:
            if event.kind in OWNED_KINDS:
                held[event.item_id] = held.get(event.item_id, 0.0) + event.quantity
        return held


def _trigger(
    at: float, store_key: str, customer: str, kind: str, reason: str, figures: dict[str, object]
) -> tuple[float, str, str]:
    record = {
        "fired_at": at,
        "store_key": store_key,
        "customer_id": customer,
        "kind": kind,
        "reason": reason,
        "figures": figures,
    }
    return at, store_key, json.dumps(record, sort_keys=True)


def _moment(timestamp: str) -> float:
    """Seconds since the epoch of an event's ISO 8601 time (stored in UTC)."""
    return datetime.fromisoformat(timestamp).timestamp()


def spend_of(events: list[StoredEvent]) -> float:
    """What reported events add to a customer's spend (returns subtract)."""
    return sum(event.quantity * event.price for event in events)


def _digest_bytes(high: np.uint64, low: np.uint64) -> bytes:
    return int(high).to_bytes(8, "big") + int(low).to_bytes(8, "big")


def _stored(record: EventRecord, session_key: str | None) -> StoredEvent:
    """The event an event-log line holds, as the store keeps it (without the key)."""
    fields = {name: getattr(record, name) for name in STORED_FIELDS}
    return StoredEvent(**{**fields, SESSION: session_key})


STORED_FIELDS = tuple(f.name for f in fields(StoredEvent))
