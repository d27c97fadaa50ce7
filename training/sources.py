"""Source readers: each turns a declared source into rows of canonical fields, as text.

Every kind (CSV, JSONL, Parquet, PostgreSQL) yields the same shape, so ``training.merge``
judges all of them by one set of parsing rules and accounts for every row in one place. The
one exception is a Parquet column that is already a number or a timestamp where the merge
wants one (``TYPED_FIELDS``): it stays typed, since writing twenty million timestamps out as
text only to parse them back costs minutes and gigabytes.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import difflib
import io
import json
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from isal import igzip
from numpy.typing import NDArray
from pandas.api.types import union_categoricals

from recsvc.logrecords import KIND, RECEIVED_AT, SESSION
from recsvc.schemas import PURCHASE_KINDS
from training.config import EVENTS_COLUMNS, SourceConfig
from training.errors import SourceError

# The event log's columns read beside the mapped ones (EVENTS_COLUMNS).
EVENT_EXTRA = (KIND, SESSION)
# Text read straight into a dictionary: each distinct value is held once.
TEXT_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
ARROW_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' "str", held by Arrow
# A database table is read in slices of this many blocks (of 8 kB by default: about 128 MB),
# each a range of row locations (ctid) that PostgreSQL 14 and later scans alone; on Spark a
# task per slice (``training.spark_sources``).
SLICE_BLOCKS = 16_384
# The fields a typed Parquet column gives the merge as they are: numbers as float64 (NaN where
# null), timestamps as naive UTC datetime64[us] (NaT where null; a column without a zone is
# wall time in the source's time zone, as the same value written as text would be).
TYPED_FIELDS = {"quantity": "number", "unit_price": "number", "timestamp": "timestamp"}


@dataclass(frozen=True)
class SourceRows:
    """All rows of one source. ``frame`` has one column per mapped field, plus ``file``
    (index into ``files``) and ``record`` (1-based record number in it; for a malformed CSV
    row, its line number). A CSV source may add ``malformed``: what is wrong with a row that
    could not be split into the header's fields ("" for good rows). A database source's
    pseudo-files are its slices (``DatabaseSlices``).

    Text columns (the fields and ``malformed``) are categoricals of strings, "" where empty:
    a column holds each distinct value once, and the merge works on its codes. A Parquet
    source's typed numbers and timestamps are float64 and datetime64 (``TYPED_FIELDS``)."""

    source: SourceConfig
    files: list[str]
    frame: pd.DataFrame
    # An event log's records of the other kinds (views, carts, clicks, logins...): the same
    # columns as ``frame`` plus ``kind``, for ``training.interactions``; None for other sources.
    # Both of an event log's frames have ``session`` ("" where a record has none).
    interactions: pd.DataFrame | None = None


@dataclass(frozen=True)
class SourceFiles:
    """A CSV, JSONL or Parquet source not read yet (Spark's executors read it, a task per
    file: ``training.spark_sources``), with its files listed once: the ones fingerprinted are
    the ones read."""

    source: SourceConfig
    files: list[Path]

    @staticmethod
    def of(source: SourceConfig) -> SourceFiles:
        files = source.files()
        if not files and source.kind != "events":  # an event log with no file: none logged
            raise SourceError(
                f"source {source.name!r}: no file matches {source.path!r} "
                f"(relative to {source.base_dir})"
            )
        return SourceFiles(source, files)


