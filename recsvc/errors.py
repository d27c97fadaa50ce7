"""Errors raised by the service core.

RecsvcError
├── ConfigError            a setting is missing or invalid (names the key); the trainer's
│                          training.errors.ConfigError is this one too
├── InvalidParameter       a request parameter the core checks is wrong (names it)
│   └── UnknownCategory    a category the bundle's catalog does not have
├── BatchError             a POST /v1/events or catalog-write body is not a batch at all
├── AuthError              the API key is missing or invalid (401) ...
│   └── Forbidden          ... or valid but lacks the scope (403)
├── RateLimited            the API key is over its rate limit (says when to retry)
├── UnknownSlot            a website slot the bundle does not configure
├── UnknownItem            an item id the catalog has never heard of
├── UnknownCustomer        an erasure named nobody the service knows (still recorded)
├── Unsubscribed           email picks for a customer who unsubscribed from email
├── ExperimentNotRunning   an experiment was to be ended, and none is running
├── StoreUnavailable       the real-time store did not answer in time
│   └── StoreNotRestored   it answers but lost its data; being rebuilt from the durable logs
└── BundleError            no usable model bundle
    ├── NoModelLoaded      nothing is being served (the message says why)
    ├── BundleNotFound     the models directory has no published bundle
    └── BundleCorrupt      a bundle file is missing, altered or inconsistent (names the file)

The HTTP layer (recsvc.api.problems.PROBLEMS) is the only place these become responses.
"""

from __future__ import annotations

from datetime import date


class RecsvcError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(RecsvcError):
    """A configuration value is missing or invalid."""


class InvalidParameter(RecsvcError):
    """A parameter of the request is wrong; ``reason`` says how (never repeating personal
    data)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class UnknownCategory(InvalidParameter):
    """A category the served catalog does not have; the reason lists those it has."""

    def __init__(self, category: str, known: list[str]) -> None:
        listed = ", ".join(known) or "none configured"
        super().__init__("category", f"unknown category {category!r}; known: {listed}")
        self.category = category


class BatchError(RecsvcError):
    """The request body is not a batch of events (or of catalog changes) at all."""


class AuthError(RecsvcError):
    """No API key, or one that is not valid."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Forbidden(AuthError):
    """A valid API key without the scope the endpoint needs."""

    status = 403


class RateLimited(RecsvcError):
    """The API key is over its rate limit for ``retry_after`` more seconds."""

    def __init__(self, key_name: str, retry_after: int) -> None:
        super().__init__(
            f"the API key {key_name!r} is over its rate limit; retry after the Retry-After seconds"
        )
        self.retry_after = retry_after


class UnknownSlot(RecsvcError):
    """A website slot the served bundle does not configure; the message lists those it does."""

    def __init__(self, slot: str, slots: list[str]) -> None:
        super().__init__(f"slot {slot!r} is not configured; slots: {', '.join(sorted(slots))}")
        self.slot = slot


class UnknownItem(RecsvcError):
    """An item neither the bundle nor the catalog changes since training know."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is not in the catalog")
        self.item_id = item_id


class UnknownCustomer(RecsvcError):
    """An erasure named nobody the service knows; the key is on the erasure list anyway, so
    the next training drops any row that carries it."""


class Unsubscribed(RecsvcError):
    """Email picks asked for a customer who unsubscribed from email (``recsvc.engagement``):
    nothing is to be sent to them."""

    def __init__(self, on: date) -> None:
        super().__init__(f"this customer unsubscribed from email on {on.isoformat()}")
        self.on = on


class ExperimentNotRunning(RecsvcError):
    """An experiment was to be ended, and none is running."""


class StoreUnavailable(RecsvcError):
    """The real-time store (Redis) is unreachable or too slow; callers degrade."""


class StoreNotRestored(StoreUnavailable):
    """The store came back without its data (e.g. Redis restarted empty): until the durable
    logs are replayed into it, it is treated as unavailable."""


class BundleError(RecsvcError):
    """No usable model bundle."""


class NoModelLoaded(BundleError):
    """No bundle is served yet: the last load failed (the message says why) or none exists."""


class BundleNotFound(BundleError):
    """The models directory holds no published bundle."""


class BundleCorrupt(BundleError):
    """A bundle failed verification; the message names the offending file."""
