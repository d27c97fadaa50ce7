"""Reading and parsing the sources on Spark's executors (``[engine] kind = "spark"``).

Each file of a CSV, JSONL or Parquet source, and each slice of a PostgreSQL source
(``training.sources.DatabaseSlices``), is one task, which runs the single-host reader
(``training.sources.read_file``, ``read_slice``) and parser (``training.merge``'s ``_parse``)
on it, so the driver never holds those sources' rows. The service's event logs (their sessions
are stitched across the whole log first) are read by the executors too, in passes of their
own (``training.spark_events``).

Spark then numbers the rows in source order (each file's after the files before it) and gives
each text value its position in its column's sorted vocabulary, as the single host does, so
the merge's queries read the same ``rows`` table on either engine. The driver collects the
catalog's vocabularies (items, descriptions, countries); the order ids' (which grow with
purchases) and the identifiers' (which grow with customers) stay on the executors. A
file's quarantined rows, raw values included, stay in Spark as one row per file until the
merge has decided which are an erased customer's; then the executors write them as the
quarantine file's parts (``write_quarantine``).
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from training.config import EngineConfig, SourceConfig
from training.engine import SparkEngine, parts_directory, quiet
from training.errors import SourceError
from training.quarantine import QuarantinedRows, firsts, withhold_erased, write_part
from training.sources import (
    DatabaseSlices,
    SourceFiles,
    SourceInput,
    SourceRows,
    database_content,
    database_digest,
    export_snapshot,
    mixed_fields,
    read_file,
    read_slice,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# ``training.merge``'s parser of one source's rows: typed columns, text columns (Arrow
# dictionaries), quarantined rows.
Columns = dict[str, NDArray[Any]]
Parse = Callable[[SourceRows, int], tuple[Columns, dict[str, pa.DictionaryArray], pd.DataFrame]]
# The columns of ``rows`` that a merged row carries beside its outcome and customer.
VALUE_COLUMNS = (
    "source_position",
    "trust",
    "quantity",
    "unit_price",
    "stamp",
    "order",
    "item_id",
    "description",
    "country",
)
# Rows per Arrow batch: a text column's strings are made a batch at a time.
BATCH_ROWS = 65_536
_TYPED = [
    ("source_position", pa.int32()),
    ("file", pa.int32()),
    ("row_in_file", pa.int64()),
    ("trust", pa.float32()),
    ("quantity", pa.float64()),
    ("unit_price", pa.float64()),
    ("stamp", pa.int64()),  # microseconds, NULL for no timestamp
    ("is_cancellation", pa.bool_()),
    ("outcome", pa.int8()),
    ("reason", pa.int8()),
    ("invalid_email", pa.bool_()),
    ("invalid_phone", pa.bool_()),
]
# A vocabulary up to this many bytes is sent whole to every task that codes rows (Spark
# cannot tell its size: it is one column of a table of all of them); a larger one (order
# ids at scale, a large shop's customers) is joined by shuffling the rows. At 2 M purchases
# (every vocabulary under it) coding took 15.1 s, against 18.6 s with every one shuffled.
BROADCAST_BYTES = 64 << 20
# The kinds the executors read: files, a task each; a database, a task per slice; the
# service's event logs, a task per file in each of their passes (``training.spark_events``).
EXECUTOR_KINDS = ("csv", "jsonl", "parquet", "postgresql", "events")
# Identifiers and orders are NULL in ``rows`` where blank; items are not (a blank item is
# quarantined), descriptions and countries are only values.
_NULL_WHEN_BLANK = {"raw_customer_id", "id_alias", "email_alias", "phone_alias", "order"}


def read_by_executors(source: SourceConfig, engine: EngineConfig) -> bool:
    """Whether ``source`` is read by Spark's executors rather than by the trainer."""
    return engine.kind == "spark" and source.kind in EXECUTOR_KINDS


def parsed_schema(text_columns: list[str]) -> pa.Schema:
    """What parsing gives Spark: the rows (``row_in_file`` set), then, where a file has any,
    a row of its own with its quarantined rows (``quarantine``, a pickled DataFrame indexed by
    row in file) and a database slice's ``content`` (``training.sources.database_digest``:
    count and hash sum), or only a row with the ``error`` that stopped it."""
    return pa.schema(
        [
            *_TYPED,
            *((column, pa.string()) for column in text_columns),
            ("error", pa.string()),
            ("quarantine", pa.binary()),
            ("content", pa.string()),
        ]
    )


