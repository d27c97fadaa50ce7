"""The app and request being served, as plain objects.

Every attribute read through Flask's proxies (``current_app.x``, ``request.x``) is a context
lookup, a few microseconds each; code on the request path takes each object once here and
reads from it.
"""

from __future__ import annotations

from flask import Flask, Request, current_app, request

from recsvc.service import SERVICE, Service


def this_app() -> Flask:
    found: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return found


def this_request() -> Request:
    found: Request = request._get_current_object()  # type: ignore[attr-defined]
    return found


def service_of(app: Flask) -> Service:
    """The Service ``app`` serves (create_app puts it there, under one key)."""
    found: Service = app.extensions[SERVICE]
    return found


def this_service() -> Service:
    """The app's one Service: the core every view calls (see recsvc.service)."""
    found: Service = current_app.extensions[SERVICE]
    return found
