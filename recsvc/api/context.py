"""The app and request being served, as plain objects.

Every attribute read through Flask's proxies (``current_app.x``, ``request.x``) is a context
lookup, a few microseconds each; code on the request path takes each object once here and
reads from it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, current_app, request


def this_app() -> Flask:
    found: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return found


def this_request() -> Request:
    found: Request = request._get_current_object()  # type: ignore[attr-defined]
    return found


def extensions() -> dict[str, Any]:
    return this_app().extensions
