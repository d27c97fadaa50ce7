"""The service configuration, read once from RECSVC_* variables at start."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recsvc import defaults
from recsvc.errors import ConfigError

PREFIX = "RECSVC_"


@dataclass(frozen=True)
class ServiceConfig:
    models_dir: Path
    log_level: str = defaults.LOG_LEVEL

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> ServiceConfig:
        """Build from a mapping such as ``os.environ``; a bad value raises ConfigError naming it."""
        models_dir = values.get(f"{PREFIX}MODELS_DIR", defaults.MODELS_DIR).strip()
        if not models_dir:
            raise ConfigError(f"{PREFIX}MODELS_DIR is empty; set it to the models directory")
        log_level = values.get(f"{PREFIX}LOG_LEVEL", defaults.LOG_LEVEL).strip().upper()
        if not isinstance(logging.getLevelNamesMapping().get(log_level), int):
            raise ConfigError(
                f"{PREFIX}LOG_LEVEL={log_level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)"
            )
        return cls(models_dir=Path(models_dir), log_level=log_level)
