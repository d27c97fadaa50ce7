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
from recsvc.text import MAX_KEY_LENGTH, text_problem


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


ANY_KEY = "~"  # the path segment that says: the customer key is in the ``key`` parameter


def customer_key(path_key: str, args: Mapping[str, str]) -> str:
    """The customer key a request names. The key is the path segment, URL-encoded; a key
    that a path segment cannot carry (one with '/') is sent as ``~`` in the path and the
    key, URL-encoded, in the ``key`` query parameter. Either way it is checked here: 400 for
    an empty, overlong or unsafe key (see ``recsvc.text``)."""
    key = args.get("key")
    if path_key == ANY_KEY:
        if key is None:
            raise invalid_parameter("key", f"required when the path's key is {ANY_KEY!r}")
    elif key is not None:
        raise invalid_parameter(
            "key", f"give the key in the path, or {ANY_KEY!r} in the path and the key here"
        )
    else:
        key = path_key
    checked_text("key", key, MAX_KEY_LENGTH)
    view_args = this_request().view_args
    if view_args is not None:
        view_args["key"] = key  # the log line hashes the key itself, not '~'
    return key


def checked_text(name: str, value: str, limit: int) -> str:
    """``value`` when it is 1 to ``limit`` characters, not blank, and safe; else a 400
    naming the parameter ``name``."""
    reason = text_problem(value, limit)
    if reason is not None:
        raise invalid_parameter(name, reason)
    return value