@dataclass(frozen=True)
class SparkRows:
    """The parsed rows in Spark: ``rows`` as the merge's queries read it (``ROW_COLUMNS`` and
    ``erased``), ``values`` (row_id, VALUE_COLUMNS and a code per text column but the
    order's and the identifiers'), the collected ``vocabulary`` of each catalog-sized text
    column (items, descriptions, countries), the ``identifiers``' vocabularies left on the
    executors (column, code, value: they grow with customers), each file's ``quarantine``
    row (source_position, file, quarantine, and ``start``, its first row's row_id), and each
    database source's content as the data fingerprint takes it, by source name."""

    rows: DataFrame
    values: DataFrame
    vocabulary: dict[str, pa.Array]
    identifiers: DataFrame
    quarantine: DataFrame
    database_contents: dict[str, str]


@dataclass(frozen=True)
class _Files:
    """What the tasks read: task number -> (source position, file index, path), or for a
    database source (source position, slice, its WHERE clause or None)."""

    tasks: list[tuple[int, int, str | None]]
    sources: dict[int, SourceConfig]
    files: dict[int, list[str]]  # each source's files (slices), for the quarantine's names
    dsns: dict[int, str] = dataclasses.field(repr=False)  # connection strings, by source
    snapshots: dict[int, str | None]  # and the snapshot its slices are read in
    as_text: dict[int, set[str]]  # per source, the fields read as text (``mixed_fields``)
    text_columns: list[str]


