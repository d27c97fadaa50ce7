"""Dashboard sessions: an API key granting ``dashboard:read`` is exchanged, once, for a
signed session cookie, and every form that changes something carries the session's CSRF
token.

The cookie holds the key's name, its sha256 (what the configuration holds, not the key) and
the CSRF token, signed with RECSVC_SECRET_KEY and timed: it is HttpOnly, SameSite=Strict,
Secure on https, and lasts ``DASHBOARD_SESSION_SECONDS``. Each request finds the key in the
configuration again, so a key removed from it signs its sessions out, and its scopes are the
ones configured now. No web framework here: the views read and set the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from recsvc import defaults
from recsvc.auth import ApiKey, Authenticator, granted_scopes

COOKIE = "recsvc_dashboard"
READ_SCOPE = "dashboard:read"
ADMIN_SCOPE = "admin"  # erasure and experiment actions; personal data unmasked
_SALT = "recsvc.dashboard.session"


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: the key's name and what it may do."""

    name: str
    scopes: frozenset[str]
    csrf: str  # the session's token, in every form that changes something

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Signs sessions in and reads them back; ``enabled`` is false without a secret key."""

    def __init__(
        self,
        secret: bytes,
        keys: tuple[ApiKey, ...],
        max_age: int = defaults.DASHBOARD_SESSION_SECONDS,
    ) -> None:
        self.max_age = max_age
        self._keys = keys
        self._authenticator = Authenticator(keys)
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT) if secret else None

    @property
    def enabled(self) -> bool:
        return self._serializer is not None

    def sign_in(self, presented: str) -> tuple[Viewer, str]:
        """The viewer an API key signs in as and their cookie's value. AuthError for a key
        that is not configured, Forbidden for one without ``dashboard:read``."""
        assert self._serializer is not None, "check enabled first"
        key = self._authenticator.authorise(presented.strip(), READ_SCOPE)
        csrf = secrets.token_urlsafe(32)
        cookie = self._serializer.dumps({"k": key.name, "d": key.digest.hex(), "c": csrf})
        return Viewer(key.name, granted_scopes(key), csrf), cookie

    def viewer(self, cookie: str | None) -> Viewer | None:
        """Who the cookie signs in, if it is ours, unexpired, and its key still configured
        with ``dashboard:read``; else None."""
        if not cookie or self._serializer is None:
            return None
        try:
            payload = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also an expired one (SignatureExpired)
            return None
        if not isinstance(payload, dict):
            return None
        name, digest, csrf = payload.get("k"), payload.get("d"), payload.get("c")
        if not all(isinstance(value, str) for value in (name, digest, csrf)):
            return None
        for key in self._keys:
            if key.name == name and hmac.compare_digest(key.digest.hex(), str(digest)):
                scopes = granted_scopes(key)
                if READ_SCOPE not in scopes:
                    return None
                return Viewer(key.name, scopes, str(csrf))
        return None