@dataclass(frozen=True)
class DatabaseSlices:
    """A PostgreSQL source not read yet, as the slices that read it in turn (on Spark, a
    task each): a table in ranges of SLICE_BLOCKS blocks, in its physical order; a query or
    a view whole. ``labels`` name each slice (the quarantine file's ``file``), ``clauses``
    select its rows (None: all). ``dsn`` is resolved once, by the trainer (an executor has
    not its environment).

    The slices are read in one snapshot of the database, as one query would be: a row that
    an update moves to another block while the slices are read would otherwise be read
    twice, or not at all. One host reads them in one transaction; Spark's tasks in the
    snapshot the trainer exports (``export_snapshot``) and holds until the merge ends."""

    source: SourceConfig
    labels: list[str]
    clauses: list[str | None]
    dsn: str = dataclasses.field(repr=False)  # may hold a password

    @staticmethod
    def of(source: SourceConfig) -> DatabaseSlices:
        """Checks that the relation has the mapped columns, and sizes a table."""
        import psycopg
        from psycopg import sql

        where = f"source {source.name!r} ({_database_label(source)})"
        probe = sql.SQL("SELECT * FROM {} LIMIT 0").format(_relation(source))
        dsn = database_dsn(source)
        try:
            with psycopg.connect(dsn, connect_timeout=10) as connection:
                with connection.cursor() as cursor:
                    cursor.execute(probe)
                    found = [column.name for column in cursor.description or []]
                    _check_columns(source, found, where)
                    blocks = _table_blocks(source, cursor)
        except psycopg.Error as error:
            raise SourceError(f"{where}: {str(error).strip()}") from error
        label = _database_label(source)
        if blocks is None:
            return DatabaseSlices(source, [label], [None], dsn)
        starts = range(0, max(blocks, 1), SLICE_BLOCKS)
        if len(starts) == 1:  # a range scan all the same: a plain one may start mid-table
            return DatabaseSlices(source, [label], ["ctid >= '(0,0)'::tid"], dsn)
        labels: list[str] = []
        clauses: list[str | None] = []
        for number, start in enumerate(starts):
            last = number == len(starts) - 1  # open: rows added since the table was sized
            clause = f"ctid >= '({start},0)'::tid"
            if not last:
                clause += f" AND ctid < '({start + SLICE_BLOCKS},0)'::tid"
            labels.append(
                f"{label}, blocks from {start}"
                + ("" if last else f" to {start + SLICE_BLOCKS - 1}")
            )
            clauses.append(clause)
        return DatabaseSlices(source, labels, clauses, dsn)

    def read(self) -> SourceRows:
        """Every slice, one after another, each row numbered in its slice. One frame made of
        all their text: a frame per slice, joined, took a fifth longer at 2 M rows (their
        text columns' categories merged)."""
        slices = _database_rows(self.source, self.dsn, self.clauses)
        sizes = [len(rows) for rows in slices]
        frame = _fields(pd.concat(slices, ignore_index=True), self.source)
        frame["record"] = np.concatenate([np.arange(1, size + 1) for size in sizes])
        frame["file"] = np.repeat(np.arange(len(sizes)), sizes)
        return SourceRows(self.source, self.labels, frame)


# A source as the merge is given it: read, or to be read there (on Spark, by the executors).
SourceInput = SourceRows | SourceFiles | DatabaseSlices


def read_source(source: SourceConfig, files: list[Path] | None = None) -> SourceRows:
    """Every row of ``source`` (of ``files``, where they are listed already)."""
    if source.kind == "postgresql":
        return DatabaseSlices.of(source).read()
    if source.kind == "events":
        return _read_event_log(source, source.files() if files is None else files)
    listed = SourceFiles.of(source).files if files is None else files
    frames = [read_file(source, path, index) for index, path in enumerate(listed)]
    return SourceRows(source, [str(p) for p in listed], _concat(frames))


def read_file(
    source: SourceConfig, path: Path, index: int, as_text: Collection[str] = ()
) -> pd.DataFrame:
    """One file of a CSV, JSONL or Parquet source, as ``SourceRows.frame``'s rows of it
    (``index``: the file's position among the source's files). ``as_text``: the fields read
    as text even where the file types them (``mixed_fields``)."""
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    frame = readers[source.kind](source, path)
    for field in as_text:
        frame[field] = typed_as_text(frame[field])
    frame["file"] = index
    return frame if "record" in frame else _numbered(frame)


