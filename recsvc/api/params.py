"""Query-parameter parsing that turns bad input into a 400 saying what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

import numpy as np
from numpy.typing import NDArray

from recsvc import channels
from recsvc.api.context import this_request
from recsvc.api.problems import invalid_parameter
from recsvc.registry import ServedModel


def query_args() -> dict[str, str]:
    """The request's query parameters, the first value of each name (as request.args.get
    gives). Parsed into a plain dict: werkzeug's MultiDict costs several times as much to
    build, for repeated names that no parameter here takes."""
    raw = this_request().environ.get("QUERY_STRING", "")
    # WSGI hands over the query's bytes as latin-1; unescaped UTF-8 is read as UTF-8.
    text = raw.encode("latin-1").decode("utf-8", "replace")
    args: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        args.setdefault(name, value)
    return args


def int_arg(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise invalid_parameter(name, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise invalid_parameter(name, f"must be between {low} and {high}, got {value}")
    return value


def category_arg(args: Mapping[str, str], model: ServedModel) -> NDArray[np.bool_] | None:
    """The ``category`` query parameter as a mask over items, or None when absent."""
    name = args.get("category")
    if name is None:
        return None
    try:
        return channels.category_mask(model, name.strip().lower())
    except channels.UnknownCategory:
        known = ", ".join(channels.categories(model)) or "none configured"
        raise invalid_parameter("category", f"unknown category {name!r}; known: {known}") from None
