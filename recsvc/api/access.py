"""API-key checks for views: ``@requires("recs:read")`` authenticates the key, checks its
scope and takes one request from its rate limit."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from recsvc.api.context import this_request, this_service
from recsvc.api.params import customer_key
from recsvc.api.problems import Problem
from recsvc.auth import ApiKey, granted_scopes
from recsvc.errors import AuthError, RateLimited
from recsvc.store import request_reads

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

KEY_NAME = "recsvc.key_name"  # in the WSGI environ: the authenticated key's name, for the log
KEY = "recsvc.key"  # in the WSGI environ: the authenticated ApiKey

P = ParamSpec("P")
R = TypeVar("R")


def requires(
    scope: str, send: Callable[[], str | None] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``send``: for a view that reads an email send's kept picks, the send it asks for
    (``channels.snapshot_key``; None when its arguments name none), read ahead with the rest."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            service = this_service()
            authenticator = service.authenticator
            served = this_request()
            key = None
            if authenticator is not None:
                key = authenticator.authorise(presented_key(served.environ), scope)
                served.environ[KEY_NAME] = key.name
                served.environ[KEY] = key
            with request_reads():
                # The rate limit and the customer's state in one store round trip.
                customer = path_customer(served.view_args, served.args)
                asked = None if send is None or customer is None else send()
                wait = service.admit(key, customer, asked)
                if key is not None and wait:
                    raise RateLimited(key.name, max(math.ceil(wait), 1))
                return view(*args, **kwargs)

        return checked

    return decorate


def path_customer(view_args: Mapping[str, Any] | None, args: Mapping[str, str]) -> str | None:
    """The customer key a request's path names (its ``key``), if it is a valid one."""
    path_key = None if view_args is None else view_args.get("key")
    if not isinstance(path_key, str):
        return None
    try:
        return customer_key(path_key, args)
    except Problem:
        return None  # the view reports it


def granted(scope: str) -> bool:
    """Whether this request's key (checked by ``requires``) also grants ``scope``; always
    true with RECSVC_AUTH=off."""
    if this_service().authenticator is None:
        return True
    key: ApiKey | None = this_request().environ.get(KEY)
    return key is not None and scope in granted_scopes(key)


def presented_key(environ: WSGIEnvironment) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``. Every credential sent must
    be the same key: one that is malformed or differs is refused, never silently ignored."""
    authorization = environ.get("HTTP_AUTHORIZATION")
    api_key = environ.get("HTTP_X_API_KEY")
    bearer = None
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthError("the Authorization header must be 'Bearer <key>'")
        bearer = credential.strip()
    if api_key is not None and bearer is not None and api_key.strip() != bearer:
        raise AuthError("Authorization and X-API-Key carry different keys; send one key")
    return bearer or (api_key.strip() if api_key is not None else None) or None
