"""Visitor tokens: the shop's backend vouches that the visitor of a page is the customer a
website block names. With only the publishable key (``blocks:read``) a block names a customer
in vain: without a valid token for that key the visitor gets the anonymous block.

A token is ``<expiry>.<mac>``: the expiry in Unix seconds, and the base64url HMAC-SHA256,
keyed with ``RECSVC_SECRET_KEY``, of the customer key and that expiry. It holds no customer
key (the page already names it), so reading one reveals nothing; it is valid only with the
exact key it was minted for, and only until it expires. No web framework here: a shop's own
Python backend can import this module to mint tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from recsvc import defaults

MIN_SECRET_LENGTH = 32
_TOKEN = re.compile(r"(?P<expiry>[0-9]{1,12})\.(?P<mac>[A-Za-z0-9_-]{43})")


def secret_from(text: str) -> bytes:
    """The secret key from its configured text; ValueError when it is too short to trust."""
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"must be at least {MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)"
        )
    return text.encode("utf-8")


def mint(
    secret: bytes,
    customer: str,
    ttl: int = defaults.VISITOR_TOKEN_TTL,
    now: float | None = None,
) -> str:
    """A token proving that the visitor is ``customer`` for ``ttl`` seconds (1 to a day)."""
    if not 1 <= ttl <= defaults.VISITOR_TOKEN_MAX_TTL:
        raise ValueError(f"ttl must be 1 to {defaults.VISITOR_TOKEN_MAX_TTL} seconds, got {ttl}")
    if not secret:
        raise ValueError("no secret key")
    expiry = int(time.time() if now is None else now) + ttl
    return f"{expiry}.{_mac(secret, customer, expiry)}"


def verify(secret: bytes, customer: str, token: str, now: float | None = None) -> bool:
    """Whether ``token`` was minted with ``secret`` for exactly ``customer`` and is still
    valid. False, never an error, for a malformed, expired or foreign token."""
    match = _TOKEN.fullmatch(token)
    if not secret or match is None:
        return False
    expiry = int(match["expiry"])
    current = time.time() if now is None else now
    if not current < expiry <= current + defaults.VISITOR_TOKEN_MAX_TTL:
        return False
    return hmac.compare_digest(match["mac"], _mac(secret, customer, expiry))


def _mac(secret: bytes, customer: str, expiry: int) -> str:
    message = f"recsvc-visitor\0{customer}\0{expiry}".encode()
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
