"""How the dashboard writes numbers, money, times and durations: Jinja2 filters (registered
in recsvc.render) and plain functions, no web framework."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from recsvc import reasons

DASH = "–"  # an unknown value


def number(value: float | int | None, digits: int = 0) -> str:
    """Thousands separated: ``12,345`` or ``1,234.5`` (``digits`` after the point)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:,.{digits}f}"


def money(value: float | None, symbol: str = "") -> str:
    if value is None:
        return DASH
    sign = "−" if value < 0 else ""
    return f"{sign}{symbol}{abs(value):,.2f}"


def percent(value: float | None, digits: int = 1) -> str:
    """A share (0..1) as a percentage."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value * 100:.{digits}f} %"


def share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def when(value: str | float | int | None) -> str:
    """An ISO 8601 time or seconds since the epoch as ``2011-12-09 12:50 UTC``."""
    if value is None or value == "":
        return DASH
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # the trainer's times are naive UTC
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float | None) -> str:
    """``3 d 4 h``, ``5 h 12 min``, ``42 s``."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def milliseconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    return f"{seconds * 1000:.1f} ms"


def reason(value: Any) -> str:
    """A recommendation's reason (a Struct or a dict) in a few words."""
    if value is None:
        return DASH
    as_dict = value if isinstance(value, dict) else _struct_dict(value)
    return reasons.phrase(as_dict)


def figures(value: Any) -> str:
    """A trigger's figures, ``days since last purchase: 61.2 · overdue ratio: 2.4``."""
    if not isinstance(value, dict):
        return DASH
    shown = []
    for name, figure in value.items():
        text = number(figure, 2 if figure % 1 else 0) if _numeric(figure) else str(figure)
        shown.append(f"{name.replace('_', ' ')}: {text}")
    return " · ".join(shown)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _struct_dict(value: Any) -> dict[str, str]:
    fields = getattr(value, "__struct_fields__", ())
    return {name: getattr(value, name) for name in fields if getattr(value, name) is not None}


FILTERS: dict[str, Callable[..., Any]] = {
    "ratio": share,
    "number": number,
    "money": money,
    "percent": percent,
    "when": when,
    "duration": duration,
    "ms": milliseconds,
    "why": reason,
    "figures": figures,
}
