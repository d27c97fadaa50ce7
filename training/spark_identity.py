"""Linking customers across sources on Spark's executors (``[engine] kind = "spark"``).

``training.identity.link_nodes`` links a set of aliases as a whole: a union-find whose guards
depend on what it linked before. A guard only ever looks inside one connected component of
the alias graph, though, and a component's links are applied in the same order whatever else
is linked, so each component links the same on its own. Spark finds the components; each
task runs ``link_nodes``, the single-host code, on the whole components of its partition.
Each alias's customer stays on the executors, and so does what the merge makes of it (the
service's lookups, the erasure list's matches, the customers' numbers, the bundle's alias
table, the event logs' records' customers: ``training.spark_events``); the driver gets
counts, the refusals' first examples and the erased customers.

The frames the merge's tables are made of here are checkpointed on the executors
(``localCheckpoint``), not persisted: a persisted frame carries its whole plan, and these
nest (linking's, the rows'), so that their plans' text alone overran 2 GB of the driver's
heap on the reference data. A local checkpoint is not recomputed: an executor lost before
the bundle is written fails the run (start it again). Spark's cleaner drops the checkpoints
once the driver's JVM has collected the frames.

The aliases go to the executors as they are (emails and phone numbers included), and the
identity key with the tasks: on a shared cluster, turn on Spark's authentication and
encryption (docs/scaling.md, "On a cluster").
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from recsvc.identity import CANONICAL, SESSION_PREFIX, AliasDigests, IdentityKey
from training.config import EngineConfig
from training.engine import SparkEngine, parts_directory, quiet
from training.identity import MAX_EXAMPLES, Identity, LinkRules, Refusal, link_nodes
from training.spark_candidates import join_parts, write_sorted_parts
from training.spark_sources import vocabulary_codes

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame

# A task's answer, one schema for three kinds of row: an alias and its customer; a guard's
# count of refused links; a refused link among the first MAX_EXAMPLES of its guard in the
# task, with where it came in the order links are applied (training.identity.LinkOrder).
ALIAS, REFUSED, EXAMPLE = range(3)
LINKED = pa.schema(
    [
        ("kind", pa.int8()),
        ("alias", pa.string()),
        ("customer", pa.string()),
        ("reason", pa.string()),
        ("refused", pa.int64()),
        ("stage", pa.int32()),
        ("row", pa.int64()),
        ("first", pa.string()),
        ("second", pa.string()),
        ("example", pa.string()),
    ]
)
# What a task is given of its components, one schema: each alias (stage NODE, in ``first``),
# each crosswalk pair (PAIR, with its row in the file) and each link records make (LINK).
NODE, PAIR, LINK = range(3)


@dataclass(frozen=True)
class LinkedOnSpark:
    """What ``link_on_spark`` linked: each alias's customer (``customer_of``: alias,
    customer), checkpointed on the executors (Spark's cleaner drops it once unreferenced);
    the refusals' counts and first examples."""

    customer_of: DataFrame
    refused: dict[str, int]
    examples: dict[str, list[Refusal]]

    def report(self) -> dict[str, Any]:
        """``Identity.report``, its counts made by Spark."""
        from pyspark.sql import functions as F

        sizes = self.customer_of.groupBy("customer").count()
        counts = sizes.agg(
            F.count("*").alias("customers"),
            F.sum("count").alias("aliases"),
            F.count(F.when(F.col("count") > 1, True)).alias("several"),
        ).first()
        assert counts is not None
        return Identity({}, self.refused, self.examples).report() | {
            "customers": int(counts["customers"]),
            "aliases": int(counts["aliases"] or 0),
            "customers_with_several_aliases": int(counts["several"]),
        }

    def collected(self) -> Identity:
        """Brought to the driver, as ``training.identity.link_nodes`` answers: for a test's
        aliases, not a shop's."""
        return Identity(collected_aliases(self.customer_of), self.refused, self.examples)


def collected_aliases(frame: DataFrame) -> dict[str, str]:
    """An (alias, customer) frame as a dict on the driver."""
    with quiet():
        table = frame.select("alias", "customer").toArrow()
    return dict(zip(table["alias"].to_pylist(), table["customer"].to_pylist(), strict=True))


def link_on_spark(
    records: DataFrame,
    crosswalk: list[tuple[str, str]],
    rules: LinkRules,
    key: IdentityKey,
) -> LinkedOnSpark:
    """``link_nodes`` of the aliases ``records`` carry together (a string column per alias
    kind, NULL where a record has none) and of the ``crosswalk`` pairs, in the file's order."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    session = records.sparkSession
    present = F.filter(F.array(*records.columns), lambda alias: alias.isNotNull())
    chains = records.select(F.array_sort(present).alias("aliases")).persist()
    # A record links its aliases in ascending order, each to the next (as link_nodes does).
    steps = [
        chains.select(
            F.get("aliases", position).alias("first"),
            F.get("aliases", position + 1).alias("second"),
        ).where(F.col("second").isNotNull())
        for position in range(len(records.columns) - 1)
    ]
    links = reduce(lambda one, other: one.unionByName(other), steps).distinct().persist()
    with quiet():
        pairs = session.createDataFrame(
            pa.table(
                {
                    "row": pa.array(np.arange(len(crosswalk)), pa.int64()),
                    "first": pa.array([left for left, _ in crosswalk], pa.string()),
                    "second": pa.array([right for _, right in crosswalk], pa.string()),
                }
            )
        )
    nodes = (
        chains.select(F.explode("aliases").alias("node"))
        .unionByName(pairs.select(F.col("first").alias("node")))
        .unionByName(pairs.select(F.col("second").alias("node")))
        .distinct()
    )
    component = components(nodes, links.unionByName(pairs.select("first", "second")))
    component_of_first = component.withColumnRenamed("node", "first")
    no_row = F.lit(0).cast("long").alias("row")
    task_input = (
        component.select(
            "component",
            F.lit(NODE).alias("stage"),
            no_row,
            F.col("node").alias("first"),
            F.lit(None).cast("string").alias("second"),
        )
        .unionByName(
            pairs.join(component_of_first, "first").select(
                "component", F.lit(PAIR).alias("stage"), "row", "first", "second"
            )
        )
        .unionByName(
            links.join(component_of_first, "first").select(
                "component", F.lit(LINK).alias("stage"), no_row, "first", "second"
            )
        )
    )
    # Into spark.sql.shuffle.partitions tasks: each holds its components' aliases and links
    # in memory while it links them.
    with quiet():
        linked = task_input.repartition("component").mapInArrow(
            partial(_link_partition, rules=rules, key=key), from_arrow_schema(LINKED)
        )
    linked.persist()
    try:
        with quiet():
            # Each task's refusal counts and first examples: a few rows a task, in one action
            # (each action costs seconds on a small cluster).
            reports = linked.where(F.col("kind") != ALIAS).toArrow().to_pylist()
        # Checkpointed, not persisted: see the module's docstring.
        customer_of = linked.where(F.col("kind") == ALIAS).select("alias", "customer")
        customer_of = customer_of.localCheckpoint()
    finally:
        linked.unpersist()
        links.unpersist()
        chains.unpersist()
    refused: dict[str, int] = {}
    found: dict[str, list[Refusal]] = {}
    for row in reports:
        reason = str(row["reason"])
        if row["kind"] == REFUSED:
            refused[reason] = refused.get(reason, 0) + int(row["refused"])
            continue
        order = (int(row["stage"]), int(row["row"]), row["first"], row["second"])
        found.setdefault(reason, []).append(Refusal(order, row["example"]))
    return LinkedOnSpark(
        customer_of,
        refused,
        {
            reason: sorted(refusals, key=lambda refusal: refusal.order)[:MAX_EXAMPLES]
            for reason, refusals in found.items()
        },
    )


def components(nodes: DataFrame, links: DataFrame) -> DataFrame:
    """(node, component) for every node of ``nodes`` (column ``node``), ``component`` the
    smallest node it is joined to through ``links`` (columns ``first``, ``second``; either
    direction). Kiveris et al.'s alternating algorithm ("Connected Components in MapReduce
    and Beyond", 2014; what GraphFrames runs): large-star then small-star, until the links no
    longer change; each component is then a star around its smallest node. O(log² n)
    rounds: in a Python model of them, a path of 10,000 aliases in random order took 12."""
    from pyspark.sql import functions as F

    edges = (
        links.select(
            F.greatest("first", "second").alias("big"), F.least("first", "second").alias("small")
        )
        .where(F.col("big") != F.col("small"))
        .distinct()
        .localCheckpoint()
    )
    count = edges.count()
    while True:
        stars = _small_star(_large_star(edges)).localCheckpoint()
        stars_count = stars.count()
        settled = stars_count == count and stars.subtract(edges).isEmpty()
        edges.unpersist()
        edges, count = stars, stars_count
        if settled:
            break
    centre = edges.select(F.col("big").alias("node"), F.col("small").alias("component"))
    # Computed once: the tasks' input reads it three times.
    return (
        nodes.join(centre, "node", "left")
        .select("node", F.coalesce("component", "node").alias("component"))
        .localCheckpoint()
    )


def _large_star(edges: DataFrame) -> DataFrame:
    """Each node's larger neighbours joined to the smallest of it and its neighbours.
    ``edges``: (big, small), distinct, big > small; so is the answer."""
    from pyspark.sql import functions as F

    both = edges.select(F.col("big").alias("node"), F.col("small").alias("neighbour"))
    both = both.unionByName(
        edges.select(F.col("small").alias("node"), F.col("big").alias("neighbour"))
    )
    smallest = both.groupBy("node").agg(F.min("neighbour").alias("smallest"))
    return (
        both.where(F.col("neighbour") > F.col("node"))
        .join(smallest, "node")
        .select(F.col("neighbour").alias("big"), F.least("node", "smallest").alias("small"))
        .distinct()
    )


def _small_star(edges: DataFrame) -> DataFrame:
    """Each node and its smaller neighbours joined to the smallest of those. ``edges``:
    (big, small), distinct, big > small; so is the answer."""
    from pyspark.sql import functions as F

    smallest = edges.groupBy("big").agg(F.min("small").alias("centre"))
    return (
        edges.join(smallest, "big")
        .select(F.col("small").alias("big"), F.col("centre").alias("small"))
        .where(F.col("big") != F.col("small"))
        .unionByName(smallest.select("big", F.col("centre").alias("small")))
        .distinct()
    )


def _link_partition(
    batches: Iterator[pa.RecordBatch], rules: LinkRules, key: IdentityKey
) -> Iterator[pa.RecordBatch]:
    """``link_nodes`` on the whole components of one partition (see ``link_on_spark``)."""
    given = list(batches)
    if not given:  # an empty partition: fewer components than tasks
        return
    table = pa.Table.from_batches(given)
    stage = table.column("stage").to_numpy()
    first = np.asarray(table.column("first").to_numpy(zero_copy_only=False), dtype=object)
    second = np.asarray(table.column("second").to_numpy(zero_copy_only=False), dtype=object)
    names = pd.Index(np.unique(first[stage == NODE]))
    is_pair = stage == PAIR
    rows = table.column("row").to_numpy()[is_pair]
    in_file_order = np.argsort(rows, kind="stable")
    pairs = np.column_stack(
        [names.get_indexer(first[is_pair]), names.get_indexer(second[is_pair])]
    ).astype(np.int64)[in_file_order]
    is_link = stage == LINK
    links = np.column_stack(
        [names.get_indexer(first[is_link]), names.get_indexer(second[is_link])]
    ).astype(np.int64)
    linked = link_nodes(
        np.asarray(names, dtype=object), links, pairs, rules, key, rows[in_file_order]
    )
    aliases = len(linked.customer_of)
    yield pa.RecordBatch.from_arrays(
        [
            pa.array(np.full(aliases, ALIAS, np.int8)),
            pa.array(list(linked.customer_of), pa.string()),
            pa.array(list(linked.customer_of.values()), pa.string()),
            *(pa.nulls(aliases, LINKED.field(column).type) for column in LINKED.names[3:]),
        ],
        schema=LINKED,
    )
    answer: list[dict[str, object]] = [
        {"kind": REFUSED, "reason": reason, "refused": count}
        for reason, count in linked.refused.items()
    ]
    answer += [
        {
            "kind": EXAMPLE,
            "reason": reason,
            "stage": refusal.order[0],
            "row": refusal.order[1],
            "first": refusal.order[2],
            "second": refusal.order[3],
            "example": refusal.example,
        }
        for reason, refusals in linked.examples.items()
        for refusal in refusals
    ]
    if answer:
        yield pa.RecordBatch.from_pylist(answer, schema=LINKED)


# The merge's identity side on the executors (``training.merge``): the identifier
# vocabularies, each alias's customer and the erasure list's matches stay in Spark; the
# driver gets counts, and the customers the erasure list names (one at most per listed alias).


def alias_names(identifiers: DataFrame, columns: Sequence[str]) -> DataFrame:
    """(kind, code, alias) of every alias in the vocabularies of ``columns``
    (``identifiers``: column, code, value; ``kind`` the column's position in ``columns``),
    blanks left out."""
    from pyspark.sql import functions as F

    kind = F.array_position(F.array(*(F.lit(column) for column in columns)), F.col("column"))
    return identifiers.where(F.col("column").isin(list(columns)) & (F.col("value") != "")).select(
        (kind - 1).cast("int").alias("kind"),
        F.col("code").cast("int"),
        F.col("value").alias("alias"),
    )


def linkable(names: DataFrame) -> DataFrame:
    """The aliases of ``names`` (``alias_names``) that are linked: not a session's (only a
    stitch makes a session a customer's, ``training.sessions``), as the single host's
    ``training.merge._linkable``."""
    from pyspark.sql import functions as F

    return names.where(~F.col("alias").startswith(SESSION_PREFIX))


def service_aliases(
    linked: DataFrame, source_ids: DataFrame, identifiers: DataFrame, source_names: list[str]
) -> DataFrame:
    """(alias, customer): every alias the service finds a customer by. The ``linked``
    aliases; each source's raw ids as ``<source>:<id>`` (``source_ids``: source_position and
    the codes raw_id and id_alias), the customer of the row's id alias; each customer's
    ``id:<customer>``. Where two of those name one alias the later wins, as the single
    host's dict updates do."""
    from pyspark.sql import functions as F

    def vocabulary(column: str, code: str, value: str) -> DataFrame:
        return identifiers.where(F.col("column") == column).select(
            F.col("code").alias(code), F.col("value").alias(value)
        )

    names = F.array(*(F.lit(name) for name in source_names))
    lookups = (
        source_ids.join(vocabulary("raw_customer_id", "raw_id", "raw"), "raw_id")
        .join(vocabulary("id_alias", "id_alias", "alias"), "id_alias")
        .join(linked, "alias")
        .select(
            F.concat(F.element_at(names, F.col("source_position") + 1), F.lit(":"), "raw").alias(
                "alias"
            ),
            "customer",
        )
    )
    canonical = (
        linked.select("customer")
        .distinct()
        .select(F.concat(F.lit(f"{CANONICAL}:"), "customer").alias("alias"), "customer")
    )
    ranked = [
        frame.select("alias", "customer", F.lit(rank).alias("rank"))
        for rank, frame in enumerate([linked, lookups, canonical])
    ]
    return (
        reduce(lambda one, other: one.unionByName(other), ranked)
        .groupBy("alias")
        .agg(F.max_by("customer", "rank").alias("customer"))
    )


def erased_customers(aliases: DataFrame, erasures: set[str], key: IdentityKey) -> set[str]:
    """The customers one of whose aliases (``aliases``: alias, customer) is on the erasure
    list (``erasures``, alias digests)."""
    if not erasures:
        return set()
    listed, shared = listed_aliases(aliases, erasures, key)
    try:
        with quiet():
            found = listed.select("customer").distinct().toArrow()
    finally:
        shared.destroy()
    return set(found.column("customer").to_pylist())


def erased_aliases(
    names: DataFrame,
    aliases: DataFrame,
    customers: set[str],
    erasures: set[str],
    key: IdentityKey,
) -> DataFrame:
    """(kind, code) of every alias of ``names`` (``alias_names``) whose customer
    (``aliases``) is one of the erased ``customers``, and of every session alias on the
    list (a session is nobody's customer unless stitched), as ``training.merge`` finds them
    on one host; checkpointed."""
    from pyspark.sql import functions as F

    session = names.sparkSession
    with quiet():
        erased = session.createDataFrame(
            pa.table({"customer": pa.array(sorted(customers), pa.string())})
        )
    theirs = linkable(names).join(aliases.join(F.broadcast(erased), "customer"), "alias")
    sessions, shared = listed_aliases(
        names.where(F.col("alias").startswith(SESSION_PREFIX)), erasures, key
    )
    try:
        both = theirs.select("kind", "code").unionByName(sessions.select("kind", "code"))
        return both.localCheckpoint()
    finally:
        shared.destroy()


def customer_tables(
    sql: SparkEngine, names: DataFrame, aliases: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """The merge's ``customers`` (kind, code, customer) and ``customer_ids`` (customer,
    customer_id) tables, checkpointed: each alias of ``names`` (``alias_names``) with its
    customer's code (``aliases``), the customers numbered from 1 in ascending order of their
    ids, 0 (id "") for nobody."""
    from pyspark.sql import functions as F

    codes, _ = vocabulary_codes(sql, aliases.select("customer"), ["customer"])
    nobody = sql.session.range(1).select(
        F.lit(0).cast("long").alias("customer"), F.lit("").alias("customer_id")
    )
    customer_ids = codes.select(
        (F.col("code") + 1).cast("long").alias("customer"), F.col("value").alias("customer_id")
    ).unionByName(nobody)
    customers = names.join(aliases, "alias").join(
        customer_ids.withColumnRenamed("customer", "number").withColumnRenamed(
            "customer_id", "customer"
        ),
        "customer",
    )
    customers = customers.select("kind", "code", F.col("number").alias("customer"))
    tables = customers.localCheckpoint(), customer_ids.localCheckpoint()
    sql.release(codes)
    return tables


def listed_aliases(
    frame: DataFrame, erasures: set[str], key: IdentityKey
) -> tuple[DataFrame, Broadcast[Any]]:
    """The rows of ``frame`` whose ``alias`` is on the erasure list, and the broadcast list
    and key they read (for the caller to destroy once they are computed)."""
    shared = frame.sparkSession.sparkContext.broadcast((erasures, key))
    with quiet():
        return frame.mapInArrow(partial(_listed_rows, shared=shared), frame.schema), shared


def _listed_rows(batches: Iterator[pa.RecordBatch], shared: Any) -> Iterator[pa.RecordBatch]:
    erasures, key = shared.value
    for batch in batches:
        aliases = batch.column(batch.schema.get_field_index("alias")).to_pylist()
        yield batch.filter(pa.array([key.is_listed(alias, erasures) for alias in aliases]))


# Digest halves are unsigned; Spark sorts signed longs. With the sign bit flipped, the
# signed order is the unsigned one.
_SIGN = np.uint64(1 << 63)
_DIGESTED = pa.schema([("high", pa.int64()), ("low", pa.int64()), ("row", pa.int32())])
ALIAS_ARRAYS = ("alias_high", "alias_low", "alias_rows")


def alias_digests_on_executors(
    aliases: DataFrame, customer_ids: Path, key: IdentityKey, engine: EngineConfig
) -> AliasDigests:
    """The bundle's alias table (``recsvc.identity.alias_table``) of ``aliases`` (alias,
    customer), made by the executors: each alias of a customer in the model
    (``customer_ids``: the model's ids, ascending, as an ``.npy`` file every executor
    reads) digested with ``key`` and given the customer's row, sorted by Spark, each
    sorted partition written as ``.npy`` parts that the driver joins byte for byte and
    memory-maps."""
    from pyspark.sql.pandas.types import from_arrow_schema

    session = aliases.sparkSession
    directory = parts_directory(engine)
    shared = session.sparkContext.broadcast((key, str(customer_ids)))
    try:
        with quiet():
            digested = aliases.mapInArrow(
                partial(_digested, shared=shared), from_arrow_schema(_DIGESTED)
            )
        parts, total = write_sorted_parts(digested.orderBy("high", "low"), directory, _halves)
        if not total:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int32)
        high, low, rows = (join_parts(directory, name, parts, total) for name in ALIAS_ARRAYS)
        return high, low, rows
    finally:
        shared.destroy()  # it holds the identity secret
        # The joined files stay readable through their memory maps.
        shutil.rmtree(directory, ignore_errors=True)


def _digested(batches: Iterator[pa.RecordBatch], shared: Any) -> Iterator[pa.RecordBatch]:
    """A task: each alias of a customer in the model as its digest's halves (sign bits
    flipped) and the customer's row."""
    key, path = shared.value
    customer_ids = np.load(path, mmap_mode="r")
    for batch in batches:
        customers = np.asarray(
            batch.column(batch.schema.get_field_index("customer")).to_numpy(zero_copy_only=False),
            dtype=str,
        )
        rows = np.searchsorted(customer_ids, customers)
        found = rows < len(customer_ids)
        found[found] = customer_ids[rows[found]] == customers[found]
        aliases = batch.column(batch.schema.get_field_index("alias")).filter(pa.array(found))
        digests = b"".join(key.digest(alias) for alias in aliases.to_pylist())
        halves = np.frombuffer(digests, ">u8").reshape(-1, 2).astype(np.uint64) ^ _SIGN
        signed = halves.view(np.int64)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(signed[:, 0]),
                pa.array(signed[:, 1]),
                pa.array(rows[found].astype(np.int32)),
            ],
            schema=_DIGESTED,
        )


def _halves(table: pa.Table) -> dict[str, NDArray[Any]]:
    """A sorted partition's digests as the alias table's arrays (sign bits flipped back)."""
    return {
        "alias_high": table["high"].to_numpy().view(np.uint64) ^ _SIGN,
        "alias_low": table["low"].to_numpy().view(np.uint64) ^ _SIGN,
        "alias_rows": table["row"].to_numpy(),
    }
