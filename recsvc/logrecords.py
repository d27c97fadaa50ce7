"""The service's durable logs as the trainer reads them back: one record type per log.

The service appends an ``EventRecord`` per accepted event to its event log and an
``ErasureRecord`` per erasure to its erasure list (recsvc.events) and a ``CatalogRecord`` per
catalog change to its catalog log (recsvc.catalog); the trainer reads them (training.sources,
training.merge, training.catalog) by these field names. No Flask, no redis: both sides import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

CATALOG_GLOB = "catalog-*.jsonl"


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the event log (events-*.jsonl). A line without ``kind`` (written before
    interactions existed) is a purchase; fields a kind does not carry are left out."""

    event_id: str
    customer: str  # the key the caller sent (a raw id or alias), as given
    item_id: str  # "" for a kind without an item
    quantity: float  # 0 for a kind without one
    price: float
    timestamp: str  # ISO 8601, UTC
    source: str
    received_at: float  # seconds since the epoch: when the service accepted it
    kind: str = "purchase"  # recsvc.schemas.EventKind
    session: str | None = None  # the session:<id> key this event stitches in, as given
    send_id: str | None = None
    impression_id: str | None = None
    model_version: str | None = None
    surface: str | None = None
    rank: int | None = None


class ErasureRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the erasure list (erasures.jsonl)."""

    erased_at: str  # ISO 8601
    alias_digests: tuple[str, ...]  # hex keyed digests of every alias (recsvc.identity)
    customer_keys: tuple[str, ...]  # the store keys erased


EVENT_FIELDS = EventRecord.__struct_fields__
RECEIVED_AT = "received_at"
KIND = "kind"
SESSION = "session"
ALIAS_DIGESTS = "alias_digests"
CUSTOMER_KEYS = "customer_keys"
assert {RECEIVED_AT, KIND, SESSION} <= set(EVENT_FIELDS)
assert {ALIAS_DIGESTS, CUSTOMER_KEYS} <= set(ErasureRecord.__struct_fields__)


class CatalogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the catalog log (catalog-*.jsonl): an item's fields as one write set them."""

    item_id: str
    changes: dict[str, object]  # some of available, price, title, url, image, categories
    received_at: float  # seconds since the epoch


def json_lines(directory: Path, pattern: str) -> Iterator[dict[str, Any]]:
    """Every JSON object line of the files in ``directory`` matching ``pattern`` (sorted by
    name), skipping torn or foreign lines: how the service's logs are read back."""
    for path in sorted(directory.glob(pattern)):
        try:
            handle = path.open(encoding="utf-8")
        except FileNotFoundError:
            continue
        with handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record


def read_catalog_logs(directory: Path) -> list[CatalogRecord]:
    """Every catalog record in ``directory``, in the order received (torn or foreign lines
    skipped); the trainer reads them through ``catalog_state``."""
    found: list[CatalogRecord] = []
    for raw in json_lines(directory, CATALOG_GLOB):
        try:
            record = CatalogRecord(
                item_id=str(raw["item_id"]),
                changes=dict(raw["changes"]),
                received_at=float(raw["received_at"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        found.append(record)
    found.sort(key=lambda record: record.received_at)
    return found


def catalog_state(records: list[CatalogRecord]) -> dict[str, dict[str, Any]]:
    """Item id -> the fields as the last writes left them."""
    items: dict[str, dict[str, Any]] = {}
    for record in records:
        items.setdefault(record.item_id, {}).update(record.changes)
    return items
