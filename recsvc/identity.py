"""Customer keys: how emails and phone numbers are normalised, and how a request key maps to
the aliases a bundle knows. Shared by the trainer (linking) and the service (lookup), so both
normalise exactly alike.

Alias forms: ``id:<canonical id>``, ``<namespace or source name>:<raw id>``,
``email:<normalised address>``, ``phone:<E.164 number>``. Bundles, store keys and erasure
records hold a 16-byte BLAKE2b digest of each alias keyed with the deployment's secret
(``IdentityKey``), never the alias itself: without the secret a digest cannot be turned back
into an id or a phone number by hashing candidates.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import phonenumbers
from numpy.typing import NDArray

from recsvc.manifest import IdentityRulesSection

CANONICAL = "id"
EMAIL = "email"
PHONE = "phone"
SESSION = "session"  # an anonymous visitor: session:<id>, as the shop names the visit
SESSION_PREFIX = f"{SESSION}:"
DIGEST_BYTES = 16
SECRET_VARIABLE = "RECSVC_ID_SECRET"
RETIRED_VARIABLE = "RECSVC_ID_SECRETS_RETIRED"  # comma-separated, after a rotation
# Published, so it protects nothing: for the demo and tests only (the service refuses it with
# authentication on). A real secret: python -c 'import secrets; print(secrets.token_hex(32))'
DEVELOPMENT_SECRET = "recsvc-development-secret-not-for-production-use"
SECRET_LENGTHS = (32, 64)  # characters; BLAKE2b takes keys of at most 64 bytes
_FINGERPRINT_LABEL = b"recsvc identity key fingerprint"


class IdentityKey:
    """The deployment's secret for alias digests, and any secrets it replaced.

    Digests are keyed BLAKE2b (as fast as the unkeyed hash). ``retired`` secrets are never used
    to make a digest; erasure records written under them are still matched (``all_hex``).
    """

    __slots__ = ("_secret", "_retired", "_keyed", "fingerprint", "development")

    def __init__(self, secret: str, retired: Sequence[str] = ()) -> None:
        self._secret = _secret_bytes(secret, SECRET_VARIABLE)
        self._retired = tuple(_secret_bytes(old, RETIRED_VARIABLE) for old in retired)
        # Copying a hasher that has taken in the key costs less than hashing the key block
        # again (and less than an unkeyed hasher's construction): ~1.5 us an alias.
        self._keyed = hashlib.blake2b(key=self._secret, digest_size=DIGEST_BYTES)
        self.development = secret == DEVELOPMENT_SECRET
        # Recorded in each bundle so the service can tell a bundle made with another secret;
        # a keyed hash of a fixed label, so it reveals nothing about the secret.
        self.fingerprint = hashlib.blake2b(
            _FINGERPRINT_LABEL, key=self._secret, digest_size=DIGEST_BYTES
        ).hexdigest()

    @classmethod
    def development_key(cls) -> IdentityKey:
        return cls(DEVELOPMENT_SECRET)

    @classmethod
    def from_environment(cls, values: Mapping[str, str]) -> IdentityKey | None:
        """From RECSVC_ID_SECRET and RECSVC_ID_SECRETS_RETIRED; None when no secret is set.
        Raises ValueError naming the variable when a value is unusable."""
        secret = values.get(SECRET_VARIABLE, "").strip()
        retired = [s.strip() for s in values.get(RETIRED_VARIABLE, "").split(",") if s.strip()]
        if not secret:
            if retired:
                raise ValueError(f"{RETIRED_VARIABLE} is set but {SECRET_VARIABLE} is not")
            return None
        return cls(secret, retired)

    def digest(self, alias: str) -> bytes:
        hasher = self._keyed.copy()
        hasher.update(alias.encode("utf-8"))
        return hasher.digest()

    def hex(self, alias: str) -> str:
        return self.digest(alias).hex()

    def halves(self, alias: str) -> tuple[int, int]:
        value = self.digest(alias)
        return int.from_bytes(value[:8], "big"), int.from_bytes(value[8:], "big")

    def all_hex(self, alias: str) -> list[str]:
        """The alias's digest under the secret and under each retired one (current first):
        what an erasure record made before a rotation holds."""
        data = alias.encode("utf-8")
        return [
            hashlib.blake2b(data, key=key, digest_size=DIGEST_BYTES).hexdigest()
            for key in (self._secret, *self._retired)
        ]

    def is_listed(self, alias: str, digests: Container[str]) -> bool:
        """Whether ``alias`` is on an erasure list (``digests``, hex) under the secret or a
        retired one (records from before a rotation)."""
        return any(value in digests for value in self.all_hex(alias))

    @property
    def rotated(self) -> bool:
        return bool(self._retired)

    def __reduce__(self) -> tuple[type[IdentityKey], tuple[str, tuple[str, ...]]]:
        # Pickled for the trainer's Spark tasks (linking makes tokens there); the hasher
        # itself cannot be pickled.
        return IdentityKey, (
            self._secret.decode("ascii"),
            tuple(old.decode("ascii") for old in self._retired),
        )

    def __repr__(self) -> str:  # never the secret
        return f"IdentityKey(fingerprint={self.fingerprint[:8]}..., retired={len(self._retired)})"


def _secret_bytes(secret: str, variable: str) -> bytes:
    low, high = SECRET_LENGTHS
    if not low <= len(secret) <= high or not secret.isascii() or not secret.isprintable():
        raise ValueError(
            f"{variable}: a secret is {low} to {high} printable ASCII characters; make one with "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret.encode("ascii")


@dataclass(frozen=True)
class IdentityRules:
    strip_plus_tags: bool = False  # ann+news@x.com is ann@x.com
    dotless_domains: frozenset[str] = field(default_factory=frozenset)  # a.nn@gmail = ann@gmail
    default_region: str | None = None  # for phone numbers written without a country code

    def to_manifest(self) -> IdentityRulesSection:
        return IdentityRulesSection(
            strip_plus_tags=self.strip_plus_tags,
            dotless_domains=tuple(sorted(self.dotless_domains)),
            default_region=self.default_region,
        )

    @classmethod
    def from_manifest(cls, section: IdentityRulesSection) -> IdentityRules:
        return cls(
            strip_plus_tags=section.strip_plus_tags,
            dotless_domains=frozenset(section.dotless_domains),
            default_region=section.default_region,
        )


def normalise_email(raw: str, rules: IdentityRules) -> str | None:
    """Trimmed and lower-cased; plus tags and dots removed only where configured. None when
    the text is not an address (no single '@' with text on both sides)."""
    address = raw.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in local or any(c.isspace() for c in address):
        return None
    if rules.strip_plus_tags:
        local = local.split("+", 1)[0] or local
    if domain in rules.dotless_domains:
        local = local.replace(".", "") or local
    return f"{local}@{domain}"


def normalise_phone(raw: str, rules: IdentityRules) -> str | None:
    """E.164 (``+442079460958``), or None when it cannot be a phone number."""
    text = raw.strip()
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, rules.default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(alias: str) -> str:
    """Enough of an alias to recognise it in a report or on the dashboard, not enough to
    contact anyone: ``email:a***@example.com``, ``phone:+44***58``; other aliases as they are."""
    kind, _, value = alias.partition(":")
    if kind == EMAIL:
        local, _, domain = value.partition("@")
        return f"{kind}:{local[:1]}***@{domain}"
    if kind == PHONE:
        return f"{kind}:{value[:3]}***{value[-2:]}"
    return alias


def mask_key(key: str, rules: IdentityRules) -> str:
    """A request key as a viewer without ``admin`` may see it: an email or phone key
    normalised (as a lookup would) and masked, a session's id masked, any other key as it
    is. A value that does not normalise is hidden whole: it may still be an address someone
    mistyped."""
    prefix, colon, rest = key.partition(":")
    kind = prefix.lower()
    if is_session(key):
        return f"{prefix}:{rest[:2]}***"
    if not colon or kind not in (EMAIL, PHONE):
        return key
    normal = normalise_email(rest, rules) if kind == EMAIL else normalise_phone(rest, rules)
    return mask(f"{kind}:{normal}") if normal else f"{kind}:***"


def is_session(key: str) -> bool:
    """A ``session:<id>`` key (an anonymous visit), with an id."""
    return key.startswith(SESSION_PREFIX) and bool(key[len(SESSION_PREFIX) :].strip())


def normal_session(key: str) -> str:
    """A session key as every part of recsvc spells it: ``session:`` and the id, stripped
    (the alias ``request_aliases`` digests)."""
    return SESSION_PREFIX + key[len(SESSION_PREFIX) :].strip()


def request_aliases(key: str, rules: IdentityRules, namespaces: Iterable[str]) -> list[str]:
    """The aliases a request key may stand for, most specific first.

    A key is a canonical id (``12346``), ``<source or namespace>:<id>`` (``shop:12346``),
    ``email:<address>`` or ``phone:<number>``; the last two are normalised as in training.
    A canonical id that itself contains ':' still resolves: it is always tried first.
    """
    aliases = [f"{CANONICAL}:{key}"]
    prefix, colon, rest = key.partition(":")
    if not colon or not rest:
        return aliases
    if prefix.lower() == EMAIL:
        email = normalise_email(rest, rules)
        if email:
            aliases.append(f"{EMAIL}:{email}")
    elif prefix.lower() == PHONE:
        phone = normalise_phone(rest, rules)
        if phone:
            aliases.append(f"{PHONE}:{phone}")
    elif prefix == SESSION:
        aliases.append(normal_session(key))
    elif prefix in set(namespaces):
        aliases.append(f"{prefix}:{rest.strip()}")
    return aliases


# A bundle's alias table: digests' high and low halves, sorted, and each one's customer row.
AliasDigests = tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.int32]]


def alias_table(
    key: IdentityKey, customer_of: dict[str, str], customer_ids: Sequence[str]
) -> AliasDigests:
    """Alias digests (high and low halves, sorted) and the customer row of each, for the
    customers in the model. Built in flat buffers: at millions of aliases a Python tuple per
    alias would cost gigabytes."""
    row_of = {customer: row for row, customer in enumerate(customer_ids)}
    digests = bytearray()
    rows = array("i")
    for alias, customer in customer_of.items():
        row = row_of.get(customer)
        if row is not None:
            digests += key.digest(alias)
            rows.append(row)
    halves = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    order = np.lexsort((halves[:, 1], halves[:, 0]))
    return (
        np.ascontiguousarray(halves[order, 0]),
        np.ascontiguousarray(halves[order, 1]),
        np.frombuffer(rows, dtype=np.int32)[order],
    )


class AliasIndex:
    """Resolves request keys to customer rows through a bundle's alias digests."""

    def __init__(
        self,
        high: NDArray[np.uint64],
        low: NDArray[np.uint64],
        rows: NDArray[np.int32],
        rules: IdentityRules,
        namespaces: Iterable[str],
        key: IdentityKey,
    ) -> None:
        self.high, self.low, self.rows = high, low, rows
        self.key = key  # the secret the bundle's digests were made with
        # Python ints straight from the buffers: indexing the arrays builds numpy scalars.
        self._high, self._low, self._rows = high.data, low.data, rows.data
        self.rules = rules
        self.namespaces = frozenset(namespaces)
        # Keys repeat (a visitor's pages, an email's re-renders); hashing and a binary
        # search cost ~10 us, a hit ~1 us.
        self.row = functools.lru_cache(maxsize=65536)(self._row)  # type: ignore[method-assign]

    def of_row(self, row: int) -> list[tuple[np.uint64, np.uint64]]:
        """The digests of every alias of one customer (a scan; for rare operations)."""
        positions = np.flatnonzero(self.rows == row)
        return [(self.high[p], self.low[p]) for p in positions]

    def row(self, key: str) -> int | None:
        """The customer row a request key names, or None."""
        return self._row(key)

    def _row(self, key: str) -> int | None:
        highs, count = self._high, len(self._high)
        for alias in request_aliases(key, self.rules, self.namespaces):
            high, low = self.key.halves(alias)
            position: int = self.high.searchsorted(np.uint64(high)).item()
            # Digests sharing the high half (never seen in practice) lie side by side.
            while position < count and highs[position] == high:
                if self._low[position] == low:
                    row: int = self._rows[position]
                    return row
                position += 1
        return None
