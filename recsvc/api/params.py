"""Request parsing that turns bad input into a 400 saying what is wrong: query parameters
(only those the endpoint declares in ``recsvc.openapi``) and JSON bodies (decoded into the
Structs of ``recsvc.schemas``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from recsvc import defaults
from recsvc.api.context import this_request
from recsvc.api.problems import Problem, invalid_parameter
from recsvc.filters import ItemFilter
from recsvc.openapi import Operation
from recsvc.schemas import MAX_ITEM_ID_LENGTH
from recsvc.text import MAX_KEY_LENGTH, text_problem

S = TypeVar("S", bound=msgspec.Struct)


def query_args(operation: Operation) -> dict[str, str]:
    """The request's query parameters. A parameter ``operation`` does not take is a 400
    naming it, so a misspelt ``catgory=`` is never silently ignored; so is one given twice
    (no parameter here takes a list, and ``?n=1&n=50`` has no one meaning). Parsed into a
    plain dict: werkzeug's MultiDict costs several times as much to build."""
    raw = this_request().environ.get("QUERY_STRING", "")
    if not raw:
        return {}
    # WSGI hands over the query's bytes as latin-1; unescaped UTF-8 is read as UTF-8.
    text = raw.encode("latin-1").decode("utf-8", "replace")
    args: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in args:
            raise invalid_parameter(_shown(name), "given more than once; give it once")
        args[name] = value
    if not args.keys() <= operation.query:
        unknown = _shown(sorted(args.keys() - operation.query)[0])
        takes = ", ".join(sorted(operation.query)) or "none"
        raise invalid_parameter(unknown, f"unknown parameter; this endpoint takes: {takes}")
    return args


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def _shown(name: str) -> str:
    """A name the caller sent, as an error may repeat it: only when it looks like a
    parameter's name, never a value such as an address sent without its ``key=``."""
    return name if _NAME.fullmatch(name) else "(a name that is not a parameter name)"


_AT = re.compile(r" - at `\$\.([A-Za-z_]+)`")
_NAMED = re.compile(r"(unknown|missing required) field `([^`]+)`")


def body_as(struct: type[S]) -> S:
    """The request's JSON body decoded into ``struct``; a 400 naming the field when it does
    not fit (the reason adds the field's description from the Struct). A body not declared
    as JSON is refused unread, as Flask's ``get_json`` would."""
    served = this_request()
    if not served.is_json:
        raise Problem(400, "Invalid body", "expected Content-Type: application/json")
    try:
        return msgspec.json.decode(served.get_data(cache=True), type=struct)
    except msgspec.ValidationError as error:
        raise _field_problem(struct, str(error)) from None
    except msgspec.DecodeError:
        fields = ", ".join(struct.__struct_fields__)
        raise Problem(400, "Invalid body", f"expected a JSON object with {fields}") from None


def _field_problem(struct: type[msgspec.Struct], message: str) -> Problem:
    named = _NAMED.search(message)
    at = _AT.search(message)
    if named is not None:
        kind, name = named.groups()
        if kind == "unknown":
            fields = ", ".join(struct.__struct_fields__)
            return invalid_parameter(_shown(name), f"unknown field; fields are {fields}")
        reason = "required"
    elif at is not None:
        name, reason = at.group(1), message[: at.start()]
    else:
        fields = ", ".join(struct.__struct_fields__)
        return Problem(400, "Invalid body", f"expected a JSON object with {fields}")
    described = _descriptions(struct).get(name)
    return invalid_parameter(name, f"{reason} ({described})" if described else reason)


@cache
def _descriptions(struct: type[msgspec.Struct]) -> dict[str, str]:
    schema: dict[str, Any] = msgspec.json.schema(struct)
    properties = schema["$defs"][struct.__name__]["properties"]
    return {name: p["description"] for name, p in properties.items() if "description" in p}


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


def item_filter(args: Mapping[str, str]) -> ItemFilter:
    """The ``category``, ``min_price`` and ``max_price`` of a list endpoint's request."""
    return ItemFilter(args.get("category"), _price(args, "min_price"), _price(args, "max_price"))


def _price(args: Mapping[str, str], name: str) -> float | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        raise invalid_parameter(name, f"must be a number, got {raw[:40]!r}") from None


def cart_items(raw: str | None) -> list[str]:
    """The ``items`` parameter: 1 to MAX_CART_ITEMS item ids, comma-separated, each once."""
    limit = defaults.MAX_CART_ITEMS
    if raw is None or not raw.strip():
        raise invalid_parameter("items", f"required: 1 to {limit} comma-separated item ids")
    items = [item.strip() for item in raw.split(",")]
    if len(items) > limit:
        raise invalid_parameter("items", f"at most {limit} item ids, got {len(items)}")
    seen: set[str] = set()
    for position, item in enumerate(items, start=1):
        if not item:
            raise invalid_parameter("items", f"item id {position} is empty")
        checked_text("items", item, MAX_ITEM_ID_LENGTH)
        if item in seen:
            raise invalid_parameter("items", f"item id {position} repeats an earlier one")
        seen.add(item)
    return items


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
