"""The rows training set aside (the bundle's quarantine file), a page at a time.

A page starts at a byte offset of the file and says where the next one starts, so a page
costs the rows it reads, however long the file. Personal values are masked unless the
viewer is an admin: email and phone columns as the dashboard masks them everywhere, and the
raw line of a malformed row (``detail``) hidden whole, since it may hold either.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from recsvc.errors import InvalidParameter
from recsvc.identity import EMAIL, PHONE, mask

HIDDEN = "(hidden: may hold personal data)"
MASKED_COLUMNS = (EMAIL, PHONE)
HIDDEN_COLUMNS = ("detail",)
MAX_SCANNED = 20_000  # rows read for one page when a source filter skips most of them


@dataclass(frozen=True)
class QuarantinePage:
    columns: list[str]
    rows: list[list[str]]
    next_after: int | None  # the byte offset the next page starts at; None: the end
    sources: list[str]  # the sources the manifest counts quarantined rows for


def read_page(
    path: Path,
    after: int | None,
    limit: int,
    source: str | None,
    unmasked: bool,
    sources: list[str],
) -> QuarantinePage:
    """Up to ``limit`` rows (of ``source`` only, when given) from byte offset ``after``
    (None: the first row). InvalidParameter for an offset no page handed out."""
    with path.open("rb") as handle:
        header = handle.readline()
        columns = next(csv.reader([header.decode("utf-8")]), [])
        size = path.stat().st_size
        start = len(header) if after is None else after
        if after is not None:
            if not len(header) <= after <= size:
                raise InvalidParameter("after", "is not where a page of this file starts")
            handle.seek(after - 1)
            if handle.read(1) != b"\n":
                raise InvalidParameter("after", "is not where a page of this file starts")
        handle.seek(start)
        lines = _Lines(handle, start)
        rows: list[list[str]] = []
        scanned = 0
        for row in csv.reader(lines):
            scanned += 1
            if source is None or (row and row[0] == source):
                rows.append(_shown(columns, row, unmasked))
            if len(rows) == limit or scanned == MAX_SCANNED:
                break
        more = lines.offset < size
    return QuarantinePage(columns, rows, lines.offset if more else None, sources)


class _Lines:
    """A binary file's lines as text, counting the bytes handed out: csv.reader pulls only
    the lines each row needs, so after a row ``offset`` is where the next one starts."""

    def __init__(self, handle: BinaryIO, offset: int) -> None:
        self._handle = handle
        self.offset = offset

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._handle.readline()
        if not line:
            raise StopIteration
        self.offset += len(line)
        return line.decode("utf-8", errors="replace")


def _shown(columns: list[str], row: list[str], unmasked: bool) -> list[str]:
    if unmasked:
        return row
    shown = []
    for name, value in zip(columns, row, strict=False):
        if name in MASKED_COLUMNS and value:
            value = mask(f"{name}:{value.strip()}").partition(":")[2]
        elif name in HIDDEN_COLUMNS and value:
            value = HIDDEN
        shown.append(value)
    return shown
