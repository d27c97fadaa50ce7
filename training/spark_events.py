"""The service's event logs on Spark's executors (``[engine] kind = "spark"``).

An event log's anonymous sessions are stitched into the customers who signed in from them
across the whole log (``training.sessions``), before its records are parsed, so a log is
read in three passes of a task per file, and the driver holds none of its records:

1. **Links.** Each task copies its file (``EventLogs.snapshot``: the service appends to its
   logs and rewrites them on an erasure while the trainer runs, and every pass must read
   the same records, as the single host reads a file once; the copies are removed when the
   merge ends), reads the copy and gives its links (a record carrying both a
   session and a customer's key: ``training.sessions.session_links``), how many records
   each distinct customer key has, and the receipt time of its last purchase. Spark keeps
   each session's latest link (the last in ``training.sessions.LINK_ORDER``), drops the
   sessions on the erasure list, and joins the result to the keys each file uses.
2. **Purchases.** Each task reads its file again with the stitches of its own sessions,
   rewrites their records' customer keys (``training.sessions.rewrite_sessions``) and
   parses its purchases and returns as any other source's file (``training.spark_sources``).
3. **Interactions.** The same for its other records, read as the merge reads them before
   any lookup (``training.merge``'s ``_LoggedRecords``); once the customers are linked,
   Spark gives each its customer, its erasure and its duplicates (``records_on_spark``),
   and each record's merge outcome is ``training.interactions.merged_outcomes``.

The records stay a frame on the executors (``RECORD_SCHEMA``), which build the dataset's
ranges from it (``training.spark_dataset``); the driver gets their accounting, counted by
the ranges.
"""

from __future__ import annotations

import logging
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.identity import IdentityKey
from training.config import SourceConfig
from training.engine import SparkEngine, quiet
from training.errors import SourceError
from training.interactions import merged_outcomes, records_frame
from training.sessions import CUSTOMER, LINK_ORDER, rewrite_sessions, session_links
from training.sources import (
    SourceFiles,
    SourceInput,
    SourceRows,
    purchases_received_through,
    read_event_file,
    split_event_records,
)
from training.spark_identity import listed_aliases
from training.spark_sources import Parse, parsed_batches, parsed_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

# One event log file's interaction records as the merge reads them before any lookup
# (``training.merge``'s ``_LoggedRecords.table``): ``record`` orders them as the single host
# does (``record_order``), ``alias`` is the one their customer is known by (NULL: none),
# ``session`` whether their customer key is a session still, ``event_id`` NULL where blank.
LOGGED = pa.schema(
    [
        ("record", pa.int64()),
        ("source_position", pa.int32()),
        ("kind", pa.string()),
        ("alias", pa.string()),
        ("session", pa.bool_()),
        ("item_id", pa.string()),
        ("stamp", pa.int64()),  # microseconds, NULL where it does not parse
        ("invalid", pa.bool_()),
        ("has_item", pa.bool_()),
        ("event_id", pa.string()),
        ("trust", pa.float32()),
    ]
)
# ``_LoggedRecords.table`` of one file's interaction records (a frame as
# ``SourceRows.interactions``, stitched) and its source's position.
ReadRecords = Callable[[pd.DataFrame, int], pa.Table]
# The event logs' interaction records (``training.interactions.COLUMNS``) as the executors
# hold them, ``record`` ordering them.
RECORD_SCHEMA = (
    "record long, source string, kind string, customer_id string, item_id string, "
    "stamp long, trust float, outcome byte"
)
# What the links pass gives: a link (``customer`` set), a customer key's record count in a
# file (``uses``), a file's last purchase receipt (``through``), or a file's ``error``.
_LINKS = pa.schema(
    [
        ("task", pa.int32()),
        ("session", pa.string()),
        ("customer", pa.string()),
        ("received", pa.float64()),
        ("source", pa.int32()),
        ("file", pa.int32()),
        ("record", pa.int64()),
        ("uses", pa.int64()),
        ("through", pa.float64()),
        ("error", pa.string()),
    ]
)


MAX_FILES = 1 << 16  # an event log's files ``record_order`` tells apart


def record_order(
    position: int, file: NDArray[np.integer[Any]], record: NDArray[np.integer[Any]]
) -> NDArray[np.int64]:
    """Each record's place among every event log's records, as one host concatenates them:
    by source, then file, then record in file (under 2**32 records a file, 2**16 files)."""
    order: NDArray[np.int64] = (
        (np.int64(position) << 48) + (file.astype(np.int64) << 32) + record.astype(np.int64)
    )
    return order


