"""Query-parameter parsing that turns bad input into a 400 saying what is wrong."""

from __future__ import annotations

from flask import request

from recsvc.api.problems import invalid_parameter


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise invalid_parameter(name, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise invalid_parameter(name, f"must be between {low} and {high}, got {value}")
    return value
