"""Progress of the long steps of a command, on stderr: a live bar at a terminal, else (not a
terminal, or ``--quiet``) one log line per step with its duration."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

log = logging.getLogger("recsvc.progress")
T = TypeVar("T")


class Step:
    """One step under way: ``add`` counts what it has done (rows, customers)."""

    def __init__(self, bar: tqdm[Any]) -> None:
        self._bar = bar
        self.count = 0
        self.note = ""  # said after the count when the step ends, e.g. "2 sources"

    def add(self, count: int) -> None:
        self.count += count
        self._bar.update(count)


class Progress:
    def __init__(self, live: bool, stream: TextIO | None = None) -> None:
        self.live = live
        self.stream = stream or sys.stderr

    @classmethod
    def on_stderr(cls, quiet: bool = False) -> Progress:
        """Live bars when stderr is a terminal and not ``quiet``; log lines otherwise."""
        return cls(live=not quiet and sys.stderr.isatty())

    @classmethod
    def silent(cls) -> Progress:
        """Log lines only (for library callers and tests)."""
        return cls(live=False)

    @contextmanager
    def step(self, name: str, unit: str = "", total: int | None = None) -> Iterator[Step]:
        """Time the step; at its end say how long it took and, given ``unit``, how many
        per second."""
        started = time.perf_counter()
        bar = tqdm(
            desc=name,
            total=total,
            unit=f" {unit}" if unit else "it",
            unit_scale=bool(unit),
            disable=not self.live,
            file=self.stream,
            bar_format=None if unit else "{desc} …",
        )
        step = Step(bar)
        try:
            yield step
        finally:
            seconds = time.perf_counter() - started
            bar.close()
            self.done(name, seconds, step.count, unit, step.note)

    def done(
        self, name: str, seconds: float, count: int = 0, unit: str = "", note: str = ""
    ) -> None:
        """A step's closing line: printed at a terminal, logged otherwise."""
        detail = ""
        if unit:
            rate = f" ({count / seconds:,.0f} {unit}/s)" if seconds > 0 and count else ""
            detail = f": {count:,} {unit}{rate}"
        if note:
            detail += f"{'; ' if detail else ': '}{note}"
        line = f"{name}{detail} in {seconds:.1f} s"
        if self.live:
            print(line, file=self.stream, flush=True)
        else:
            log.info("%s", line)

    def each(
        self, items: Iterable[T], name: str, unit: str, total: int | None = None
    ) -> Iterator[T]:
        """``items``, counted as one step."""
        with self.step(name, unit, total) as step:
            for item in items:
                yield item
                step.add(1)
