"""Errors as RFC 9457 problem details: the one place errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error response: status, a short title, and a detail that says what is wrong."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(problem: Problem) -> Response:
    body = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    return Response(
        json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON, headers=problem.headers
    )


def invalid_parameter(name: str, reason: str) -> Problem:
    return Problem(
        400,
        "Invalid parameter",
        f"{name}: {reason}",
        invalid_params=[{"name": name, "reason": reason}],
    )


def init_app(app: Flask) -> None:
    @app.errorhandler(Problem)
    def handle_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    def handle_http(error: HTTPException) -> Response:
        status = error.code or 500
        # Keep the exception's own headers that matter to clients, e.g. Allow on a 405.
        headers = {name: value for name, value in error.get_headers() if name != "Content-Type"}
        return problem_response(
            Problem(status, error.name, error.description or error.name, headers=headers)
        )

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(Problem(500, "Internal Server Error", "unexpected error"))