@dataclass(frozen=True)
class EventLogs:
    """The event logs' files, as the tasks read them: task -> (source position, file
    index, path); and the directory (on storage every executor reaches) where pass 1 copies
    each file, which every pass then reads: the service appends to its logs and rewrites
    them on an erasure while the trainer runs, and the passes must read the same records."""

    tasks: list[tuple[int, int, str]]
    sources: dict[int, SourceConfig]
    files: dict[int, list[str]]
    snapshots: str

    @staticmethod
    def of(sources: list[SourceInput], snapshots: Path) -> EventLogs:
        """The event logs of ``sources`` (listed by ``SourceFiles``: on Spark the
        executors read them)."""
        logs = EventLogs([], {}, {}, str(snapshots))
        for position, entry in enumerate(sources):
            if entry.source.kind != "events":
                continue
            if isinstance(entry, SourceRows):
                raise TypeError(
                    f"source {entry.source.name!r}: on Spark an event log is read by the "
                    "executors; give it as SourceFiles"
                )
            assert isinstance(entry, SourceFiles)
            paths = [str(path) for path in entry.files]
            if len(paths) >= MAX_FILES:
                raise SourceError(
                    f"source {entry.source.name!r}: {len(paths):,} files; Spark reads at most "
                    f"{MAX_FILES - 1:,} of an event log (join old ones into fewer files)"
                )
            logs.sources[position] = entry.source
            logs.files[position] = paths
            logs.tasks.extend((position, index, path) for index, path in enumerate(paths))
        return logs

    def snapshot(self, task: int) -> Path:
        """Where pass 1 copies task ``task``'s file."""
        position, index, path = self.tasks[task]
        return Path(self.snapshots) / f"{position:05d}-{index:09d}-{Path(path).name}"

    def read(self, task: int) -> tuple[int, int, pd.DataFrame]:
        """Task ``task``'s file as pass 1 copied it: its source's position, its index
        among the source's files, its records."""
        position, index, _ = self.tasks[task]
        return position, index, read_event_file(self.sources[position], self.snapshot(task), index)


@dataclass(frozen=True)
class StitchedLogs:
    """The event logs with their sessions' stitches: ``stitches`` (task, session, customer)
    holds a row per task (session NULL) and one per stitched session a task's file uses;
    ``through``: the receipt time of the last purchase or return read (None: none)."""

    logs: EventLogs
    stitches: DataFrame | None
    through: float | None


def stitched_logs(
    sql: SparkEngine, logs: EventLogs, erasures: set[str], key: IdentityKey
) -> StitchedLogs:
    """Pass 1 (the module's docstring): each session's latest link, the sessions on the
    erasure list (``erasures``, digests with ``key``) left anonymous."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    if not logs.tasks:
        return StitchedLogs(logs, None, None)
    session = sql.session
    shared = session.sparkContext.broadcast(logs)
    tasks = session.range(len(logs.tasks), numPartitions=len(logs.tasks))
    with quiet():
        found = sql.hold(
            tasks.mapInArrow(partial(_links, shared=shared), from_arrow_schema(_LINKS))
        )
    errors = found.where(F.col("error").isNotNull()).select("error").limit(1).collect()
    if errors:
        raise SourceError(errors[0]["error"])
    latest = (
        found.where(F.col("customer").isNotNull())
        .groupBy("session")
        .agg(F.max_by("customer", F.struct(*LINK_ORDER)).alias("customer"))
    )
    listed_shared = None
    try:
        if erasures:
            listed, listed_shared = listed_aliases(
                latest.select(F.col("session").alias("alias")), erasures, key
            )
            latest = latest.join(
                listed.withColumnRenamed("alias", "session"), "session", "left_anti"
            )
        stitched = (
            found.where(F.col("uses").isNotNull())
            .select("task", "session", "uses")
            .join(latest, "session")
            .localCheckpoint()
        )
        sessions = latest.count()  # linked, as the single host counts them, used or not
    finally:
        if listed_shared is not None:
            listed_shared.destroy()  # it holds the identity secret
    records = stitched.agg(F.sum("uses")).first()
    through = found.agg(F.max("through")).first()
    sql.release(found)
    shared.destroy()
    if sessions:
        log.info(
            "stitched %d sessions into customers: %d records",
            sessions,
            0 if records is None else records[0] or 0,  # none used: a NULL sum
        )
    every_task = tasks.select(
        F.col("id").cast("int").alias("task"),
        F.lit(None).cast("string").alias("session"),
        F.lit(None).cast("string").alias("customer"),
    )
    stitches = every_task.unionByName(stitched.select("task", "session", "customer"))
    return StitchedLogs(logs, stitches, None if through is None else through[0])


def _links(batches: Iterator[pa.RecordBatch], shared: Any) -> Iterator[pa.RecordBatch]:
    """A task of pass 1: each file it is given, read (``shared``: the broadcast
    ``EventLogs``)."""
    logs: EventLogs = shared.value
    for batch in batches:
        for task in batch.column("id").to_pylist():
            position, _, path = logs.tasks[task]
            try:
                snapshot = logs.snapshot(task)
                staged = snapshot.with_name(f".{snapshot.name}.{uuid.uuid4().hex}")
                shutil.copyfile(path, staged)
                staged.replace(snapshot)  # a task run again copies the file whole again
                position, _, frame = logs.read(task)
            except SourceError as error:
                yield _links_batch(task=task, error=[str(error)])
                continue
            except OSError as error:  # e.g. not on this executor's host: not shared storage
                message = (
                    f"source {logs.sources[position].name!r}, file {path}: cannot read it on "
                    f"executor host {socket.gethostname()} ({error.strerror or error})"
                )
                yield _links_batch(task=task, error=[message])
                continue
            links = session_links(frame, position)
            if links is not None:
                yield _links_batch(task=task, **{str(name): links[name] for name in links})
            column = frame[CUSTOMER]
            codes = column.cat.codes.to_numpy()
            uses = np.bincount(codes[codes >= 0], minlength=len(column.cat.categories))
            keys = pd.Series(column.cat.categories, dtype="str").str.strip().to_numpy(dtype=object)
            yield _links_batch(task=task, session=keys[uses > 0], uses=uses[uses > 0])
            through = purchases_received_through(split_event_records(frame)[0])
            yield _links_batch(task=task, through=[through])


def _links_batch(task: int, **columns: Any) -> pa.RecordBatch:
    """``_LINKS``'s rows of one task: ``columns`` given, the others NULL."""
    rows = len(next(iter(columns.values())))
    arrays = [
        pa.array(np.full(rows, task, np.int32))
        if field.name == "task"
        else pa.array(np.asarray(columns[field.name]), field.type, from_pandas=True)
        if field.name in columns
        else pa.nulls(rows, field.type)
        for field in _LINKS
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=_LINKS)