def mixed_fields(source: SourceConfig, paths: list[Path]) -> set[str]:
    """The fields of a Parquet source typed (``TYPED_FIELDS``) in some of its files that have
    rows and text in others, from the files' schemas: ``read_source`` reads these as text in
    every file (``_concat``), so a file read on its own must too."""
    if source.kind != "parquet":
        return set()
    typed: dict[str, set[bool]] = {}
    for path in paths:
        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as error:
            raise SourceError(
                f"source {source.name!r}, file {path}: cannot read as Parquet ({error})"
            ) from error
        if not metadata.num_rows:
            continue
        schema = metadata.schema.to_arrow_schema()
        for field, column in source.columns.items():
            if field in TYPED_FIELDS and column in schema.names:
                kind = TYPED_FIELDS[field]
                typed.setdefault(field, set()).add(_is_typed(schema.field(column).type, kind))
    return {field for field, kinds in typed.items() if len(kinds) > 1}


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames one after the other; text columns stay categorical. A text column that only
    some frames have (``malformed``) is "" in the others."""
    frames = with_rows(frames)
    if len(frames) == 1:
        return frames[0]
    columns: dict[str, Any] = {}
    for column in dict.fromkeys(name for frame in frames for name in frame.columns):
        parts = [frame[column] if column in frame else _blank_text(len(frame)) for frame in frames]
        if len({part.dtype.kind for part in parts}) > 1:  # typed in some files, text in others
            parts = [typed_as_text(part) for part in parts]
        if isinstance(parts[0].dtype, pd.CategoricalDtype):
            columns[column] = union_categoricals(parts)
        else:
            columns[column] = np.concatenate([part.to_numpy() for part in parts])
    return pd.DataFrame(columns)


def with_rows(frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """The frames that have rows (or the first, where none has): a frame without rows (a file
    with only its header) adds nothing to its source, not even its columns; a blank column of
    no rows has untyped categories, which pandas refuses to join with strings."""
    return [frame for frame in frames if len(frame)] or frames[:1]


def _numbered(frame: pd.DataFrame) -> pd.DataFrame:
    frame["record"] = range(1, len(frame) + 1)
    return frame


def _check_columns(source: SourceConfig, found: list[str], where: str) -> None:
    for column in source.columns.values():
        positions = [str(i) for i, name in enumerate(found, start=1) if name == column]
        if len(positions) > 1:
            raise SourceError(
                f"{where}: column {column!r} appears {len(positions)} times in the header "
                f"(columns {', '.join(positions)}); rename all but one"
            )
    missing = [
        f"{field} -> {column!r}{_close_match(column, found)}"
        for field, column in source.columns.items()
        if column not in found
    ]
    if missing:
        raise SourceError(
            f"{where}: missing column(s) {', '.join(missing)}; the header has {len(found)} "
            "column(s)"
        )


def _close_match(column: str, found: list[str]) -> str:
    """A header name that looks like a misspelt ``column``, as a hint. The header itself is
    never quoted: a file without one has a customer's row (an email, a phone) in its place."""
    close = difflib.get_close_matches(
        column.casefold(), [name.casefold() for name in found], 1, 0.8
    )
    if not close:
        return ""
    name = next(name for name in found if name.casefold() == close[0])
    return f" (is it {name!r}?)"


