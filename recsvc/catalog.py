"""Catalog changes since training: items out of stock or discontinued, new prices, new items.

``PUT /v1/items/<id>`` and ``POST /v1/catalog`` write them through ``parse_change`` into the
durable catalog log (``CatalogLog``, read by the next training and replayed into a Redis that
lost its data) and then into the store's catalog overlay, which every worker and host reads
per request. ``ServedCatalog`` is that overlay applied to one bundle: the item indices to
hide and the prices and titles to show.

An item new to the catalog (not in the bundle) is kept in the overlay, but no list can show
it until a training run learns it: the ranker has no scores for it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from recsvc.events import append_durably
from recsvc.logrecords import CatalogRecord, read_catalog_logs
from recsvc.schemas import (
    MAX_CATEGORIES,
    MAX_CATEGORY_LENGTH,
    MAX_ITEM_ID_LENGTH,
    MAX_TITLE_LENGTH,
    MAX_UNIT_PRICE,
    MAX_URL_LENGTH,
)
from recsvc.store import CatalogOverlay
from recsvc.text import text_problem, unsafe_character

if TYPE_CHECKING:
    from recsvc.registry import ServedModel

FIELDS = ("available", "price", "title", "url", "image", "categories")


def parse_item_id(value: Any) -> tuple[str, list[str]]:
    """An item id as events name it (upper case, trimmed), or the errors."""
    if not isinstance(value, str):
        return "", ["item_id: required, a non-empty string"]
    problem = text_problem(value, MAX_ITEM_ID_LENGTH)
    if problem is not None:
        return "", [f"item_id: {problem}"]
    return value.strip().upper(), []


def parse_change(raw: Any, with_id: bool) -> tuple[str, dict[str, Any], list[str]]:
    """One item's change (``with_id``: it names its ``item_id``, as in a batch): the item id,
    the fields to set and every problem found (not just the first)."""
    if not isinstance(raw, dict):
        return "", {}, ["an item must be a JSON object"]
    allowed = set(FIELDS) | ({"item_id"} if with_id else set())
    errors = [f"{key}: unknown field" for key in sorted(set(raw) - allowed, key=str)]
    item_id = ""
    if with_id:
        item_id, problems = parse_item_id(raw.get("item_id"))
        errors += problems
    fields: dict[str, Any] = {}
    if "available" in raw:
        if not isinstance(raw["available"], bool):
            errors.append("available: must be true or false")
        fields["available"] = raw["available"]
    if "price" in raw:
        price = raw["price"]
        if isinstance(price, bool) or not isinstance(price, int | float):
            errors.append("price: must be a number")
        elif not math.isfinite(price) or not 0 <= price <= MAX_UNIT_PRICE:
            errors.append(f"price: must be from 0 to {MAX_UNIT_PRICE:.0f}")
        else:
            fields["price"] = float(price)
    for name, limit in (
        ("title", MAX_TITLE_LENGTH),
        ("url", MAX_URL_LENGTH),
        ("image", MAX_URL_LENGTH),
    ):
        if name in raw:
            value = raw[name]
            if not isinstance(value, str) or not value.strip():
                errors.append(f"{name}: must be a non-empty string")
            elif len(value) > limit:
                errors.append(f"{name}: at most {limit} characters, got {len(value)}")
            elif (problem := unsafe_character(value)) is not None:
                errors.append(f"{name}: {problem}")
            else:
                fields[name] = value.strip()
    if "categories" in raw:
        categories = raw["categories"]
        if (
            not isinstance(categories, list)
            or len(categories) > MAX_CATEGORIES
            or not all(
                isinstance(c, str) and text_problem(c, MAX_CATEGORY_LENGTH) is None
                for c in categories
            )
        ):
            errors.append(
                f"categories: a list of at most {MAX_CATEGORIES} names of 1 to "
                f"{MAX_CATEGORY_LENGTH} characters"
            )
        else:
            fields["categories"] = [c.strip() for c in categories]
    if not errors and not fields:
        errors.append(f"nothing to change: give some of {', '.join(FIELDS)}")
    return item_id, fields, errors


class CatalogLog:
    """Appends accepted catalog changes to ``<directory>/catalog-<host>-<pid>.jsonl`` (one
    file per process, fsynced before the request is answered), as the event log does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / f"catalog-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, records: list[CatalogRecord]) -> None:
        if records:
            lines = "".join(
                json.dumps(record_dict(r), separators=(",", ":")) + "\n" for r in records
            )
            append_durably(self.path, lines, self._lock)

    def records(self) -> list[CatalogRecord]:
        """Every record of every process's log in the directory, oldest first."""
        return read_catalog_logs(self.directory)


def record_dict(record: CatalogRecord) -> dict[str, Any]:
    return {"item_id": record.item_id, "changes": record.changes, "received_at": record.received_at}


def records_of(changes: list[tuple[str, dict[str, Any]]], now: float) -> list[CatalogRecord]:
    return [CatalogRecord(item_id=i, changes=fields, received_at=now) for i, fields in changes]


@dataclass(frozen=True)
class ServedCatalog:
    """The overlay applied to one bundle."""

    unavailable: NDArray[np.int32]  # bundle item indices no list may show
    prices: list[float | None]  # by item index, with new prices
    titles: list[str]
    price_values: NDArray[np.float64]  # ``prices`` as an array (NaN: unknown), for filters
    # Items new to the catalog since training (no list shows them yet): their categories.
    added: dict[str, list[str]]

    @classmethod
    def of(cls, model: ServedModel, overlay: CatalogOverlay) -> ServedCatalog:
        hidden: list[int] = []
        added: dict[str, list[str]] = {}
        prices, titles = model.prices, model.titles
        price_values = model.ranker.arrays.prices
        copied = False
        for item_id, fields in overlay.items.items():
            index = model.item_index.get(item_id)
            if index is None:
                added[item_id] = list(fields.get("categories", []))
                continue
            if fields.get("available") is False:
                hidden.append(index)
            if "price" in fields or "title" in fields:
                if not copied:
                    prices, titles, copied = list(prices), list(titles), True
                    price_values = price_values.copy()
                if "price" in fields:
                    prices[index] = float(fields["price"])
                    price_values[index] = float(fields["price"])
                if "title" in fields:
                    titles[index] = str(fields["title"])
        return cls(np.array(sorted(hidden), dtype=np.int32), prices, titles, price_values, added)


def served_catalog(model: ServedModel) -> ServedCatalog:
    """The bundle as trained, with no overlay."""
    return ServedCatalog(
        np.zeros(0, dtype=np.int32), model.prices, model.titles, model.ranker.arrays.prices, {}
    )