def _per_task(
    batches: Iterator[pa.RecordBatch],
    logs: EventLogs,
    handle: Callable[[int, int, pd.DataFrame], pa.Table],
) -> Iterator[pa.RecordBatch]:
    """Passes 2 and 3's tasks: each file whose stitches (``StitchedLogs.stitches``' rows,
    all of a file's in the same partition) it is given, read as pass 1 copied it, its
    sessions' customer keys rewritten, and handed to ``handle`` (position, index, records)."""
    given = list(batches)
    stitches = pa.Table.from_batches(given) if given else _STITCHES.empty_table()
    for task in pc.unique(stitches.column("task")).to_pylist():
        position, index, frame = logs.read(task)
        mine = stitches.filter(pc.equal(stitches.column("task"), task))
        _rewritten(frame, mine)
        yield from handle(position, index, frame).to_batches()


def _rewritten(frame: pd.DataFrame, stitches: pa.Table) -> None:
    """``frame``'s records made under the sessions of ``stitches`` (session, customer; NULL
    session: none) given their customer's key."""
    customer_of = {
        session: customer
        for session, customer in zip(
            stitches.column("session").to_pylist(),
            stitches.column("customer").to_pylist(),
            strict=True,
        )
        if session is not None
    }
    if customer_of:
        rewrite_sessions(frame, customer_of)


_STITCHES = pa.schema([("task", pa.int32()), ("session", pa.string()), ("customer", pa.string())])


def _by_task(stitched: StitchedLogs) -> DataFrame:
    """The stitches, a partition per file as far as hashing spreads them: a grouping
    aggregate's partitions could be coalesced into one, reading every file in one task."""
    assert stitched.stitches is not None
    return stitched.stitches.repartition(len(stitched.logs.tasks), "task")


def parsed_purchases(
    stitched: StitchedLogs, parse: Parse, text_columns: list[str]
) -> DataFrame | None:
    """Pass 2: the logs' purchases and returns parsed (``parse``), as
    ``training.spark_sources.parsed_schema``'s rows, a file's after its stitches."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if stitched.stitches is None:
        return None
    schema = parsed_schema(text_columns)
    logs = stitched.logs

    def parsed(position: int, index: int, frame: pd.DataFrame) -> pa.Table:
        purchases = split_event_records(frame)[0]
        rows = SourceRows(logs.sources[position], logs.files[position], purchases)
        columns, encoded, quarantine = parse(rows, position)
        batches = parsed_batches(columns, encoded, quarantine, position, index, text_columns)
        return pa.Table.from_batches(list(batches), schema)

    with quiet():
        return _by_task(stitched).mapInArrow(
            partial(_per_task, logs=logs, handle=parsed), from_arrow_schema(schema)
        )


def logged_records(stitched: StitchedLogs, read_records: ReadRecords) -> DataFrame | None:
    """Pass 3, before any lookup: the logs' interaction records, ``LOGGED``'s rows."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if stitched.stitches is None:
        return None

    def logged(position: int, _: int, frame: pd.DataFrame) -> pa.Table:
        return read_records(split_event_records(frame)[1], position)

    with quiet():
        return _by_task(stitched).mapInArrow(
            partial(_per_task, logs=stitched.logs, handle=logged), from_arrow_schema(LOGGED)
        )