def _read_csv(source: SourceConfig, path: Path) -> pd.DataFrame:
    """The mapped columns as text. A row with too many or too few fields is kept as a
    ``malformed`` row (its line number and field count), for the merge to quarantine."""
    where = f"source {source.name!r}, file {path}"
    if path.stat().st_size == 0:
        raise SourceError(f"{where}: the file is empty (not even a header line)")
    head = _first_line(source, path, where)
    try:
        # header=None: the names as written (pandas would rename a repeated one "x.1").
        header = pd.read_csv(
            io.BytesIO(head),
            sep=source.delimiter,
            header=None,
            nrows=1,
            dtype=str,
            keep_default_na=False,
            encoding=source.encoding,
        )
    except (
        OSError,
        EOFError,
        UnicodeDecodeError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        ValueError,
        csv.Error,
    ) as error:
        raise SourceError(f"{where}: cannot read header ({error})") from error
    names = [str(name).lstrip("\ufeff") for name in header.iloc[0]] if len(header) else []
    _check_columns(source, names, where)
    columns = list(source.columns.values())
    malformed: list[pa_csv.InvalidRow] = []

    def keep_malformed(row: pa_csv.InvalidRow) -> str:
        malformed.append(row)
        return "skip"

    try:
        # pyarrow's reader is several times faster than pandas's; on anything else it rejects
        # (bad encoding, broken quoting), pandas's C reader produces the precise error.
        with _opened(source, path, where) as csv_input:
            table = pa_csv.read_csv(
                csv_input,
                read_options=pa_csv.ReadOptions(
                    encoding=source.encoding, block_size=source.max_line_bytes
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=source.delimiter,
                    newlines_in_values=True,
                    invalid_row_handler=keep_malformed,
                ),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=columns,
                    column_types={column: TEXT_DICTIONARY for column in columns},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        raw = _categoricals(table)
    except (OSError, EOFError) as error:  # unreadable; a corrupt or truncated compressed file
        raise SourceError(f"{where}: cannot read ({error})") from error
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as error:
        if _too_long(error):
            raise _line_too_long(source, where) from None
        malformed = []
        try:
            with _opened(source, path, where) as csv_input:
                raw = pd.read_csv(
                    csv_input,
                    sep=source.delimiter,
                    usecols=columns,
                    dtype=str,
                    keep_default_na=False,
                    na_filter=False,
                    encoding=source.encoding,
                    encoding_errors="strict",
                )
        except UnicodeDecodeError as error:
            raise SourceError(f"{where}: not valid {source.encoding} ({error})") from error
        except (pd.errors.ParserError, ValueError) as error:
            raise SourceError(f"{where}: cannot parse as CSV ({error})") from error
    frame = _numbered(_fields(raw, source))
    if not malformed:
        return frame
    numbers = _line_numbers(path, source.encoding, [row.text for row in malformed])
    bad = pd.DataFrame({field: _blank_text(len(malformed)) for field in source.columns})
    bad["record"] = numbers
    bad["malformed"] = _categorical_text(
        pd.Series(
            [
                # Not its text: a line whose fields cannot be told apart may hold a
                # customer's email or phone that no erasure could then find.
                f"line {number}: {row.actual_columns} fields, not {row.expected_columns}"
                for number, row in zip(numbers, malformed, strict=True)
            ]
        )
    )
    frame["malformed"] = _blank_text(len(frame))
    return _concat([frame, bad])


def _categoricals(table: pa.Table) -> pd.DataFrame:
    """Dictionary-typed columns as pandas categoricals. One concatenation per column (which
    unifies the chunks' dictionaries) costs about two thirds of Table.to_pandas."""
    columns: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        # An Arrow dictionary holds distinct values, so pandas need not check: its check
        # hashes every category as a Python string, which for ten million order ids costs
        # a gigabyte that the categories then keep (pandas' fast path skips it; tests cover
        # it on every supported pandas). The categories stay Arrow strings.
        categories = pd.Index(pd.array(values.dictionary, dtype=ARROW_TEXT))
        columns[name] = pd.Categorical.from_codes(
            values.indices.to_numpy(zero_copy_only=False),
            dtype=pd.CategoricalDtype._from_fastpath(categories, False),  # type: ignore[attr-defined]
            validate=False,
        )
    return pd.DataFrame(columns)


@contextmanager
def _opened(source: SourceConfig, path: Path, where: str) -> Iterator[Path | io.RawIOBase]:
    """What the readers read: a compressed file decompressed as a stream that stops at the
    source's ``max_decompressed_bytes`` (gzip by ISA-L, about twice as fast as the zlib in
    pyarrow, and decompression is most of the time a compressed export takes to read);
    anything else the path itself."""
    suffix = path.suffix.lower()
    if suffix not in (".gz", ".bz2"):
        yield path
        return
    if suffix == ".gz":
        stream: io.BufferedIOBase = igzip.open(path, "rb")  # type: ignore[no-untyped-call]
    else:
        stream = bz2.open(path, "rb")
    with stream, _Bounded(stream, source.max_decompressed_bytes, where) as bounded:
        yield bounded


class _Bounded(io.RawIOBase):
    """A stream that fails, naming the file and the limit, past ``limit`` bytes: a small
    compressed file can hold far more than memory (a "zip bomb")."""

    def __init__(self, stream: io.BufferedIOBase, limit: int, where: str) -> None:
        self._stream = stream
        self._left = limit
        self._limit = limit
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._stream.readinto(buffer)
        self._left -= count
        if self._left < 0:
            raise SourceError(
                f"{self._where}: decompresses to more than {self._limit:,} bytes "
                "(max_decompressed_bytes)"
            )
        return count


def _first_line(source: SourceConfig, path: Path, where: str) -> bytes:
    """The file's first line (decompressed), read no further than ``max_line_bytes``."""
    try:
        with _opened(source, path, where) as opened:
            with opened if not isinstance(opened, Path) else opened.open("rb") as handle:
                head = handle.read(source.max_line_bytes + 1)
    except (OSError, EOFError) as error:  # unreadable; a corrupt or truncated compressed file
        raise SourceError(f"{where}: cannot read ({error})") from error
    end = head.find(b"\n")
    if end < 0 and len(head) > source.max_line_bytes:
        raise _line_too_long(source, where, "line 1")
    return head if end < 0 else head[: end + 1]


def _too_long(error: BaseException) -> bool:
    """pyarrow's error for a row or record that does not fit in one block."""
    return "straddl" in str(error)


def _line_too_long(source: SourceConfig, where: str, which: str = "a line") -> SourceError:
    return SourceError(
        f"{where}: {which} is longer than {source.max_line_bytes:,} bytes (max_line_bytes; "
        "a file without line breaks, or a wrong delimiter or quote?)"
    )


def _line_numbers(path: Path, encoding: str, texts: list[str]) -> list[int]:
    """The line on which each of ``texts`` (rows, in file order) starts; pyarrow does not
    track lines once values may hold newlines. 0 where a row cannot be found."""
    found = [0] * len(texts)
    first_lines = [text.split("\n", 1)[0].rstrip("\r") for text in texts]
    position = 0
    with path.open(encoding=encoding, errors="replace", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if position < len(texts) and line.rstrip("\r\n") == first_lines[position]:
                found[position] = number
                position += 1
    return found


def _read_jsonl(source: SourceConfig, path: Path) -> pd.DataFrame:
    table = _jsonl_table(source, path)
    if table is None:
        return _jsonl_by_line(source, path)
    return _fields(_arrow_text(table, list(source.columns.values()), str(path)), source)


def _read_event_log(source: SourceConfig, files: list[Path]) -> SourceRows:
    """The service's event log: purchases and returns in ``frame`` (for the merge), every
    other kind in ``interactions``. No file yet (nothing logged) is no rows."""
    purchases, interactions = [], []
    for index, path in enumerate(files or [None]):
        frame = _no_events(index) if path is None else read_event_file(source, path, index)
        bought, others = split_event_records(frame)
        purchases.append(bought)
        interactions.append(others)
    return SourceRows(
        source, [str(p) for p in files], _concat(purchases), interactions=_concat(interactions)
    )


def read_event_file(source: SourceConfig, path: Path, index: int) -> pd.DataFrame:
    """One file of the event log (``index``: its position among the log's files), every
    record of it, as ``split_event_records`` takes them."""
    frame = _read_events(source, path)
    frame["file"] = index
    return frame


def split_event_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An event log's records as its purchases and returns (``SourceRows.frame``, without
    ``kind``) and its other records (``SourceRows.interactions``)."""
    bought = frame[KIND].isin(["", *PURCHASE_KINDS]).to_numpy()
    return _subset(frame.drop(columns=[KIND]), bought), _subset(frame, ~bought)


def purchases_received_through(purchases: pd.DataFrame) -> float | None:
    """Receipt time of the last of an event log's purchases and returns (None: none)."""
    return None if purchases.empty else float(purchases[RECEIVED_AT].max())


def _subset(frame: pd.DataFrame, rows: NDArray[np.bool_]) -> pd.DataFrame:
    """The rows picked, each text column holding only the values they use."""
    picked = frame.loc[rows].reset_index(drop=True)
    for column in picked.columns:
        if isinstance(picked[column].dtype, pd.CategoricalDtype):
            picked[column] = picked[column].cat.remove_unused_categories()
    return picked


def _read_events(source: SourceConfig, path: Path) -> pd.DataFrame:
    """One file of the event log, every record numbered in file order: the fixed columns,
    ``kind`` ("" where a line written before kinds existed has none: a purchase),
    ``session`` ("" where none) and ``received_at`` (seconds). An empty file (every line of
    it erased, or none written yet) is no rows."""
    if path.stat().st_size == 0:
        return _no_events()
    table = _jsonl_table(source, path)
    if table is None:
        return _numbered(_jsonl_by_line(source, path, received=True))
    columns = list(source.columns.values())
    extra = [column for column in EVENT_EXTRA if column in table.column_names]
    text = _arrow_text(table, columns + extra, str(path))
    frame = _fields(text, source)
    for column in EVENT_EXTRA:
        frame[column] = text[column] if column in extra else _blank_text(len(frame))
    frame[RECEIVED_AT] = (
        pc.fill_null(table.column(RECEIVED_AT).cast(pa.float64()), 0.0).to_numpy()
        if RECEIVED_AT in table.column_names
        else np.zeros(len(frame))
    )
    return _numbered(frame)


def _no_events(index: int | None = None) -> pd.DataFrame:
    """An event log with no record: no rows, the columns a read log has (with ``file``,
    where ``index`` is given)."""
    frame = pd.DataFrame({field: _blank_text(0) for field in (*EVENTS_COLUMNS, *EVENT_EXTRA)})
    frame[RECEIVED_AT] = np.zeros(0)
    frame = _numbered(frame)
    if index is not None:
        frame["file"] = index
    return frame


def _jsonl_table(source: SourceConfig, path: Path) -> pa.Table | None:
    """The file as typed columns; None where a column's type changes from row to row (10
    here, "abc" there), which pyarrow cannot read: ``_jsonl_by_line`` reads those."""
    where = f"source {source.name!r}, file {path}"
    try:
        with _opened(source, path, where) as stream:
            table = pa_json.read_json(
                stream, read_options=pa_json.ReadOptions(block_size=source.max_line_bytes)
            )
    except pa.ArrowInvalid as error:
        if _too_long(error):
            raise _line_too_long(source, where, "a record") from None
        return None
    except OSError as error:
        raise SourceError(f"{where}: cannot read ({error})") from error
    _check_columns(source, table.column_names, where)
    return table


def _jsonl_by_line(source: SourceConfig, path: Path, received: bool = False) -> pd.DataFrame:
    """The mapped fields of each record as text, as ``_arrow_text`` writes them; a record
    whose field holds a list or an object is kept as ``malformed``, for the merge to
    quarantine. Only files pyarrow cannot type go through this loop. ``received``: an event
    log, whose records also give ``kind``, ``session`` and ``received_at``."""
    where = f"source {source.name!r}, file {path}"
    columns = list(source.columns.values())
    extra = list(EVENT_EXTRA) if received else []
    values: dict[str, list[str]] = {column: [] for column in columns + extra}
    malformed: list[str] = []
    received_at: list[float] = []
    seen: set[str] = set()
    try:
        with _opened(source, path, where) as opened:
            with opened if not isinstance(opened, Path) else opened.open("rb") as handle:
                for number, record in _json_records(handle, source, where):
                    seen.update(record)
                    wrong = ""
                    for column in columns + extra:
                        value = record.get(column)
                        if isinstance(value, list | dict):
                            kind = "a list" if isinstance(value, list) else "an object"
                            wrong = wrong or f"line {number}: {column!r} is {kind}, not a value"
                            value = None
                        values[column].append(_json_text(value))
                    malformed.append(wrong)
                    stamp = record.get(RECEIVED_AT)
                    is_number = isinstance(stamp, int | float) and not isinstance(stamp, bool)
                    received_at.append(float(stamp) if is_number and stamp is not None else 0.0)
    except (OSError, EOFError) as error:
        raise SourceError(f"{where}: cannot read ({error})") from error
    _check_columns(source, sorted(seen), where)
    raw = pd.DataFrame(values, dtype="category")
    frame = _fields(raw, source)
    for column in extra:
        frame[column] = _categorical_text(raw[column])
    frame["malformed"] = _categorical_text(pd.Series(malformed, dtype="str"))
    if received:
        frame[RECEIVED_AT] = np.asarray(received_at)
    return frame


def _json_records(
    handle: io.RawIOBase | BinaryIO, source: SourceConfig, where: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line's object, with its line number; anything else is an error."""
    number = 0
    while line := handle.readline(source.max_line_bytes + 1):
        number += 1
        if len(line) > source.max_line_bytes:
            raise _line_too_long(source, where, f"line {number}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            detail = getattr(error, "msg", "not UTF-8")
            raise SourceError(f"{where}: line {number} is not JSON ({detail})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{where}: line {number} is not a JSON object")
        yield number, record


def _json_text(value: Any) -> str:
    """A JSON value as text, as pyarrow's cast writes it (null: "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def events_through(rows: SourceRows) -> float | None:
    """Receipt time of the last event read from an event log source."""
    if rows.source.kind != "events":
        return None
    return purchases_received_through(rows.frame)


def _read_parquet(source: SourceConfig, path: Path) -> pd.DataFrame:
    where = f"source {source.name!r}, file {path}"
    try:
        schema = pq.read_schema(path)
        _check_columns(source, schema.names, where)
        table = pq.read_table(path, columns=list(source.columns.values()))
    except (pa.ArrowException, OSError) as error:
        raise SourceError(f"{where}: cannot read as Parquet ({error})") from error
    typed = {
        column: _typed(table.column(column), TYPED_FIELDS[field], source.timezone)
        for field, column in source.columns.items()
        if field in TYPED_FIELDS
    }
    text_columns = [column for column in table.column_names if typed.get(column) is None]
    frame = _arrow_text(table.select(text_columns), text_columns, where)
    for column, values in typed.items():
        if values is not None:
            frame[column] = values
    return _fields(frame, source)


def _typed(values: pa.ChunkedArray, kind: str, timezone: str) -> pd.Series | None:
    """A Parquet column as the merge's typed value (``TYPED_FIELDS``), or None where its type
    is not that kind (it is then read as text and parsed like any other source's)."""
    if not _is_typed(values.type, kind):
        return None
    if kind == "number":
        return pd.Series(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False))
    zone = getattr(values.type, "tz", None)
    stamps = pd.Series(
        pc.cast(values, pa.timestamp("us", tz=zone)).to_numpy(zero_copy_only=False),
        dtype="datetime64[us]",
    )
    return stamps if zone is not None else wall_time_in_utc(stamps, timezone)


def _is_typed(type_: pa.DataType, kind: str) -> bool:
    """Whether a Parquet column of ``type_`` is read typed as ``kind`` (``TYPED_FIELDS``)."""
    if kind == "number":
        return bool(
            pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_)
        )
    return bool(pa.types.is_timestamp(type_) or pa.types.is_date(type_))


def wall_time_in_utc(stamps: pd.Series, timezone: str) -> pd.Series:
    """Naive wall times in ``timezone`` as naive UTC; an hour that does not exist or is
    ambiguous there (DST changes) is NaT."""
    if timezone == "UTC":
        return stamps
    local = stamps.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    utc: pd.Series = local.dt.tz_convert("UTC").dt.tz_localize(None)
    return utc


def is_text(values: pd.Series) -> bool:
    """Whether a source column is text (see ``SourceRows``) rather than typed."""
    return isinstance(values.dtype, pd.CategoricalDtype)


def typed_as_text(values: pd.Series) -> pd.Series:
    """A typed column as the text the merge parses back to the same value (timestamps in
    UTC, marked Z), for a source whose files disagree on the column's type."""
    if is_text(values):
        return values
    if values.dtype.kind == "M":
        text = values.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        text = values.map(repr)
    categorical: pd.Series = text.where(values.notna(), "").astype("category")
    return categorical


def read_slice(
    source: SourceConfig, dsn: str, clause: str | None, index: int, snapshot: str | None
) -> pd.DataFrame:
    """The rows of one of a database source's slices (``DatabaseSlices``), numbered from 1
    in it, as ``file`` ``index``, read in ``snapshot`` (``export_snapshot``; None: now)."""
    (rows,) = _database_rows(source, dsn, [clause], snapshot)
    numbered = _numbered(_fields(rows, source))
    numbered["file"] = index
    return numbered


def export_snapshot(source: SourceConfig, dsn: str) -> tuple[Any, str]:
    """A transaction kept open (the connection returned: close it when the snapshot is no
    longer read) and its snapshot's id, for other connections to read ``source``'s table
    in. It holds the table's lightest lock: a snapshot keeps the rows, not where they are,
    and a rewrite (CLUSTER, VACUUM FULL) would move them between slices."""
    import psycopg
    from psycopg import sql

    where = f"source {source.name!r} ({_database_label(source)})"
    connection = None
    try:
        connection = psycopg.connect(dsn, connect_timeout=10)
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        _read_settings(connection)
        found = connection.execute("SELECT pg_export_snapshot()").fetchone()
        connection.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(_relation(source)))
    except psycopg.Error as error:
        if connection is not None:
            connection.close()
        raise SourceError(f"{where}: {str(error).strip()}") from error
    assert found is not None
    return connection, str(found[0])


def _read_settings(connection: Any) -> None:
    """For a transaction that reads a table in slices: never ended for idling between them
    (a server's idle_in_transaction_session_timeout), and no scan that starts where another
    one is (synchronized scans), which would number the rows differently each time."""
    connection.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    connection.execute("SET LOCAL synchronize_seqscans = off")


def _database_rows(
    source: SourceConfig, dsn: str, clauses: list[str | None], snapshot: str | None = None
) -> list[pd.DataFrame]:
    """The mapped columns of the rows each of ``clauses`` selects (None: all), as Python
    strings, all read in one transaction (in ``snapshot``, where given)."""
    import psycopg
    from psycopg import sql

    where = f"source {source.name!r} ({_database_label(source)})"
    columns = list(source.columns.values())
    selected = sql.SQL(", ").join(sql.Identifier(column) for column in columns)
    frames = []
    try:
        with psycopg.connect(dsn, connect_timeout=10) as connection:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:  # the first statement of the transaction
                connection.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                )
            _read_settings(connection)
            for clause in clauses:
                query = sql.SQL("SELECT {} FROM {}").format(selected, _relation(source))
                if clause is not None:
                    query = sql.SQL("{} WHERE {}").format(query, sql.SQL(clause))
                chunks: list[pd.DataFrame] = []
                with connection.cursor(name="recsvc_source") as cursor:
                    cursor.itersize = source.chunk_rows
                    cursor.execute(query)
                    while rows := cursor.fetchmany(source.chunk_rows):
                        chunks.append(
                            pd.DataFrame(
                                {
                                    column: [_text(row[i]) for row in rows]
                                    for i, column in enumerate(columns)
                                }
                            )
                        )
                frames.append(
                    pd.concat(chunks, ignore_index=True)
                    if chunks
                    else pd.DataFrame({column: pd.Series([], dtype="str") for column in columns})
                )
    except psycopg.Error as error:
        raise SourceError(f"{where}: {str(error).strip()}") from error
    return frames


