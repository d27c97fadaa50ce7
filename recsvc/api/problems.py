"""Errors as RFC 9457 problem details: the one place errors become HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from flask import Flask, Response, request
from msgspec import UNSET
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from recsvc import defaults, schemas
from recsvc.errors import (
    AuthError,
    BatchError,
    BundleError,
    ConfigError,
    ExperimentNotRunning,
    Forbidden,
    InvalidParameter,
    RateLimited,
    RecsvcError,
    StoreUnavailable,
    UnknownCustomer,
    UnknownItem,
    UnknownSlot,
    Unsubscribed,
)

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
        invalid_params: list[schemas.InvalidParam] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.invalid_params = invalid_params


def problem_response(problem: Problem) -> Response:
    body = schemas.Problem(
        type="about:blank",
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        invalid_params=UNSET if problem.invalid_params is None else problem.invalid_params,
    )
    return Response(
        schemas.encoder.encode(body),
        status=problem.status,
        mimetype=PROBLEM_JSON,
        headers=problem.headers,
    )


class Answer(NamedTuple):
    """How an error class is answered: status, title, and any headers it adds."""

    status: int
    title: str
    headers: Callable[[RecsvcError], dict[str, str]] | None = None


def _retry_later(error: RecsvcError) -> dict[str, str]:
    return {"Retry-After": str(defaults.RETRY_AFTER_SECONDS)}


def _retry_after(error: RecsvcError) -> dict[str, str]:
    assert isinstance(error, RateLimited)
    return {"Retry-After": str(error.retry_after)}


def _bearer(error: RecsvcError) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


# Every error of recsvc.errors as a response: the nearest class in the error's MRO decides.
# The detail is the error's message, which the core writes for the caller.
PROBLEMS: dict[type[RecsvcError], Answer] = {
    InvalidParameter: Answer(400, "Invalid parameter"),
    BatchError: Answer(400, "Invalid batch"),
    AuthError: Answer(401, "Unauthorized", _bearer),
    Forbidden: Answer(403, "Forbidden"),
    UnknownSlot: Answer(404, "Unknown slot"),
    UnknownItem: Answer(404, "Unknown item"),
    UnknownCustomer: Answer(404, "Unknown customer"),
    Unsubscribed: Answer(409, "Unsubscribed"),
    ExperimentNotRunning: Answer(409, "No experiment running"),
    RateLimited: Answer(429, "Too Many Requests", _retry_after),
    StoreUnavailable: Answer(503, "Store unavailable", _retry_later),
    BundleError: Answer(503, "No model loaded"),
    ConfigError: Answer(500, "Service misconfigured"),
    RecsvcError: Answer(500, "Internal Server Error"),
}


def problem_of(error: RecsvcError) -> Problem:
    """The response ``PROBLEMS`` gives ``error``."""
    answer = next(PROBLEMS[kind] for kind in type(error).__mro__ if kind in PROBLEMS)
    headers = answer.headers(error) if answer.headers is not None else None
    invalid = None
    if isinstance(error, InvalidParameter):
        invalid = [schemas.InvalidParam(error.name, error.reason)]
    return Problem(answer.status, answer.title, str(error), headers, invalid)


def invalid_parameter(name: str, reason: str) -> Problem:
    return Problem(
        400,
        "Invalid parameter",
        f"{name}: {reason}",
        invalid_params=[schemas.InvalidParam(name, reason)],
    )


def body_too_large(limit: int | None) -> Problem:
    return Problem(413, "Content Too Large", f"the request body is larger than {limit} bytes")


def refuse_large_body() -> None:
    """Answer 413 to a request whose Content-Length is over the limit before anything reads
    its body. A chunked body declares no length, and Werkzeug would quietly cut it off at the
    limit: it is read here (at most the limit, kept for the view), and refused if more follows."""
    environ = request.environ
    if not environ.get("CONTENT_LENGTH") and not environ.get("wsgi.input_terminated"):
        return  # no body (every GET): nothing to check, and werkzeug's properties cost
    limit = request.max_content_length
    if limit is None:
        return
    length = request.content_length
    if length is not None:
        if length > limit:
            raise body_too_large(limit)
    elif request.environ.get("wsgi.input_terminated"):
        body = request.get_data(cache=True)
        if len(body) >= limit and request.environ["wsgi.input"].read(1):
            raise body_too_large(limit)


def init_app(app: Flask) -> None:
    app.before_request(refuse_large_body)

    @app.errorhandler(RequestEntityTooLarge)
    def handle_too_large(error: RequestEntityTooLarge) -> Response:
        return problem_response(body_too_large(request.max_content_length))

    @app.errorhandler(Problem)
    def handle_problem(problem: Problem) -> Response:
        return problem_response(problem)

    @app.errorhandler(RecsvcError)
    def handle_error(error: RecsvcError) -> Response:
        return problem_response(problem_of(error))

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
