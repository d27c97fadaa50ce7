"""Errors raised by the service core.

RecsvcError
├── ConfigError            a RECSVC_* setting is missing or invalid (names the key)
├── UnknownCustomer        an erasure named nobody the service knows (still recorded)
├── StoreUnavailable       the real-time store did not answer in time
│   └── StoreNotRestored   it answers but lost its data; being rebuilt from the durable logs
└── BundleError            no usable model bundle
    ├── BundleNotFound     the models directory has no published bundle
    └── BundleCorrupt      a bundle file is missing, altered or inconsistent (names the file)

The HTTP layer (recsvc.api.problems) is the only place these become responses.
"""

from __future__ import annotations


class RecsvcError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(RecsvcError):
    """A configuration value is missing or invalid."""


class UnknownCustomer(RecsvcError):
    """An erasure named nobody the service knows; the key is on the erasure list anyway, so
    the next training drops any row that carries it."""


class StoreUnavailable(RecsvcError):
    """The real-time store (Redis) is unreachable or too slow; callers degrade."""


class StoreNotRestored(StoreUnavailable):
    """The store came back without its data (e.g. Redis restarted empty): until the durable
    logs are replayed into it, it is treated as unavailable."""


class BundleError(RecsvcError):
    """No usable model bundle."""


class BundleNotFound(BundleError):
    """The models directory holds no published bundle."""


class BundleCorrupt(BundleError):
    """A bundle failed verification; the message names the offending file."""