def database_digest(frame: pd.DataFrame, source: SourceConfig) -> tuple[int, int]:
    """What the data fingerprint takes of a database source's rows: their count and the sum
    of their hashes (mapped fields only), modulo 2**64. A sum, so that slices read apart add
    up to the whole."""
    hashes = pd.util.hash_pandas_object(frame[list(source.columns)], index=False).to_numpy()
    return len(frame), int(hashes.sum(dtype=np.uint64))


def database_content(count: int, total: int) -> str:
    """``database_digest``'s figures as the data fingerprint's text."""
    return f"{count} rows, hash sum {total:016x}"


def _relation(source: SourceConfig) -> Any:
    from psycopg import sql

    if source.table is not None:
        return sql.Identifier(*source.table.split("."))
    return sql.SQL("({}) AS source").format(sql.SQL(source.query))  # type: ignore[arg-type]


def _table_blocks(source: SourceConfig, cursor: Any) -> int | None:
    """A plain table's size in blocks, where PostgreSQL (14 and later) scans a block range
    alone; None for a query, a view or an older server."""

    if source.table is None or cursor.connection.info.server_version < 140000:
        return None
    quoted = _relation(source).as_string(cursor)  # the relation read, quoted as it is read
    cursor.execute(
        "SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::bigint "
        "FROM pg_class AS c WHERE c.oid = to_regclass(%s)",
        (quoted,),
    )
    found = cursor.fetchone()
    if found is None or found[0] != "r":
        return None
    return int(found[1])


