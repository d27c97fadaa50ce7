"""``recsvc sources check``: validate a config and sample every source before any training.

Each source is read as training would read it (file present, columns present, connection
works, row count), then a sample of its values is parsed with the trainer's own rules. A
column where most sampled values fail is an error (usually a wrong mapping or format); a few
failures are a warning (those rows will be quarantined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recsvc.identity import IdentityRules, normalise_email, normalise_phone
from training.config import SourceConfig, TrainConfig
from training.errors import SourceError
from training.merge import parse_numbers, parse_timestamps
from training.sources import read_source

SAMPLE_ROWS = 1000
ERROR_SHARE = 0.5


@dataclass
class SourceCheck:
    name: str
    kind: str
    rows: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_sources(config: TrainConfig, sample_rows: int = SAMPLE_ROWS) -> list[SourceCheck]:
    results = []
    for source in config.sources:
        result = SourceCheck(source.name, source.kind)
        results.append(result)
        try:
            rows = read_source(source)
        except SourceError as error:
            result.errors.append(str(error))
            continue
        result.rows = len(rows.frame)
        if result.rows == 0:
            result.warnings.append("no rows")
            continue
        sample = rows.frame.head(sample_rows)
        for field_name, parses in _parsers(source, config.identity.rules).items():
            if field_name not in sample:
                continue
            values = sample[field_name].str.strip()
            values = values[values != ""]
            if values.empty:
                continue
            failed = values[~parses(values)]
            if failed.empty:
                continue
            column = source.columns[field_name]
            message = (
                f"column {column!r} ({field_name}): {len(failed)} of {len(values)} sampled "
                f"values do not parse, e.g. {failed.iloc[0]!r}"
            )
            if field_name == "timestamp":
                message += f" (format {source.timestamp_format or 'ISO 8601'})"
            bucket = result.errors if len(failed) > ERROR_SHARE * len(values) else result.warnings
            bucket.append(message)
        missing_items = int((sample["item_id"].str.strip() == "").sum())
        if missing_items:
            result.warnings.append(
                f"column {source.columns['item_id']!r} (item_id): {missing_items} sampled rows "
                "have no item id"
            )
    return results


def _parsers(
    source: SourceConfig, rules: IdentityRules
) -> dict[str, Callable[[pd.Series], NDArray[np.bool_]]]:
    """Per field, which sampled values parse by the trainer's rules."""
    return {
        "quantity": lambda values: np.isfinite(parse_numbers(values)),
        "unit_price": lambda values: np.isfinite(parse_numbers(values)),
        "timestamp": lambda values: (
            parse_timestamps(values, source.timestamp_format, source.timezone).notna().to_numpy()
        ),
        "email": lambda values: np.array([normalise_email(v, rules) is not None for v in values]),
        "phone": lambda values: np.array([normalise_phone(v, rules) is not None for v in values]),
    }
