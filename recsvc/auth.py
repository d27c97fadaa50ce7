"""API keys with scopes. The service stores only each key's sha256; a presented key is hashed
and compared with every configured digest in constant time.

Configuration (RECSVC_API_KEYS, or one per line in RECSVC_API_KEYS_FILE)::

    <name>:<sha256 hex of the key>:<scope>+<scope>[:<requests per second>]

The optional last field overrides RECSVC_RATE_LIMIT for that key (0: unlimited).
Mint a key with ``recsvc keys mint --name web --scopes recs:read``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from recsvc.errors import AuthError, Forbidden

SCOPES = (
    "blocks:read",
    "recs:read",
    "events:write",
    "catalog:write",
    "metrics:read",
    "dashboard:read",
    "admin",
)
# A key with the scope on the left may also do what the scopes on the right allow. blocks:read
# is the publishable scope for website pages: it reads rendered blocks only. dashboard:read
# signs in to the dashboard (recsvc.dashboard) and looks; its actions need admin.
IMPLIED = {"admin": set(SCOPES), "recs:read": {"blocks:read"}}
_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+):(?P<digest>[0-9a-f]{64}):(?P<scopes>[a-z:+]+?)(?::(?P<rate>\d+))?$"
)


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    scopes: frozenset[str]
    rate: int | None = None  # requests per second; None: the service default


def parse_api_keys(text: str, origin: str) -> tuple[ApiKey, ...]:
    """Parse key lines (comma- or newline-separated); ValueError names the bad entry."""
    keys = []
    for number, entry in enumerate(re.split(r"[,\n]", text), start=1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        match = _LINE.match(entry)
        if match is None:
            raise ValueError(
                f"{origin} entry {number}: expected <name>:<sha256 hex>:<scopes>[:<rate>]"
            )
        scopes = frozenset(match["scopes"].split("+"))
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ValueError(
                f"{origin} entry {number}: unknown scope(s) {sorted(unknown)}; "
                f"scopes are {', '.join(SCOPES)}"
            )
        rate = None if match["rate"] is None else int(match["rate"])
        keys.append(ApiKey(match["name"], bytes.fromhex(match["digest"]), scopes, rate))
    return tuple(keys)


def mint(name: str, scopes: Iterable[str], rate: int | None = None) -> tuple[str, str]:
    """A new random key and the configuration line that grants it ``scopes`` (and its own
    rate limit, when ``rate`` is given)."""
    key = "rk_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    line = f"{name}:{digest}:{'+'.join(sorted(scopes))}"
    return key, line if rate is None else f"{line}:{rate}"


def granted_scopes(key: ApiKey) -> frozenset[str]:
    """The key's scopes and every scope they imply."""
    return frozenset(key.scopes).union(*(IMPLIED.get(scope, set()) for scope in key.scopes))


class Authenticator:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys
        self._granted = [granted_scopes(key) for key in keys]

    def authorise(self, presented: str | None, scope: str) -> ApiKey:
        """The key presented, if it exists and grants ``scope``; else AuthError (401) or
        Forbidden (403)."""
        if not presented:
            raise AuthError("an API key is required (Authorization: Bearer <key>)")
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for number, key in enumerate(self.keys):  # every digest is compared, found or not
            if hmac.compare_digest(key.digest, digest):
                found = number
        if found is None:
            raise AuthError("the API key is not valid")
        if scope not in self._granted[found]:
            raise Forbidden(f"the API key lacks the scope {scope!r}")
        return self.keys[found]
