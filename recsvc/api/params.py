"""Query-parameter parsing that turns bad input into a 400 saying what is wrong."""

from __future__ import annotations

import numpy as np
from flask import request
from numpy.typing import NDArray

from recsvc import channels
from recsvc.api.problems import invalid_parameter
from recsvc.registry import ServedModel


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


def category_arg(model: ServedModel) -> NDArray[np.bool_] | None:
    """The ``category`` query parameter as a mask over items, or None when absent."""
    name = request.args.get("category")
    if name is None:
        return None
    try:
        return channels.category_mask(model, name.strip().lower())
    except channels.UnknownCategory:
        known = ", ".join(channels.categories(model)) or "none configured"
        raise invalid_parameter("category", f"unknown category {name!r}; known: {known}") from None
