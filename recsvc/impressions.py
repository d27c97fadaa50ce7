"""What the service showed: every list answer gets an ``impression_id`` and is remembered as an
impression (``recsvc.store.Impression``), so that a ``rec_click`` sending the id back, and a
purchase of one of its items within the attribution window, count for it (``Store.apply``).

A read writes nothing to the store: each worker keeps its impressions in a buffer that a
background thread writes in one batch every ``IMPRESSION_FLUSH_SECONDS``, and at exit. The
store credits a click or purchase that arrives before its impression when the impression
does. Impressions are analytics, not records: those in the buffer of a worker that is killed
(not stopped) are lost, and while the store does not answer a worker keeps at most
``IMPRESSION_BUFFER_MAX`` (the oldest are dropped).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from recsvc import defaults
from recsvc.errors import StoreUnavailable
from recsvc.experiments import Assignment
from recsvc.store import Impression, Store

log = logging.getLogger(__name__)

ID_BYTES = 9  # 72 random bits: 12 URL-safe characters
# Impressions per store call: Redis runs a call's script alone, so a larger batch would hold
# every request behind it (100 take ≈2–3 ms on the 2-core test machine).
WRITE_BATCH = 100
WARN_EVERY_SECONDS = 60.0

# Surfaces: where a list was shown (a website block's is "block:<slot>").
RECOMMENDATIONS = "recommendations"
SIMILAR = "similar"
CART = "cart"
EMAIL = "email"


def block_surface(slot: str) -> str:
    return f"block:{slot}"


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


class Impressions:
    """This process's buffer of impressions on their way to the store."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        interval: float = defaults.IMPRESSION_FLUSH_SECONDS,
        limit: int = defaults.IMPRESSION_BUFFER_MAX,
    ) -> None:
        """``interval``: seconds between two writes (0: only ``flush`` writes)."""
        self.store = store
        self.clock = clock
        self.interval = interval
        self.limit = limit
        self.dropped = 0  # impressions dropped because the buffer was full
        self._buffer: list[Impression] = []
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._warned_at = 0.0

    def shown(
        self,
        model_version: str,
        surface: str,
        customer: str,
        items: Sequence[str],
        assignment: Assignment | None = None,
        impression_id: str | None = None,
    ) -> str:
        """Remember a list shown to ``customer`` (a store key; "" for nobody known) and give
        its impression id (``impression_id``, or a new one). An empty list is not kept. Its
        item ids are kept as events name them, upper-cased (``recsvc.events``)."""
        identifier = impression_id or new_id()
        if not items:
            return identifier
        if self._pid != os.getpid():
            self._start()
        experiment, arm = assignment or ("", "")
        impression = Impression(
            identifier,
            self.clock(),
            customer,
            model_version,
            surface,
            tuple(item.upper() for item in items),
            experiment,
            arm,
        )
        with self._lock:
            if len(self._buffer) >= self.limit:
                del self._buffer[0]
                self.dropped += 1
            self._buffer.append(impression)
        return identifier

    def flush(self) -> int:
        """Write the buffer to the store; returns how many impressions were written. What
        the store does not take stays for the next try."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        written = 0
        try:
            for start in range(0, len(batch), WRITE_BATCH):
                self.store.record_impressions(batch[start : start + WRITE_BATCH])
                written = start + WRITE_BATCH
        except StoreUnavailable as error:
            with self._lock:
                self._buffer[:0] = batch[written:]
                excess = len(self._buffer) - self.limit
                if excess > 0:
                    del self._buffer[:excess]
                    self.dropped += excess
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = now
                log.warning("impressions not written yet, kept to retry: %s", error)
            return min(written, len(batch))
        return len(batch)

    def _start(self) -> None:
        """In each process (a gunicorn worker is forked): an empty buffer, a writer thread,
        and a last write at exit."""
        with _START_LOCK:
            if self._pid == os.getpid():
                return
            self._lock = threading.Lock()
            self._buffer = []
            self._pid = os.getpid()
            atexit.register(self._at_exit)
            if self.interval > 0:
                threading.Thread(target=self._write, name="recsvc-impressions", daemon=True).start()

    def _at_exit(self) -> None:
        self._warned_at = time.monotonic()  # the last try: one line below says what is lost
        self.flush()
        if self._buffer:
            log.warning(
                "%d impressions lost at exit: the store did not take them", len(self._buffer)
            )

    def _write(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:  # the writer must outlive any surprise
                log.exception("writing impressions failed")


_START_LOCK = threading.Lock()
