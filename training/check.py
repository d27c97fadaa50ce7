"""``recsvc sources check``: validate a config and sample every source before any training.

Each source is read as training would read it (file present, columns present, connection
works, row count), then a sample of its values is parsed with the trainer's own rules. A
column where most sampled values fail is an error (usually a wrong mapping or format); a few
failures are a warning (those rows will be quarantined). A cancellation prefix that matches
more than a few per cent of order ids is a warning (a prefix "C" turns ``CART-1`` into a
cancellation). Personal values (emails, phones, customer ids) are shown masked.
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
from training.sources import is_text, read_source

SAMPLE_ROWS = 1000
ERROR_SHARE = 0.5
# Cancellations are a few per cent of order lines in a shop's export (about 2 % in the
# reference data); a prefix matching more is more likely part of ordinary order ids.
PREFIX_WARNING_SHARE = 0.05
PERSONAL_FIELDS = ("customer_id", "email", "phone")


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
            if field_name not in sample or not is_text(sample[field_name]):
                continue  # absent, or a typed Parquet column: nothing to parse
            values = sample[field_name].str.strip()
            values = values[values != ""]
            if values.empty:
                continue
            failed = values[~parses(values)]
            if failed.empty:
                continue
            column = source.columns[field_name]
            example = failed.iloc[0]
            if field_name in PERSONAL_FIELDS:
                example = mask(field_name, example)
            message = (
                f"column {column!r} ({field_name}): {len(failed)} of {len(values)} sampled "
                f"values do not parse, e.g. {example!r}"
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
        prefixed = _prefixed_share(rows.frame, source)
        if prefixed > PREFIX_WARNING_SHARE:
            result.warnings.append(
                f"cancellation_prefix {source.cancellation_prefix!r} matches {prefixed:.1%} of "
                f"the rows' order ids (column {source.columns['order_id']!r}); cancellations are "
                "usually a few per cent: is the prefix part of ordinary order ids?"
            )
    return results


def _prefixed_share(frame: pd.DataFrame, source: SourceConfig) -> float:
    """The share of rows whose order id starts with the source's cancellation prefix,
    judged once per distinct order id."""
    if not source.cancellation_prefix or "order_id" not in frame or frame.empty:
        return 0.0
    orders = frame["order_id"]
    matches = pd.Series(orders.cat.categories, dtype="str").str.strip()
    prefixed = matches.str.startswith(source.cancellation_prefix).to_numpy()
    codes = orders.cat.codes.to_numpy()
    return float(prefixed[codes[codes >= 0]].sum() / len(frame))


def mask(field_name: str, value: str) -> str:
    """Enough of a personal value to find it in the file, not enough to contact anyone:
    ``a***@e***.com``, ``+44******58``, ``12***``."""
    value = value.strip()
    if field_name == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        name, dot, suffix = domain.rpartition(".")
        masked_domain = f"{name[:1]}***{dot}{suffix}" if dot else f"{domain[:1]}***"
        return f"{local[:1]}***@{masked_domain}"
    if field_name == "phone" and len(value) > 6:
        return value[:3] + "*" * (len(value) - 5) + value[-2:]
    return value[:2] + "***"


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
