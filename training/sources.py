"""Source readers: each turns a declared source into rows of canonical fields, as raw strings.

Parsing and validation happen in ``training.merge`` so every source kind is judged by the same
rules and every row is accounted for in one place.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from training.config import SourceConfig
from training.errors import SourceError


@dataclass(frozen=True)
class SourceRows:
    """All rows of one source. ``frame`` has one column per mapped field (strings, "" when
    empty), plus ``file`` (index into ``files``) and ``record`` (1-based record number in it)."""

    source: SourceConfig
    files: list[Path]
    frame: pd.DataFrame


def read_source(source: SourceConfig) -> SourceRows:
    files = source.files()
    if not files:
        raise SourceError(
            f"source {source.name!r}: no file matches {source.path!r} "
            f"(relative to {source.base_dir})"
        )
    if source.kind != "csv":
        raise SourceError(f"source {source.name!r}: kind {source.kind!r} has no reader")
    frames = [_read_csv(source, index, path) for index, path in enumerate(files)]
    return SourceRows(source=source, files=files, frame=pd.concat(frames, ignore_index=True))


def _read_csv(source: SourceConfig, file_index: int, path: Path) -> pd.DataFrame:
    where = f"source {source.name!r}, file {path}"
    header = _read_header(source, path, where)
    missing = [
        f"{field} -> {column!r}" for field, column in source.columns.items() if column not in header
    ]
    if missing:
        raise SourceError(f"{where}: missing column(s) {', '.join(missing)}; found {header}")
    by_column = {column: field for field, column in source.columns.items()}
    options: dict[str, Any] = {
        "sep": source.delimiter,
        "usecols": list(by_column),
        "dtype": str,
        "keep_default_na": False,
        "encoding": source.encoding,
    }
    try:
        # pyarrow's reader is several times faster; on anything it rejects, the C reader
        # below either copes or produces the precise error (with a line number).
        raw: pd.DataFrame = pd.read_csv(path, engine="pyarrow", **options)
    except (pa.ArrowException, pd.errors.ParserError, ValueError, UnicodeDecodeError):
        try:
            raw = pd.read_csv(path, na_filter=False, encoding_errors="strict", **options)
        except UnicodeDecodeError as error:
            raise SourceError(f"{where}: not valid {source.encoding} ({error})") from error
        except (pd.errors.ParserError, ValueError) as error:
            raise SourceError(f"{where}: cannot parse as CSV ({error})") from error
    frame: pd.DataFrame = raw.rename(columns=by_column)
    frame["file"] = file_index
    frame["record"] = range(1, len(frame) + 1)
    return frame


def _read_header(source: SourceConfig, path: Path, where: str) -> list[str]:
    try:
        header = pd.read_csv(path, sep=source.delimiter, nrows=0, encoding=source.encoding)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError, csv.Error) as error:
        raise SourceError(f"{where}: cannot read header ({error})") from error
    return [str(column) for column in header.columns]
