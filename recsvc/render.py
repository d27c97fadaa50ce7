"""HTML for channels, rendered with Jinja2 and autoescaped: a product title like
``<script>alert(1)</script>`` shows as text.

The templates read fields as ``block['slot']``, not ``block.slot``: on a dict, Jinja tries the
attribute first and falls back to the key only after that fails, which made a block's render
take half as long again."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from recsvc import reasons
from recsvc.dashboard.formats import FILTERS

EMAIL_COLUMNS = 2


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("recsvc", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # package data: no need to stat the template on every render
    )
    environment.filters["reason"] = reasons.phrase
    environment.filters.update(FILTERS)
    return environment


def block_html(block: dict[str, Any], currency: str) -> str:
    return _environment().get_template("block.html").render(block=block, currency=currency)


def email_html(picks: dict[str, Any]) -> str:
    columns = min(EMAIL_COLUMNS, max(len(picks["items"]), 1))
    return _environment().get_template("email.html").render(picks=picks, columns=columns)


def dashboard_html(template: str, context: dict[str, Any]) -> str:
    """A dashboard page (recsvc/templates/dashboard/)."""
    return _environment().get_template(f"dashboard/{template}").render(context)


@cache
def embed_script() -> str:
    return (resources.files("recsvc") / "static" / "embed.js").read_text(encoding="utf-8")
