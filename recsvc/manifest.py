"""The bundle's manifest.json: one typed definition of every section, with one encode and one
decode. The trainer fills the sections, the service reads them as attributes.

Every section is optional with a default, so a bundle written before a section existed (or
a small one made by hand) still loads; unknown keys are ignored. ``format`` names the files'
layout (recsvc.bundle): this service writes ``BUNDLE_FORMAT`` and reads ``READ_FORMATS``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from recsvc.defaults import DEFAULT_CHANNELS
from recsvc.errors import BundleCorrupt
from recsvc.policy import TierPolicy

BUNDLE_FORMAT = 4  # per-customer arrays in .npy files, memory-mapped
READ_FORMATS = (3, BUNDLE_FORMAT)  # format 3: every array in a .npz, read into memory


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    categories: tuple[str, ...] = ()  # the taxonomy's category names, in bit order


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    content: int = 0
    products: int = 4


class Channels(msgspec.Struct, frozen=True, kw_only=True):
    """Where website blocks and emails link to, and what each slot holds."""

    base_url: str = DEFAULT_CHANNELS["base_url"]
    product_path: str = DEFAULT_CHANNELS["product_path"]
    image_path: str = DEFAULT_CHANNELS["image_path"]
    currency_symbol: str = DEFAULT_CHANNELS["currency_symbol"]
    slots: dict[str, Slot] = msgspec.field(
        default_factory=lambda: {
            name: Slot(**slot) for name, slot in DEFAULT_CHANNELS["slots"].items()
        }
    )
    utm: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_CHANNELS["utm"]))


class IdentityRulesSection(msgspec.Struct, frozen=True, kw_only=True):
    strip_plus_tags: bool = False
    dotless_domains: tuple[str, ...] = ()
    default_region: str | None = None


class Conflict(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    examples: tuple[str, ...] = ()  # masked


class InvalidContacts(msgspec.Struct, frozen=True, kw_only=True):
    email: int = 0
    phone: int = 0


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    list: str | None  # the erasure list read
    list_present: bool
    rows_erased: int
    warning: str | None = None  # written only when no list was configured


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Linking rules and report, the key prefixes the service accepts and the fingerprint of
    the secret the alias digests were keyed with (None: made by hand, taken as it is)."""

    customers: int = 0
    aliases: int = 0
    customers_with_several_aliases: int = 0
    conflicts: dict[str, Conflict] = {}
    rules: IdentityRulesSection = IdentityRulesSection()
    invalid: InvalidContacts = InvalidContacts()
    erasures: ErasureReport | None = None
    namespaces: tuple[str, ...] = ()
    key_fingerprint: str | None = None


class Accounting(msgspec.Struct, frozen=True, kw_only=True):
    """One source's rows; the parts add up to ``rows_read``."""

    rows_read: int = 0
    used: int = 0
    duplicate: int = 0
    cancellation: int = 0
    anonymous: int = 0
    adjustment: int = 0
    erased: int = 0
    quarantined: dict[str, int] = {}  # by reason


class Contribution(msgspec.Struct, frozen=True, kw_only=True):
    purchases: int = 0
    customers: int = 0
    items: int = 0


class SourceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a source is and what it contributed (provenance)."""

    name: str
    kind: str
    location: str
    customer_namespace: str
    trust: float
    currency_rate: float
    timezone: str | None
    contribution: Contribution


class Quarantine(msgspec.Struct, frozen=True, kw_only=True):
    max_share: dict[str, float] = {}
    over_limit: dict[str, float] = {}  # published anyway: --allow-quarantine
    allow_quarantine: bool = False


class Returns(msgspec.Struct, frozen=True, kw_only=True):
    returns: int = 0
    charged_to_purchase_date: int = 0
    unmatched: int = 0
    clamped: int = 0
    clamped_quantity: float = 0.0


class ItemRulesSection(msgspec.Struct, frozen=True, kw_only=True):
    non_product_ids: tuple[str, ...] = ()
    non_product_pattern: str | None = None


class Parameters(msgspec.Struct, frozen=True, kw_only=True):
    model: dict[str, int | float | str] = {}  # as training.config.ModelParams has them
    weights: dict[str, float] = {}  # its [model.weights]: each interaction kind's weight
    tuned_from: str | None = None
    items: ItemRulesSection = ItemRulesSection()


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    customers: int = 0
    items: int = 0


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """The whole manifest. ``publish_bundle`` sets format, version, created, counts, files."""

    model: str | None = None
    data_fingerprint: str | None = None
    data_as_of: str | None = None  # ISO 8601: the latest event in the data
    parameters: Parameters = Parameters()
    accounting: dict[str, Accounting] = {}
    # Each event log's records of other kinds (views, carts, clicks, logins...): per source,
    # per kind, ``read`` and where they went (training.interactions.OUTCOMES), adding up to it.
    interactions: dict[str, dict[str, dict[str, int]]] = {}
    # Receipt time (seconds since the epoch) of the last event read from the service's event
    # log; the service applies only events received later, so none counts twice.
    events_through: float | None = None
    tiers: TierPolicy = TierPolicy()
    catalog: Catalog = Catalog()
    channels: Channels = msgspec.field(default_factory=Channels)
    sources: tuple[SourceSummary, ...] = ()
    quarantine: Quarantine = Quarantine()
    returns: Returns = Returns()
    identity: Identity = Identity()
    format: int = BUNDLE_FORMAT
    version: str = ""
    created: str | None = None  # ISO 8601, UTC
    counts: Counts = Counts()
    files: dict[str, str] = {}  # sha256 of every other file in the bundle

    def encode(self) -> bytes:
        # Through json for the indented, ASCII-only text bundles have always had.
        return (json.dumps(msgspec.to_builtins(self), indent=2) + "\n").encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        """Raises BundleCorrupt, saying what is wrong, for anything but a manifest of a format
        this service reads."""
        try:
            parsed: Any = msgspec.json.decode(raw)
        except msgspec.DecodeError as error:
            raise BundleCorrupt(f"unreadable ({_describe(error)})") from None
        # The format first: another format's sections need not fit these.
        if not isinstance(parsed, dict) or not isinstance(parsed.get("files"), dict):
            raise BundleCorrupt("has no 'files' table")
        if parsed.get("format") not in READ_FORMATS:
            readable = " and ".join(str(number) for number in READ_FORMATS)
            raise BundleCorrupt(
                f"format {parsed.get('format')!r}, this service reads formats {readable}"
            )
        try:
            return msgspec.convert(parsed, type=cls)
        except msgspec.ValidationError as error:
            raise BundleCorrupt(f"not a bundle manifest: {error}") from None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
