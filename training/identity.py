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

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from recsvc.identity import EMAIL, PHONE, IdentityKey, mask

PRIMARY_NAMESPACE = "customer"
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class LinkRules:
    link_distinct_ids: bool = False
    max_cluster_ids: int = 10


# Where a link comes in the order links are applied: a crosswalk pair (0, its row in the
# file, "", "") before a record's link (1, 0, its two aliases, ascending). Aliases compare as
# their nodes do, so the key orders links alike however the nodes are numbered.
LinkOrder = tuple[int, int, str, str]


@dataclass(frozen=True)
class Refusal:
    """A refused link, as the manifest shows it (aliases masked), and where it came."""

    order: LinkOrder
    example: str


@dataclass
class Identity:
    """The result of linking: every alias's customer, and a report for the manifest."""

    customer_of: dict[str, str]  # alias -> canonical customer id
    refused: dict[str, int] = field(default_factory=dict)  # links refused, per guard
    examples: dict[str, list[Refusal]] = field(default_factory=dict)  # the first few, in order

    def report(self) -> dict[str, Any]:
        sizes = Counter(self.customer_of.values())
        return {
            "customers": len(sizes),
            "aliases": len(self.customer_of),
            "customers_with_several_aliases": sum(1 for size in sizes.values() if size > 1),
            "conflicts": {
                reason: {
                    "count": self.refused[reason],
                    "examples": [refusal.example for refusal in self.examples.get(reason, [])],
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
    makes the tokens of customers known only by an address or number. ``link_nodes`` on
    strings: for a few records (the merge hands it codes)."""
    records = [tuple(record) for record in records]
    crosswalk = list(crosswalk)
    names = sorted(
        {alias for record in records for alias in record if alias}
        | {alias for pair in crosswalk for alias in pair}
    )
    node = {alias: position for position, alias in enumerate(names)}
    width = max((len(record) for record in records), default=0)
    nodes = np.full((len(records), width), -1, dtype=np.int64)
    for row, record in enumerate(records):
        for column, alias in enumerate(record):
            if alias:
                nodes[row, column] = node[alias]
    pairs = np.array([[node[left], node[right]] for left, right in crosswalk], dtype=np.int64)
    return link_nodes(np.array(names, dtype=object), nodes, pairs.reshape(-1, 2), rules, key)


def link_nodes(
    aliases: NDArray[np.object_],
    records: NDArray[np.int64],
    crosswalk: NDArray[np.int64],
    rules: LinkRules,
    key: IdentityKey,
    crosswalk_rows: NDArray[np.int64] | None = None,
) -> Identity:
    """Link ``aliases`` (distinct and ascending: a node is its position) that ``records``
    carry together (a row per record, -1 where it has none) or ``crosswalk`` pairs (rows of
    two, in the file's order; ``crosswalk_rows``: their rows in the file, when these are only
    some of its pairs).

    The links are those of a union-find that applies the crosswalk's pairs in order, then
    each record's aliases, ascending, joined in a chain, all records' links ascending, under
    the two guards. A guard can only refuse a link in a group of aliases joined by any link
    (a connected component) with two ids of one namespace or more than ``max_cluster_ids``
    ids: every other component is one customer, found by scipy's connected components. The
    union-find runs on the rest only (at most a few per cent of customers), so it refuses
    the same links in the same order."""
    count = len(aliases)
    edges = _record_edges(records, count)
    both = np.vstack([crosswalk, edges])
    graph = sp.csr_matrix(
        (np.ones(len(both), dtype=np.int8), (both[:, 0], both[:, 1])), shape=(count, count)
    )
    components, component = connected_components(graph, directed=False)
    namespace = np.array([alias.partition(":")[0] for alias in aliases.tolist()], dtype=object)
    is_id = ~np.isin(namespace, [EMAIL, PHONE])
    ids = np.bincount(component[is_id], minlength=components)
    conflicted = ids > rules.max_cluster_ids
    if not rules.link_distinct_ids and is_id.any():
        _, kind = np.unique(namespace[is_id], return_inverse=True)
        pair = component[is_id] * (int(kind.max()) + 1) + kind
        shared, per_pair = np.unique(pair, return_counts=True)
        conflicted[shared[per_pair > 1] // (int(kind.max()) + 1)] = True
    canonical = _canonical_ids(aliases, component, components, namespace, is_id, key)
    customer_of = dict(zip(aliases.tolist(), canonical[component].tolist(), strict=True))
    forest = _Forest(rules)
    if conflicted.any():
        inside = conflicted[component]
        for position in np.flatnonzero(inside).tolist():
            forest.add(aliases[position])
        rows = np.arange(len(crosswalk)) if crosswalk_rows is None else crosswalk_rows
        pairs = inside[crosswalk[:, 0]]
        for row, (left, right) in zip(rows[pairs].tolist(), crosswalk[pairs].tolist(), strict=True):
            forest.union(aliases[left], aliases[right], (0, row, "", ""), explicit=True)
        for left, right in edges[inside[edges[:, 0]]].tolist():
            first, second = aliases[left], aliases[right]
            forest.union(first, second, (1, 0, first, second), explicit=False)
        customer_of.update(forest.canonical_ids(key))
    return Identity(customer_of, forest.refused, forest.examples)


def _record_edges(records: NDArray[np.int64], count: int) -> NDArray[np.int64]:
    """The distinct links records make, ascending: each record's aliases in ascending
    order, each joined to the next."""
    if not records.size:
        return np.zeros((0, 2), dtype=np.int64)
    ordered = np.sort(np.where(records < 0, count, records), axis=1)
    left, right = ordered[:, :-1].reshape(-1), ordered[:, 1:].reshape(-1)
    kept = (right < count) & (left != right)
    joined = np.unique(left[kept] * count + right[kept])
    return np.column_stack(np.divmod(joined, count)).astype(np.int64)


def _canonical_ids(
    aliases: NDArray[np.object_],
    component: NDArray[np.int32],
    components: int,
    namespace: NDArray[np.object_],
    is_id: NDArray[np.bool_],
    key: IdentityKey,
) -> NDArray[np.object_]:
    """``canonical_id`` of each component, from the ascending order of ``aliases``: its
    first shop id, else its first id, else the token of its first alias."""
    none = len(aliases)
    first = np.full(components, none)
    np.minimum.at(first, component, np.arange(none))
    first_id = np.full(components, none)
    (positions,) = np.nonzero(is_id)
    np.minimum.at(first_id, component[positions], positions)
    first_primary = np.full(components, none)
    (positions,) = np.nonzero(namespace == PRIMARY_NAMESPACE)
    np.minimum.at(first_primary, component[positions], positions)
    canonical = np.empty(components, dtype=object)
    for index, (primary, identifier, alias) in enumerate(
        zip(first_primary.tolist(), first_id.tolist(), first.tolist(), strict=True)
    ):
        if primary < none:
            canonical[index] = aliases[primary].partition(":")[2]
        elif identifier < none:
            canonical[index] = aliases[identifier]
        else:
            canonical[index] = f"c-{key.hex(aliases[alias])[:16]}"
    return canonical


class _Forest:
    def __init__(self, rules: LinkRules) -> None:
        self.rules = rules
        self.parent: dict[str, str] = {}
        self.ids: dict[str, dict[str, set[str]]] = {}  # root -> namespace -> ids
        self.refused: dict[str, int] = {}
        self.examples: dict[str, list[Refusal]] = {}

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

    def union(self, left: str, right: str, order: LinkOrder, explicit: bool) -> None:
        self.add(left)
        self.add(right)
        a, b = self.find(left), self.find(right)
        if a == b:
            return
        ids_a, ids_b = self.ids[a], self.ids[b]
        if not explicit and not self.rules.link_distinct_ids:
            if any(ns in ids_b and ids_a[ns] != ids_b[ns] for ns in ids_a):
                self._refuse("distinct_ids", left, right, order)
                return
        merged = {ns: ids_a.get(ns, set()) | ids_b.get(ns, set()) for ns in {*ids_a, *ids_b}}
        if sum(len(v) for v in merged.values()) > self.rules.max_cluster_ids:
            self._refuse("cluster_cap", left, right, order)
            return
        if a > b:  # deterministic root choice
            a, b = b, a
        self.parent[b] = a
        self.ids[a] = merged
        del self.ids[b]

    def _refuse(self, reason: str, left: str, right: str, order: LinkOrder) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(Refusal(order, f"{mask(left)} ~ {mask(right)}"))

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