def records_on_spark(
    logged: DataFrame,
    aliases: DataFrame,
    before: DataFrame,
    erased_customers: set[str],
    erasures: set[str],
    key: IdentityKey,
    source_names: list[str],
) -> DataFrame:
    """The interaction records (``logged``: ``LOGGED``'s rows) with their customer's id
    ("" for none) and the merge's outcome, as ``RECORD_SCHEMA``'s rows, checkpointed:
    ``aliases`` and ``before`` (alias, customer) as linked without and with the erased
    customers' rows, ``erased_customers`` and ``erasures`` (digests with ``key``) what
    erasure decided. The rules are the single host's (``training.merge``'s
    ``_LoggedRecords.decided``): a record is erased where its alias was an erased
    customer's or is listed itself; a duplicate repeats an event id an earlier record of
    its source has (by ``record``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    logged = logged.localCheckpoint()  # read below more than once
    first = Window.partitionBy("source_position", "event_id").orderBy("record")
    identified = F.col("event_id").isNotNull()
    records = (
        logged.where(identified)
        .withColumn("duplicate", F.row_number().over(first) > 1)
        .unionByName(logged.where(~identified).withColumn("duplicate", F.lit(False)))
        .join(aliases.withColumnRenamed("customer", "customer_id"), "alias", "left")
    )
    shared = None
    if erasures:
        with quiet():
            erased_frame = logged.sparkSession.createDataFrame(
                pa.table({"customer": pa.array(sorted(erased_customers), pa.string())})
            )
        theirs = before.join(F.broadcast(erased_frame), "customer").select("alias")
    try:
        if erasures:
            listed, shared = listed_aliases(
                logged.where(F.col("alias").isNotNull()).select("alias").distinct(),
                erasures,
                key,
            )
            erased = listed.unionByName(theirs).distinct().withColumn("erased", F.lit(True))
            records = records.join(erased, "alias", "left")
        else:
            records = records.withColumn("erased", F.lit(False))
        records = records.select(
            "record",
            F.element_at(F.array(*map(F.lit, source_names)), F.col("source_position") + 1).alias(
                "source"
            ),
            "kind",
            F.coalesce("customer_id", F.lit("")).alias("customer_id"),
            "item_id",
            "stamp",
            "trust",
            "invalid",
            F.coalesce("erased", F.lit(False)).alias("erased"),
            "duplicate",
            "has_item",
            "session",
        )
        with quiet():
            return records.mapInArrow(_decided, RECORD_SCHEMA).localCheckpoint()
    finally:
        if shared is not None:
            shared.destroy()  # it holds the identity secret


def _decided(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Each record's merge outcome (``training.interactions.merged_outcomes``)."""
    for batch in batches:

        def values(name: str, batch: pa.RecordBatch = batch) -> Any:
            return batch.column(name).to_numpy(zero_copy_only=False)

        outcome = merged_outcomes(
            values("kind").astype(object),
            invalid=values("invalid").astype(bool),
            erased=values("erased").astype(bool),
            duplicate=values("duplicate").astype(bool),
            has_item=values("has_item").astype(bool),
            session=values("session").astype(bool),
            customer_known=values("customer_id").astype(str) != "",
        )
        kept = ("record", "source", "kind", "customer_id", "item_id", "stamp", "trust")
        yield pa.RecordBatch.from_arrays(
            [*(batch.column(name) for name in kept), pa.array(outcome, pa.int8())],
            names=[*kept, "outcome"],
        )


def records_of(table: pa.Table) -> pd.DataFrame:
    """``RECORD_SCHEMA``'s rows as ``training.interactions.COLUMNS``'s, in ``record`` order."""
    table = table.sort_by("record")
    stamps = table.column("stamp").fill_null(np.iinfo(np.int64).min).to_numpy()
    frame = pd.DataFrame(
        {
            **{
                column: table.column(column).to_numpy(zero_copy_only=False).astype(str)
                for column in ("source", "kind", "customer_id", "item_id")
            },
            "timestamp": stamps.view("datetime64[us]"),
            "trust": table.column("trust").to_numpy().astype(np.float32),
            "outcome": table.column("outcome").to_numpy().astype(np.int8),
        }
    )
    return records_frame([frame])


def collected_records(records: DataFrame) -> pd.DataFrame:
    """The records brought to the driver (for a merge asked not to keep them on the
    executors: tests and evaluation, at their sizes)."""
    with quiet():
        return records_of(records.toArrow())
