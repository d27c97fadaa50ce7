"""Per-API-key request rates: ``rate`` requests a second, with bursts of up to one second's
worth. The buckets live in the store, so with Redis every worker and host shares one limit
per key; while the store is unavailable each worker limits on its own rather than not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from recsvc.auth import ApiKey
from recsvc.errors import StoreUnavailable
from recsvc.store import LocalBuckets, Store


class RateLimiter:
    def __init__(
        self, store: Store, default_rate: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.default_rate = default_rate  # for keys without their own; 0: unlimited
        self._local = LocalBuckets(clock)

    def wait(
        self, key: ApiKey | None, customer: str | None = None, send: str | None = None
    ) -> float:
        """0.0 if ``key`` may make one more request now, else the seconds until it may (None:
        no key, authentication off: always 0.0). In the same store round trip, what the
        request will read for the customer with the store key ``customer`` (and their email
        ``send``) is read ahead (``Store.take_and_read``)."""
        rate = 0 if key is None else self.default_rate if key.rate is None else key.rate
        bucket = key.name if key is not None and rate > 0 else None
        try:
            return self.store.take_and_read(bucket, rate, rate, customer, send)
        except StoreUnavailable:
            return 0.0 if bucket is None else self._local.take(bucket, rate, burst=rate)
