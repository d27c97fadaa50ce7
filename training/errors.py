"""Errors raised by the trainer.

TrainingError
├── ConfigError      the training config is invalid (names the key); also the service's
│                    recsvc.errors.ConfigError: catching that one catches a bad setting of either
├── SourceError      a source cannot be read as declared (names the source, file, column)
└── QuarantineError  a source's quarantined share is over its limit (names the source, reason)
"""

from __future__ import annotations

from recsvc import errors as service_errors


class TrainingError(Exception):
    """Base class of every error the trainer raises on purpose."""


class ConfigError(TrainingError, service_errors.ConfigError):
    """The training config is invalid: one kind of the service's ConfigError (a setting is
    missing or invalid), raised by the trainer."""


class SourceError(TrainingError):
    """A source cannot be read as its config declares."""


class QuarantineError(TrainingError):
    """Too many of a source's rows were quarantined to publish a model of the rest."""
