"""The experiment's figures over time. The store keeps each arm's sums since the experiment
began, not per period, so the dashboard keeps readings of the report: one line per reading in
``RECSVC_EVENTS_DIR/experiment-history.jsonl``, at most every
``DASHBOARD_HISTORY_SECONDS`` (written when the experiments page is looked at, and by a
background thread in each worker; a lock and the last line's time keep workers from writing
twice). The lines hold arm figures only, nobody's id. The chart draws the readings: each is
an interval over everything up to its time, so the series shows how the estimate settled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import msgspec

from recsvc import defaults
from recsvc.errors import StoreUnavailable
from recsvc.schemas import ExperimentReport, FigureInterval

log = logging.getLogger(__name__)

HISTORY_FILE = "experiment-history.jsonl"
TAIL_BYTES = 1 << 20  # readings read back: the last MiB (about 2,000 of a two-arm test)
LAST_BYTES = 1 << 14  # enough for the last reading of an experiment with many arms


class ArmReading(msgspec.Struct, frozen=True):
    name: str
    customers: int
    impressions: int
    ctr: FigureInterval
    conversion_rate: FigureInterval
    revenue_per_impression: FigureInterval


class Reading(msgspec.Struct, frozen=True):
    at: float  # seconds since the epoch
    experiment: str
    arms: list[ArmReading]


class ExperimentHistory:
    def __init__(
        self,
        directory: Path,
        interval: float = defaults.DASHBOARD_HISTORY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = directory / HISTORY_FILE
        self.interval = interval
        self.clock = clock
        self._sampler_pid: int | None = None

    def record(self, report: ExperimentReport) -> bool:
        """Append a reading of a running experiment's report, once it has impressions, unless
        one of the same experiment is younger than ``interval``; whether one was written."""
        if not report.running or not any(arm.impressions for arm in report.arms):
            return False
        now = self.clock()
        reading = Reading(
            now,
            report.name,
            [
                ArmReading(
                    arm.name,
                    arm.customers,
                    arm.impressions,
                    arm.ctr,
                    arm.conversion_rate,
                    arm.revenue_per_impression,
                )
                for arm in report.arms
                if not arm.dropped
            ],
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            kept = _tail(handle, LAST_BYTES)
            last = kept[-1] if kept else None
            if last is not None and last.experiment == report.name:
                if now - last.at < self.interval:
                    return False
            handle.write(msgspec.json.encode(reading) + b"\n")
            handle.flush()
        return True

    def readings(self, experiment: str) -> list[Reading]:
        """The readings of ``experiment`` kept (the file's last ``TAIL_BYTES``), oldest
        first."""
        try:
            with self.path.open("rb") as handle:
                return [r for r in _tail(handle) if r.experiment == experiment]
        except FileNotFoundError:
            return []

    def sample(self, read: Callable[[], ExperimentReport | None]) -> None:
        """Record a reading every ``interval`` from a daemon thread of this process
        (idempotent; a forked worker starts its own)."""
        if self._sampler_pid == os.getpid() or self.interval <= 0:
            return
        self._sampler_pid = os.getpid()

        def loop() -> None:
            while True:
                try:
                    report = read()
                    if report is not None:
                        self.record(report)
                except StoreUnavailable:
                    pass  # no figures to read now: the next reading will have them
                except Exception:  # the sampler must outlive any surprise
                    log.exception("could not record the experiment's figures")
                time.sleep(self.interval)

        threading.Thread(target=loop, name="recsvc-experiment-history", daemon=True).start()


def _tail(handle: BinaryIO, size: int = TAIL_BYTES) -> list[Reading]:
    """The readings in a file's last ``size`` bytes, skipping a line cut at its start and
    any that do not parse."""
    end = handle.seek(0, os.SEEK_END)
    start = max(end - size, 0)
    handle.seek(start)
    lines = handle.read().split(b"\n")
    if start > 0:
        lines = lines[1:]
    found = []
    for line in lines:
        if line.strip():
            try:
                found.append(msgspec.json.decode(line, type=Reading))
            except msgspec.DecodeError:
                continue
    return found
