"""Errors raised by the trainer.

TrainingError
├── ConfigError      the training config is invalid (names the key)
├── SourceError      a source cannot be read as declared (names the source, file, column)
└── QuarantineError  a source's quarantined share is over its limit (names the source, reason)
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error the trainer raises on purpose."""


class ConfigError(TrainingError):
    """The training config is invalid."""


class SourceError(TrainingError):
    """A source cannot be read as its config declares."""


class QuarantineError(TrainingError):
    """Too many of a source's rows were quarantined to publish a model of the rest."""