def rows_on_spark(
    sql: SparkEngine,
    sources: list[SourceInput],
    parse: Parse,
    text_columns: list[str],
    identifier_columns: list[str],
    event_logs: list[int],
    event_log_rows: DataFrame | None,
) -> SparkRows:
    """Every source's rows parsed and coded in Spark: ``SourceFiles`` and ``DatabaseSlices``
    by the executors, one task per file or slice; ``SourceRows`` (read by the driver) here,
    then sent; the event logs' (at ``event_logs``) are ``event_log_rows``, parsed by
    ``training.spark_events``. Empties ``sources``. The vocabularies of
    ``identifier_columns`` (and the order ids') stay on the executors.
    What it persists, ``sql`` holds until the merge ends."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    session = sql.session
    parallelism = session.sparkContext.defaultParallelism
    files = _Files([], {}, {}, {}, {}, {}, text_columns)
    parts: list[DataFrame] = [] if event_log_rows is None else [event_log_rows]
    for position in range(len(sources)):
        entry = sources.pop(0)
        if position in event_logs:
            continue
        if isinstance(entry, SourceFiles):
            paths = [str(path) for path in entry.files]
            files.sources[position] = entry.source
            files.files[position] = paths
            files.as_text[position] = mixed_fields(entry.source, entry.files)
            files.tasks.extend((position, index, path) for index, path in enumerate(paths))
            continue
        if isinstance(entry, DatabaseSlices):
            files.sources[position] = entry.source
            files.files[position] = entry.labels
            files.as_text[position] = set()
            files.dsns[position] = entry.dsn
            files.snapshots[position] = None
            if len(entry.clauses) > 1:  # read apart: in one snapshot, held until the merge ends
                holder, files.snapshots[position] = export_snapshot(entry.source, entry.dsn)
                sql.closing(holder.close)
            files.tasks.extend(
                (position, index, clause) for index, clause in enumerate(entry.clauses)
            )
            continue
        parsed, encoded, quarantine = parse(entry, position)
        del entry
        table = pa.Table.from_batches(
            parsed_batches(parsed, encoded, quarantine, position, 0, text_columns),
            schema=parsed_schema(text_columns),
        )
        del parsed, encoded, quarantine
        with quiet():  # Arrow batches become partitions of 10,000 rows: too many
            parts.append(session.createDataFrame(table).coalesce(parallelism))
    if files.tasks:
        shared = session.sparkContext.broadcast(files)
        tasks = session.range(len(files.tasks), numPartitions=len(files.tasks))
        schema = from_arrow_schema(parsed_schema(text_columns))
        with quiet():
            parts.append(
                tasks.mapInArrow(partial(_parse_files, shared=shared, parse=parse), schema)
            )
    all_parsed = sql.hold(reduce(lambda a, b: a.unionByName(b), parts))
    errors = all_parsed.where(F.col("error").isNotNull()).select("error").limit(1).collect()
    if errors:
        raise SourceError(errors[0]["error"])
    with quiet():
        contents = (
            all_parsed.where(F.col("content").isNotNull())
            .select("source_position", "content")
            .toArrow()
            .to_pylist()
        )
    coded = _coded(
        sql,
        all_parsed.where(F.col("row_in_file").isNotNull()),
        all_parsed.where(F.col("quarantine").isNotNull()),
        text_columns,
        identifier_columns,
        event_logs,
    )
    sql.release(all_parsed)
    return dataclasses.replace(coded, database_contents=_database_contents(contents, files.sources))


def _database_contents(
    slices: list[dict[str, Any]], sources: dict[int, SourceConfig]
) -> dict[str, str]:
    """Each database source's content, from its slices' (``content``: "count hash-sum")."""
    totals: dict[int, tuple[int, int]] = {}
    for found in slices:
        count, total = map(int, found["content"].split())
        before = totals.get(found["source_position"], (0, 0))
        totals[found["source_position"]] = (before[0] + count, (before[1] + total) % 2**64)
    return {
        source.name: database_content(*totals.get(position, (0, 0)))
        for position, source in sources.items()
        if source.kind == "postgresql"
    }


def write_quarantine(
    sql: SparkEngine,
    quarantine: DataFrame,
    columns: list[str],
    erased: NDArray[np.int64],
    engine: EngineConfig,
) -> QuarantinedRows:
    """The quarantine file (``training.quarantine``), written by the executors from
    ``quarantine`` (``SparkRows.quarantine``), a part per file, the values of the rows in
    ``erased`` (row ids) withheld; the driver joins the parts."""
    from pyspark.sql.pandas.types import from_arrow_schema

    directory = parts_directory(engine)
    try:
        setup = sql.session.sparkContext.broadcast((columns, erased, str(directory)))
        with quiet():
            written = quarantine.mapInArrow(
                partial(_write_quarantine_parts, setup=setup), from_arrow_schema(_WRITTEN)
            ).toArrow()
        rows = sorted(written.to_pylist(), key=lambda row: (row["source_position"], row["file"]))
        parts = [directory / row["part"] for row in rows]
        found = [pickle.loads(row["firsts"]) for row in rows]
        return QuarantinedRows.joined(parts, found, columns)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# A quarantine part written: its file, its name in the parts directory, the first row of each
# of its reasons (a pickled DataFrame).
_WRITTEN = pa.schema(
    [
        ("source_position", pa.int32()),
        ("file", pa.int32()),
        ("part", pa.string()),
        ("firsts", pa.binary()),
    ]
)


def _write_quarantine_parts(
    batches: Iterator[pa.RecordBatch], setup: Any
) -> Iterator[pa.RecordBatch]:
    """A task: write each file's quarantined rows it is given as a part (``setup``: the
    broadcast columns, erased row ids and parts directory)."""
    columns, erased, directory = setup.value
    for batch in batches:
        for row in batch.to_pylist():
            frame = pickle.loads(row["quarantine"])
            frame = withhold_erased(frame, row["start"] + frame.index.to_numpy(np.int64), erased)
            name = f"quarantine-{row['source_position']:05d}-{row['file']:09d}.csv"
            target = Path(directory) / name
            staged = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
            with staged.open("w", newline="", encoding="utf-8") as handle:
                write_part(frame, columns, handle)
            staged.replace(target)  # a task run again writes the same part whole
            written = {
                "source_position": row["source_position"],
                "file": row["file"],
                "part": name,
                "firsts": pickle.dumps(firsts(frame), protocol=pickle.HIGHEST_PROTOCOL),
            }
            yield pa.RecordBatch.from_pylist([written], schema=_WRITTEN)


def _parse_files(
    batches: Iterator[pa.RecordBatch], shared: Any, parse: Parse
) -> Iterator[pa.RecordBatch]:
    """A task: read and parse each file it is given (``shared``: the broadcast ``_Files``).
    A file that cannot be read is one row with its ``error``."""
    files: _Files = shared.value
    schema = parsed_schema(files.text_columns)
    for batch in batches:
        for task in batch.column("id").to_pylist():
            position, index, path = files.tasks[task]
            source = files.sources[position]
            content = None
            try:
                if source.kind == "postgresql":
                    frame = read_slice(
                        source, files.dsns[position], path, index, files.snapshots[position]
                    )
                    content = database_digest(frame, source)
                else:
                    assert path is not None
                    frame = read_file(source, Path(path), index, files.as_text[position])
                parsed, encoded, quarantine = parse(
                    SourceRows(source, files.files[position], frame), position
                )
            except SourceError as error:
                yield pa.RecordBatch.from_pylist([{"error": str(error)}], schema=schema)
                continue
            except OSError as error:  # e.g. not on this executor's host: not shared storage
                message = (
                    f"source {source.name!r}, file {path}: cannot read it on executor host "
                    f"{socket.gethostname()} ({error.strerror or error})"
                )
                yield pa.RecordBatch.from_pylist([{"error": message}], schema=schema)
                continue
            del frame
            yield from parsed_batches(
                parsed, encoded, quarantine, position, index, files.text_columns, content
            )


def parsed_batches(
    parsed: Columns,
    encoded: dict[str, pa.DictionaryArray],
    quarantine: pd.DataFrame,
    position: int,
    file: int,
    text_columns: list[str],
    content: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """One parsed file (or a source parsed by the driver: ``file`` 0) as ``parsed_schema``'s
    rows, BATCH_ROWS at a time (a text column's strings are made per batch, never a whole
    file's at once), then, where it has any, one row holding its quarantined rows and
    ``content`` (a database slice's count and hash sum)."""
    schema = parsed_schema(text_columns)
    stamps = parsed["timestamp"].astype("datetime64[us]", copy=False)
    count = len(stamps)
    for start in range(0, count, BATCH_ROWS):
        rows = slice(start, min(start + BATCH_ROWS, count))
        size = rows.stop - start
        columns: dict[str, pa.Array] = {
            "source_position": pa.array(parsed["source_position"][rows].astype(np.int32)),
            "file": pa.array(np.full(size, file, dtype=np.int32)),
            "row_in_file": pa.array(np.arange(start, rows.stop, dtype=np.int64)),
            "trust": pa.array(parsed["trust"][rows]),
            "quantity": pa.array(parsed["quantity"][rows]),
            "unit_price": pa.array(parsed["unit_price"][rows]),
            "stamp": pa.array(stamps[rows].view(np.int64), mask=np.isnat(stamps[rows])),
            "is_cancellation": pa.array(parsed["is_cancellation"][rows]),
            "outcome": pa.array(parsed["outcome"][rows]),
            "reason": pa.array(parsed["reason"][rows]),
            "invalid_email": pa.array(parsed["invalid_email"][rows]),
            "invalid_phone": pa.array(parsed["invalid_phone"][rows]),
        }
        for column in text_columns:
            text = encoded[column]
            columns[column] = pc.take(text.dictionary, text.indices[rows]).cast(pa.string())
        columns["error"] = pa.nulls(size, pa.string())
        columns["quarantine"] = pa.nulls(size, pa.binary())
        columns["content"] = pa.nulls(size, pa.string())
        yield pa.RecordBatch.from_pydict(columns, schema=schema)
    if not len(quarantine) and content is None:
        return
    side = {
        "source_position": position,
        "file": file,
        "quarantine": (
            pickle.dumps(quarantine, protocol=pickle.HIGHEST_PROTOCOL) if len(quarantine) else None
        ),
        "content": None if content is None else f"{content[0]} {content[1]}",
    }
    yield pa.RecordBatch.from_pylist([side], schema=schema)


def _coded(
    sql: SparkEngine,
    parsed: DataFrame,
    quarantine: DataFrame,
    text_columns: list[str],
    identifier_columns: list[str],
    event_logs: list[int],
) -> SparkRows:
    """``parsed`` numbered in source order, its text as codes into sorted vocabularies;
    ``quarantine`` (the files' quarantine rows) with each file's first row id."""
    from pyspark.sql import functions as F

    session = sql.session

    # Row numbers: each (source, file)'s rows after those of the ones before it.
    offsets = _starts(session, parsed, ["source_position", "file"])
    numbered = parsed.join(F.broadcast(offsets), on=["source_position", "file"]).withColumn(
        "row_id", F.col("start") + F.col("row_in_file")
    )
    # Persisted, as the rows are below, before what they come from goes.
    quarantine = sql.hold(
        quarantine.join(F.broadcast(offsets), on=["source_position", "file"]).select(
            "source_position", "file", "quarantine", "start"
        )
    )
    quarantine.count()
    codes, sizes = vocabulary_codes(sql, parsed, text_columns)
    for number, column in enumerate(text_columns):
        of_column = codes.where(F.col("column") == number).select(
            F.col("value").alias(column), F.col("code").alias(f"{column}_code")
        )
        if sizes.get(number, 0) <= BROADCAST_BYTES:
            of_column = F.broadcast(of_column)
        numbered = numbered.join(of_column, on=column, how="left")

    def code(column: str) -> Any:
        coded = F.col(f"{column}_code").cast("int")
        if column in _NULL_WHEN_BLANK:
            coded = F.when(F.col(column) == "", None).otherwise(coded)
        return coded.alias(column)

    # Only codes go on: the strings are in the vocabularies.
    numbered = sql.hold(
        numbered.select(
            "row_id",
            *(name for name, _ in _TYPED if name not in ("file", "row_in_file")),
            *(code(column) for column in text_columns),
        )
    )
    on_executors = [text_columns.index(column) for column in ["order", *identifier_columns]]
    collected = (
        codes.where(~F.col("column").isin(on_executors))
        .orderBy("column", "code")
        .select("column", "value")
        .toArrow()
    )
    numbers = collected.column("column").to_numpy()
    vocabulary = {
        column: collected.column("value").filter(pa.array(numbers == number)).combine_chunks()
        for number, column in enumerate(text_columns)
        if number not in on_executors
    }
    names = F.array(*(F.lit(column) for column in text_columns))
    identifiers = sql.hold(
        codes.where(F.col("column").isin(on_executors[1:])).select(
            F.element_at(names, F.col("column") + 1).alias("column"),
            F.col("code").cast("int").alias("code"),
            "value",
        )
    )
    numbered.count()  # persisted, as the identifiers are, so that the codes can go
    identifiers.count()
    sql.release(codes)

    rows = numbered.select(
        "row_id",
        "source_position",
        "outcome",
        "reason",
        F.col("source_position").isin(event_logs).alias("event_log"),
        "is_cancellation",
        F.col("order").alias("order_code"),
        F.col("item_id").alias("item_code"),
        "quantity",
        "stamp",
        F.col("raw_customer_id").alias("raw_id"),
        "id_alias",
        "email_alias",
        "phone_alias",
        "invalid_email",
        "invalid_phone",
        F.lit(False).alias("erased"),
    )
    # The merged rows' order is a code as on one host: a blank one is the first value, 0.
    values = numbered.select(
        "row_id",
        *(
            F.coalesce(F.col(column), F.lit(0)).alias(column) if column == "order" else column
            for column in VALUE_COLUMNS
        ),
    )
    return SparkRows(rows, values, vocabulary, identifiers, quarantine, {})


def vocabulary_codes(
    sql: SparkEngine, parsed: DataFrame, text_columns: list[str]
) -> tuple[DataFrame, dict[int, int]]:
    """(column, value, code): each text column's distinct values, ``code`` the value's place
    among them in ascending (byte) order, as ``training.merge`` codes them on one host; and
    the bytes of each column's (by number) values. Sorted by Spark across partitions; each
    partition's rows counted to number them."""
    from pyspark.sql import functions as F

    session = sql.session
    distinct = reduce(
        lambda a, b: a.unionByName(b),
        [
            parsed.select(F.lit(number).alias("column"), F.col(column).alias("value"))
            for number, column in enumerate(text_columns)
        ],
    ).distinct()
    ordered = sql.hold(
        distinct.orderBy("column", "value")
        .withColumn("part", F.spark_partition_id())
        .withColumn("at", F.monotonically_increasing_id())
    )
    starts = _starts(session, ordered, ["part"])
    # monotonically_increasing_id: the partition id in the upper 31 bits, the row's place in
    # the partition below.
    indexed = ordered.join(F.broadcast(starts), on="part").select(
        "column",
        "value",
        (F.col("start") + F.col("at") - F.shiftleft(F.col("part").cast("long"), 33)).alias("at"),
    )
    firsts = indexed.groupBy("column").agg(
        F.min("at").alias("first"), F.sum(F.octet_length("value")).alias("size")
    )
    with quiet():
        counted = firsts.toArrow()
    columns, counts = counted.column("column").to_pylist(), counted.column("size").to_pylist()
    sizes = dict(zip(columns, counts, strict=True))
    with quiet():
        firsts = session.createDataFrame(counted.select(["column", "first"]))
    codes = sql.hold(
        indexed.join(F.broadcast(firsts), on="column").select(
            "column", "value", (F.col("at") - F.col("first")).alias("code")
        )
    )
    codes.count()
    sql.release(ordered)
    return codes, sizes


def _starts(session: SparkSession, frame: DataFrame, keys: list[str]) -> DataFrame:
    """(``keys``, start): how many of ``frame``'s rows come before each group of ``keys``, the
    groups in ascending order; counted on the driver (a row per group)."""
    counted = frame.groupBy(*keys).count().orderBy(*keys).toArrow()
    sizes = counted.column("count").to_numpy()
    starts = pa.array((np.cumsum(sizes) - sizes).astype(np.int64))
    with quiet():
        return session.createDataFrame(counted.select(keys).append_column("start", starts))
