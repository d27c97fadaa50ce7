"""Linking one customer across sources: union-find over their aliases.

Nodes are aliases: ``<namespace>:<id>``, ``email:<address>``, ``phone:<E.164>``. Every input
record links the aliases it carries; every row of the crosswalk file links two aliases. Links
are transitive. Two guards keep a shared identifier from fusing strangers:

- ``distinct_ids``: a link through an email or phone that would put two different ids of one
  namespace (two shop accounts) into one customer is refused unless ``link_distinct_ids`` is
  set; only the crosswalk may join them.
- ``cluster_cap``: a link that would give one customer more than ``max_cluster_ids`` ids is
  refused (a shared family or office address, a placeholder number).

Refused links are counted, with masked examples, in the manifest. The links are applied in a
fixed order (crosswalk, then records sorted), so the same data always links the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from recsvc.identity import EMAIL, PHONE, IdentityKey, mask

PRIMARY_NAMESPACE = "customer"
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class LinkRules:
    link_distinct_ids: bool = False
    max_cluster_ids: int = 10


@dataclass
class Identity:
    """The result of linking: every alias's customer, and a report for the manifest."""

    customer_of: dict[str, str]  # alias -> canonical customer id
    refused: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        sizes = Counter(self.customer_of.values())
        return {
            "customers": len(sizes),
            "aliases": len(self.customer_of),
            "customers_with_several_aliases": sum(1 for size in sizes.values() if size > 1),
            "conflicts": {
                reason: {
                    "count": sum(self.refused[reason].values()),
                    "examples": self.examples.get(reason, []),
                }
                for reason in sorted(self.refused)
            },
        }


def link(
    records: Iterable[tuple[str, ...]],
    crosswalk: Iterable[tuple[str, str]],
    rules: LinkRules,
    key: IdentityKey,
) -> Identity:
    """``records``: the aliases each input record carries ("" where it has none); ``key``
    makes the tokens of customers known only by an address or number."""
    forest = _Forest(rules)
    for left, right in crosswalk:
        forest.union(left, right, explicit=True)
    edges: set[tuple[str, str]] = set()
    for record in records:
        present = sorted({alias for alias in record if alias})
        for alias in present:
            forest.add(alias)
        edges.update(zip(present, present[1:], strict=False))
    for left, right in sorted(edges):
        forest.union(left, right, explicit=False)
    return Identity(forest.canonical_ids(key), forest.refused, forest.examples)


class _Forest:
    def __init__(self, rules: LinkRules) -> None:
        self.rules = rules
        self.parent: dict[str, str] = {}
        self.ids: dict[str, dict[str, set[str]]] = {}  # root -> namespace -> ids
        self.refused: dict[str, Counter[str]] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, alias: str) -> None:
        if alias in self.parent:
            return
        self.parent[alias] = alias
        namespace, _, raw = alias.partition(":")
        self.ids[alias] = {} if namespace in (EMAIL, PHONE) else {namespace: {raw}}

    def find(self, alias: str) -> str:
        root = alias
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[alias] != root:
            self.parent[alias], alias = root, self.parent[alias]
        return root

    def union(self, left: str, right: str, explicit: bool) -> None:
        self.add(left)
        self.add(right)
        a, b = self.find(left), self.find(right)
        if a == b:
            return
        ids_a, ids_b = self.ids[a], self.ids[b]
        if not explicit and not self.rules.link_distinct_ids:
            if any(ns in ids_b and ids_a[ns] != ids_b[ns] for ns in ids_a):
                self._refuse("distinct_ids", left, right)
                return
        merged = {ns: ids_a.get(ns, set()) | ids_b.get(ns, set()) for ns in {*ids_a, *ids_b}}
        if sum(len(v) for v in merged.values()) > self.rules.max_cluster_ids:
            self._refuse("cluster_cap", left, right)
            return
        if a > b:  # deterministic root choice
            a, b = b, a
        self.parent[b] = a
        self.ids[a] = merged
        del self.ids[b]

    def _refuse(self, reason: str, left: str, right: str) -> None:
        self.refused.setdefault(reason, Counter())[left] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{mask(left)} ~ {mask(right)}")

    def canonical_ids(self, key: IdentityKey) -> dict[str, str]:
        members: dict[str, list[str]] = {}
        for alias in self.parent:
            members.setdefault(self.find(alias), []).append(alias)
        customer_of: dict[str, str] = {}
        for aliases in members.values():
            canonical = canonical_id(aliases, key)
            for alias in aliases:
                customer_of[alias] = canonical
        return customer_of


def canonical_id(aliases: list[str], key: IdentityKey) -> str:
    """The shop's own id when the customer has one (the smallest, if several); else another
    namespace's id; else a stable token, a keyed digest of the smallest alias. Never an email
    or phone number, in clear or as a hash anyone could recompute."""
    primary = sorted(a for a in aliases if a.startswith(f"{PRIMARY_NAMESPACE}:"))
    if primary:
        return primary[0].partition(":")[2]
    ids = sorted(a for a in aliases if a.partition(":")[0] not in (EMAIL, PHONE))
    if ids:
        return ids[0]
    return f"c-{key.hex(min(aliases))[:16]}"
