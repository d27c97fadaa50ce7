"""Random identifiers (request ids, impression ids) from a pool of the kernel's random bytes.

``os.urandom`` is one system call per id, about 20 µs on the test machine's VM, and a
recommendation drew two; the pool asks the kernel for ``POOL_BYTES`` at a time. The bytes are
the same cryptographic randomness, handed out once each. A forked process (a gunicorn worker)
starts with an empty pool, so that no two processes hand out the same bytes.
"""

from __future__ import annotations

import base64
import os
import threading

POOL_BYTES = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._taken = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._taken + count > len(self._bytes):
                self._bytes, self._taken = os.urandom(max(POOL_BYTES, count)), 0
            start = self._taken
            self._taken += count
            return self._bytes[start : self._taken]

    def empty(self) -> None:
        """In a forked child: the parent's bytes, and its lock's state, are the parent's."""
        self._lock = threading.Lock()
        self._bytes, self._taken = b"", 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.empty)


def token_hex(count: int) -> str:
    """``count`` random bytes as hexadecimal text, as ``secrets.token_hex``."""
    return _pool.take(count).hex()


def token_urlsafe(count: int) -> str:
    """``count`` random bytes as URL-safe base64 text without padding, as
    ``secrets.token_urlsafe``."""
    return base64.urlsafe_b64encode(_pool.take(count)).rstrip(b"=").decode("ascii")
