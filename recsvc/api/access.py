"""API-key checks for views: ``@requires("recs:read")``."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import current_app, request
from werkzeug.datastructures import Headers

from recsvc.api.problems import Problem
from recsvc.auth import Authenticator, AuthError

P = ParamSpec("P")
R = TypeVar("R")


def requires(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            authenticator: Authenticator | None = current_app.extensions["recsvc.auth"]
            if authenticator is not None:
                try:
                    authenticator.authorise(presented_key(request.headers), scope)
                except AuthError as error:
                    title = "Unauthorized" if error.status == 401 else "Forbidden"
                    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
                    raise Problem(error.status, title, error.detail, headers=headers) from None
            return view(*args, **kwargs)

        return checked

    return decorate


def presented_key(headers: Headers) -> str | None:
    header = headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return headers.get("X-API-Key") or None
