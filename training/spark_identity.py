"""Linking customers across sources on Spark's executors (``[engine] kind = "spark"``).

``training.identity.link_nodes`` links a set of aliases as a whole: a union-find whose guards
depend on what it linked before. A guard only ever looks inside one connected component of
the alias graph, though, and a component's links are applied in the same order whatever else
is linked, so each component links the same on its own. Spark finds the components; each
task runs ``link_nodes``, the single-host code, on the whole components of its partition.
The driver gets each alias's customer and the refusals' counts and first examples, never the
graph or the records.

The aliases go to the executors as they are (emails and phone numbers included), and the
identity key with the tasks: on a shared cluster, turn on Spark's authentication and
encryption (docs/scaling.md, "On a cluster").
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial, reduce
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from recsvc.identity import IdentityKey
from training.engine import quiet
from training.identity import MAX_EXAMPLES, Identity, LinkRules, Refusal, link_nodes

if TYPE_CHECKING:
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


def link_on_spark(
    records: DataFrame,
    crosswalk: list[tuple[str, str]],
    rules: LinkRules,
    key: IdentityKey,
) -> Identity:
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
            assigned = linked.where(F.col("kind") == ALIAS).select("alias", "customer").toArrow()
            # Each task's refusal counts and first examples: a few rows a task, in one action
            # (each action costs seconds on a small cluster).
            reports = linked.where(F.col("kind") != ALIAS).toArrow().to_pylist()
    finally:
        linked.unpersist()
        links.unpersist()
        chains.unpersist()
    customer_of = dict(
        zip(assigned["alias"].to_pylist(), assigned["customer"].to_pylist(), strict=True)
    )
    refused: dict[str, int] = {}
    found: dict[str, list[Refusal]] = {}
    for row in reports:
        reason = str(row["reason"])
        if row["kind"] == REFUSED:
            refused[reason] = refused.get(reason, 0) + int(row["refused"])
            continue
        order = (int(row["stage"]), int(row["row"]), row["first"], row["second"])
        found.setdefault(reason, []).append(Refusal(order, row["example"]))
    return Identity(
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