def database_dsn(source: SourceConfig) -> str:
    """The source's connection string, checked: libpq's message for one it cannot parse
    quotes the part it stopped at, which may be the password, so it is not passed on."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if source.dsn is not None:
        value, named = source.dsn, "dsn"
    else:
        assert source.dsn_env is not None  # the config requires one of the two
        value, named = os.environ.get(source.dsn_env, ""), f"environment variable {source.dsn_env}"
        if not value:
            raise SourceError(f"source {source.name!r}: {named} is unset")
    try:
        conninfo_to_dict(value)
    except ProgrammingError:
        raise SourceError(
            f"source {source.name!r}: {named} is not a libpq connection string (key=value "
            "pairs, or a postgresql:// URI with spaces percent-encoded)"
        ) from None
    return value


def _database_label(source: SourceConfig) -> str:
    return f"table {source.table}" if source.table else "query"


def _fields(raw: pd.DataFrame, source: SourceConfig) -> pd.DataFrame:
    """Columns renamed to canonical fields, as categorical text with "" for missing values
    (a typed number or timestamp of ``TYPED_FIELDS`` as it is)."""
    by_column = {column: field for field, column in source.columns.items()}
    return pd.DataFrame(
        {
            field: raw[column]
            if field in TYPED_FIELDS and raw[column].dtype.kind in "fM"
            else _categorical_text(raw[column])
            for column, field in by_column.items()
        }
    )


def _blank_text(count: int) -> pd.Series:
    return pd.Series("", index=range(count), dtype="category")


def _categorical_text(values: pd.Series) -> pd.Series:
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("str").where(values.notna(), "").astype("category")
    elif values.isna().any():
        if "" not in values.cat.categories:
            values = values.cat.add_categories([""])
        values = values.fillna("")
    return values


def _arrow_text(table: pa.Table, columns: list[str], where: str) -> pd.DataFrame:
    """Typed Arrow columns (numbers, timestamps, strings) as text, "" for nulls."""
    text: dict[str, Any] = {}
    for column in columns:
        values = table.column(column)
        try:
            as_text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
        except pa.ArrowNotImplementedError:
            raise SourceError(
                f"{where}: column {column!r} of type {values.type} is not "
                "a number, text or timestamp"
            ) from None
        text[column] = pc.fill_null(as_text, "").dictionary_encode()
    return _categoricals(pa.table(text))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return str(value)
