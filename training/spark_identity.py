"""Linking customers across sources on Spark's executors (``[engine] kind = "spark"``).

``training.identity.link_nodes`` links a set of aliases as a whole: a union-find whose guards
depend on what it linked before. A guard only ever looks inside one connected component of
the alias graph, though, and a component's links are applied in the same order whatever else
is linked, so each component links the same on its own. Spark finds the components; each
task runs ``link_nodes``, the single-host code, on the whole components of its partition.
The driver gets each alias's customer and the refusals' counts and first examples, never the
graph or the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
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
    carried = F.array_sort(F.filter(F.array(*records.columns), lambda alias: alias.isNotNull()))
    chains = records.select(carried.alias("aliases"))
    # A record links its aliases in ascending order, each to the next (as link_nodes does).
    links = None
    for position in range(len(records.columns) - 1):
        step = chains.select(
            F.get("aliases", position).alias("first"),
            F.get("aliases", position + 1).alias("second"),
        ).where(F.col("second").isNotNull())
        links = step if links is None else links.unionByName(step)
    assert links is not None, "records carry at least two kinds of alias"
    links = links.distinct()
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
    of_first = component.withColumnRenamed("node", "first")
    given = (
        component.select(
            "component",
            F.lit(NODE).alias("stage"),
            F.lit(0).cast("long").alias("row"),
            F.col("node").alias("first"),
            F.lit(None).cast("string").alias("second"),
        )
        .unionByName(
            pairs.join(of_first, "first").select(
                "component", F.lit(PAIR).alias("stage"), "row", "first", "second"
            )
        )
        .unionByName(
            links.join(of_first, "first").select(
                "component",
                F.lit(LINK).alias("stage"),
                F.lit(0).cast("long").alias("row"),
                "first",
                "second",
            )
        )
    )
    # As many tasks as a shuffle makes (``spark.sql.shuffle.partitions``): a task holds its
    # components' aliases and links in memory while it links them.
    tasks = int(session.conf.get("spark.sql.shuffle.partitions") or 200)
    with quiet():
        linked = (
            given.repartition(tasks, "component")
            .mapInArrow(partial(_link_partition, rules=rules, key=key), from_arrow_schema(LINKED))
            .persist()
        )
    try:
        with quiet():
            assigned = linked.where(F.col("kind") == ALIAS).select("alias", "customer").toArrow()
        customer_of = dict(
            zip(assigned["alias"].to_pylist(), assigned["customer"].to_pylist(), strict=True)
        )
        refused = {
            row["reason"]: int(row["refused"])
            for row in linked.where(F.col("kind") == REFUSED)
            .groupBy("reason")
            .agg(F.sum("refused").alias("refused"))
            .collect()
        }
        examples: dict[str, list[Refusal]] = {}
        for row in linked.where(F.col("kind") == EXAMPLE).collect():
            order = (int(row["stage"]), int(row["row"]), row["first"], row["second"])
            examples.setdefault(row["reason"], []).append(Refusal(order, row["example"]))
    finally:
        linked.unpersist()
    first = {
        reason: sorted(found, key=lambda refusal: refusal.order)[:MAX_EXAMPLES]
        for reason, found in examples.items()
    }
    return Identity(customer_of, refused, first)


def components(nodes: DataFrame, links: DataFrame) -> DataFrame:
    """(node, component) for every node of ``nodes`` (column ``node``), ``component`` the
    smallest node it is joined to through ``links`` (columns ``first``, ``second``; either
    direction). Each round a node takes the smallest label among its own and its
    neighbours', then its label's label (pointer jumping, so a long chain takes a few
    rounds, not one per link), until no label changes: then the two ends of every link
    carry one label, the smallest node of their component."""
    from pyspark.sql import functions as F

    both = links.select(F.col("first").alias("node"), F.col("second").alias("neighbour"))
    both = both.unionByName(
        both.select(F.col("neighbour").alias("node"), F.col("node").alias("neighbour"))
    )
    both = both.where(F.col("node") != F.col("neighbour")).distinct().localCheckpoint()
    labels = nodes.select("node", F.col("node").alias("label")).localCheckpoint()
    while True:
        offered = both.join(labels.withColumnRenamed("node", "neighbour"), "neighbour").select(
            "node", "label"
        )
        smallest = labels.unionByName(offered).groupBy("node").agg(F.min("label").alias("label"))
        jumped = (
            smallest.join(
                smallest.select(F.col("node").alias("label"), F.col("label").alias("onward")),
                "label",
            )
            .select("node", F.least("label", "onward").alias("label"))
            .localCheckpoint()
        )
        changed = (
            jumped.join(labels.withColumnRenamed("label", "before"), "node")
            .where(F.col("label") != F.col("before"))
            .count()
        )
        labels = jumped
        if not changed:
            return labels.withColumnRenamed("label", "component")


def _link_partition(
    batches: Iterator[pa.RecordBatch], rules: LinkRules, key: IdentityKey
) -> Iterator[pa.RecordBatch]:
    """``link_nodes`` on the whole components of one partition (see ``link_on_spark``)."""
    given = pa.Table.from_batches(list(batches))
    if not given.num_rows:
        return
    stage = given.column("stage").to_numpy()
    first = np.asarray(given.column("first").to_numpy(zero_copy_only=False), dtype=object)
    second = np.asarray(given.column("second").to_numpy(zero_copy_only=False), dtype=object)
    names = pd.Index(np.unique(first[stage == NODE]))
    is_pair = stage == PAIR
    rows = given.column("row").to_numpy()[is_pair]
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
        for reason, found in linked.examples.items()
        for refusal in found
    ]
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
    if answer:
        yield pa.RecordBatch.from_pylist(answer, schema=LINKED)
