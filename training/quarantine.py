"""Quarantined rows: the malformed source rows, with their reason, where they were and their
raw values, written once as the bundle's quarantine file.

The file is written as the merge ends, so that no engine holds the rows past it: on one host
by the trainer, a source at a time; on Spark by the executors, a part per source file, which
the driver joins by copying bytes. Both write each part with ``write_part``, so the two
engines write the same file. What the trainer keeps in memory is the first row of each
reason per source, for the quarantine gate's message.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recsvc.bundle import QUARANTINE_FILE
from training.config import SourceConfig

# What a quarantined row of an erased customer keeps: it is still counted and located, but a
# raw row holds the customer's id, email and phone, maybe in any column.
LOCATION = ("source", "file", "record", "reason")
WITHHELD = "erased customer: values withheld"


def quarantine_columns(sources: Sequence[SourceConfig]) -> list[str]:
    """The file's columns: the location, then each source's fields in order of first
    appearance (a row of a source without one leaves it blank), then ``detail``."""
    columns = list(LOCATION)
    for source in sources:
        columns.extend(field for field in source.columns if field not in columns)
    return [*columns, "detail"]


def withhold_erased(
    frame: pd.DataFrame, row_ids: NDArray[np.int64], erased: NDArray[np.int64]
) -> pd.DataFrame:
    """``frame`` (quarantined rows, ``row_ids`` the merge's number of each) with the values of
    the rows in ``erased`` (row ids, ascending) withheld."""
    withheld = np.isin(row_ids, erased, assume_unique=True)
    if not withheld.any():
        return frame
    frame = frame.copy()
    for column in frame.columns:
        if column not in LOCATION:
            frame[column] = frame[column].astype(object)
            frame.loc[withheld, column] = ""
    frame.loc[withheld, "detail"] = WITHHELD
    return frame


def write_part(frame: pd.DataFrame, columns: list[str], handle: IO[str]) -> None:
    """``frame``'s rows as CSV lines in ``columns`` (no header)."""
    frame.reindex(columns=columns).to_csv(handle, header=False, index=False)


def firsts(frame: pd.DataFrame) -> pd.DataFrame:
    """The first row of each (source, reason) in ``frame``."""
    return frame.drop_duplicates(["source", "reason"])


@dataclass(frozen=True)
class QuarantinedRows:
    """The quarantine file, in a temporary directory of the trainer's (removed with this
    object), and the first row of each (source, reason) in it."""

    path: Path
    firsts: pd.DataFrame

    def __post_init__(self) -> None:
        weakref.finalize(self, shutil.rmtree, self.path.parent, ignore_errors=True)

    def frame(self) -> pd.DataFrame:
        """The whole file as text (``record`` as numbers): for tests and small sets."""
        frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        frame["record"] = frame["record"].astype(np.int64)
        return frame

    def first(self, source: str, reason: str) -> pd.Series:
        found = self.firsts[(self.firsts["source"] == source) & (self.firsts["reason"] == reason)]
        return found.iloc[0]

    @staticmethod
    def written(
        parts: Iterable[tuple[pd.DataFrame, NDArray[np.int64]]],
        columns: list[str],
        erased: NDArray[np.int64],
    ) -> QuarantinedRows:
        """From each part's rows and their row ids, in row order, written here."""
        path = _new_file(columns)
        found = []
        with path.open("a", newline="", encoding="utf-8") as handle:
            for frame, row_ids in parts:
                part = withhold_erased(frame, row_ids, erased)
                write_part(part, columns, handle)
                found.append(firsts(part))
        return QuarantinedRows(path, _first_rows(found, columns))

    @staticmethod
    def joined(
        part_files: Iterable[Path], found: list[pd.DataFrame], columns: list[str]
    ) -> QuarantinedRows:
        """From part files ``write_part`` wrote (in row order), and their ``firsts``."""
        path = _new_file(columns)
        with path.open("ab") as out:
            for part in part_files:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out)
        return QuarantinedRows(path, _first_rows(found, columns))


def _new_file(columns: list[str]) -> Path:
    """A file of its own directory (which ``QuarantinedRows`` removes), with the header."""
    path = Path(tempfile.mkdtemp(prefix="recsvc-quarantine-")) / QUARANTINE_FILE
    pd.DataFrame(columns=columns).to_csv(path, index=False)
    return path


def _first_rows(found: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [frame for frame in found if len(frame)]
    if not frames:
        return pd.DataFrame(columns=columns)
    joined = pd.concat([frame.reindex(columns=columns) for frame in frames])
    return firsts(joined).reset_index(drop=True)
