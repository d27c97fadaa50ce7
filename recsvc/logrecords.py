"""The service's durable logs as the trainer reads them back: one record type per log.

The service appends an ``EventRecord`` per accepted event to its event log and an
``ErasureRecord`` per erasure to its erasure list (recsvc.events); the trainer reads both
(training.sources, training.merge) by these field names. No Flask, no redis: both sides import it.
"""

from __future__ import annotations

import msgspec


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the event log (events-*.jsonl)."""

    event_id: str
    customer: str  # the key the caller sent (a raw id or alias), as given
    item_id: str
    quantity: float
    price: float
    timestamp: str  # ISO 8601, UTC
    source: str
    received_at: float  # seconds since the epoch: when the service accepted it


class ErasureRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the erasure list (erasures.jsonl)."""

    erased_at: str  # ISO 8601
    alias_digests: tuple[str, ...]  # hex keyed digests of every alias (recsvc.identity)
    customer_keys: tuple[str, ...]  # the store keys erased


EVENT_FIELDS = EventRecord.__struct_fields__
RECEIVED_AT = "received_at"
ALIAS_DIGESTS = "alias_digests"
CUSTOMER_KEYS = "customer_keys"
assert {RECEIVED_AT} <= set(EVENT_FIELDS)
assert {ALIAS_DIGESTS, CUSTOMER_KEYS} <= set(ErasureRecord.__struct_fields__)


class CatalogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the catalog log (catalog-*.jsonl): an item's fields as one write set them."""

    item_id: str
    changes: dict[str, object]  # some of available, price, title, url, image, categories
    received_at: float  # seconds since the epoch
