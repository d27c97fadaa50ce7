"""Explicit crosswalk files: customers known to be one person, items known to be one product.

Customer crosswalk (CSV, header ``left,right``): each row names two keys of one customer, in
the service's key syntax: ``<source or namespace>:<id>``, ``email:<address>``,
``phone:<number>``.

Item crosswalk (CSV, header ``source,item_id,catalog_id`` and optionally ``group``): the item
``item_id`` of source ``source`` (``*``: any source) is the catalog item ``catalog_id``.
Catalog items sharing a ``group`` (editions or variants of one work) count as one: owning any
of them excludes all of them from recommendations.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from recsvc.identity import EMAIL, PHONE, IdentityRules, normalise_email, normalise_phone
from training.errors import ConfigError

ANY_SOURCE = "*"


@dataclass(frozen=True)
class ItemCrosswalk:
    catalog_ids: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, id) -> id
    groups: dict[str, str] = field(default_factory=dict)  # catalog id -> group

    def catalog_id(self, source: str, item_id: str) -> str:
        return self.catalog_ids.get(
            (source, item_id), self.catalog_ids.get((ANY_SOURCE, item_id), item_id)
        )


def load_item_crosswalk(path: Path | None, sources: set[str]) -> ItemCrosswalk:
    if path is None:
        return ItemCrosswalk()
    crosswalk = ItemCrosswalk()
    for number, row in _rows(path, {"source", "item_id", "catalog_id"}, {"group"}):
        source = row["source"].strip()
        item_id, catalog_id = row["item_id"].strip().upper(), row["catalog_id"].strip().upper()
        if source != ANY_SOURCE and source not in sources:
            raise ConfigError(f"{path}, line {number}: unknown source {source!r}")
        if not item_id or not catalog_id:
            raise ConfigError(f"{path}, line {number}: item_id and catalog_id are required")
        crosswalk.catalog_ids[(source, item_id)] = catalog_id
        group = (row.get("group") or "").strip()
        if group:
            crosswalk.groups[catalog_id] = group
    return crosswalk


def load_customer_crosswalk(
    path: Path | None, rules: IdentityRules, namespace_of: dict[str, str]
) -> list[tuple[str, str]]:
    """Pairs of aliases; ``namespace_of`` maps source names and namespaces to namespaces."""
    if path is None:
        return []
    pairs: list[tuple[str, str]] = []
    for number, row in _rows(path, {"left", "right"}, set()):
        aliases = []
        for column in ("left", "right"):
            alias = training_alias(row[column], rules, namespace_of)
            if alias is None:
                raise ConfigError(
                    f"{path}, line {number}, {column}: {row[column]!r} is not "
                    "<source>:<id>, email:<address> or phone:<number>"
                )
            aliases.append(alias)
        pairs.append((aliases[0], aliases[1]))
    return pairs


def training_alias(key: str, rules: IdentityRules, namespace_of: dict[str, str]) -> str | None:
    prefix, colon, rest = key.strip().partition(":")
    rest = rest.strip()
    if not colon or not rest:
        return None
    if prefix.lower() == EMAIL:
        email = normalise_email(rest, rules)
        return None if email is None else f"{EMAIL}:{email}"
    if prefix.lower() == PHONE:
        phone = normalise_phone(rest, rules)
        return None if phone is None else f"{PHONE}:{phone}"
    if prefix in namespace_of:
        return f"{namespace_of[prefix]}:{rest}"
    return None


def _rows(path: Path, required: set[str], optional: set[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = set(reader.fieldnames or [])
            if not required <= header:
                raise ConfigError(f"{path}: needs columns {sorted(required)}, has {sorted(header)}")
            unknown = header - required - optional
            if unknown:
                raise ConfigError(f"{path}: unknown columns {sorted(unknown)}")
            return [(number, row) for number, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: cannot read ({error})") from error
