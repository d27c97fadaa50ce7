"""The training config (TOML): sources with their column mappings, item rules, model parameters.

Each table is a typed msgspec Struct: its keys, types, ranges and defaults are declared once,
on the fields. ``parse_config`` decodes the TOML into them (unknown keys are errors), turns
msgspec's errors into messages naming the key path, the source and what is allowed, and then
checks the rules that span several keys (``_validate``).
"""

from __future__ import annotations

import copy
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
import phonenumbers
from msgspec import Meta, Struct

from recsvc.defaults import DEFAULT_CHANNELS
from recsvc.identity import CANONICAL, EMAIL, PHONE, SESSION, IdentityKey, IdentityRules
from recsvc.logrecords import EVENT_FIELDS
from recsvc.manifest import Channels, Slot
from training.errors import ConfigError
from training.identity import LinkRules
from training.interactions import InteractionWeights
from training.tiers import TierConfig, TierLevel

SourceKind = Literal["csv", "jsonl", "parquet", "postgresql", "events"]
SOURCE_KINDS: tuple[str, ...] = get_args(SourceKind)
# The service's event log (recsvc.events.EventLog) has fixed columns; its customer column holds
# request keys (canonical id, <source>:<id>, email:, phone:).
# The event log's columns (recsvc.logrecords.EventRecord) each canonical field reads.
EVENTS_COLUMNS = {
    "order_id": "event_id",
    "customer_id": "customer",
    "item_id": "item_id",
    "quantity": "quantity",
    "unit_price": "price",
    "timestamp": "timestamp",
}
assert set(EVENTS_COLUMNS.values()) <= set(EVENT_FIELDS)
# Canonical event fields; a source maps each it has to one of its own column names.
FIELDS = (
    "customer_id",
    "email",
    "phone",
    "item_id",
    "quantity",
    "unit_price",
    "timestamp",
    "order_id",
    "description",
    "country",
)
REQUIRED_FIELDS = ("item_id",)
# Input bounds, per source unless it declares its own.
MAX_QUARANTINE_SHARE = 0.05
MAX_LINE_BYTES = 1 << 20  # also the block size the readers parse in
MAX_DECOMPRESSED_BYTES = 4 << 30

NAME_PATTERN = "^[A-Za-z0-9_-]+$"
# What a pattern allows, in words, for error messages.
PATTERN_WORDS = {NAME_PATTERN: "only letters, digits, '_' and '-'"}

Text = Annotated[str, Meta(min_length=1)]


def _range(low: float, high: float) -> Meta:
    return Meta(ge=low, le=high)


class SourceConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[sources]]`` table; which keys a kind takes is ``SOURCE_OPTIONS``."""

    name: Annotated[str, Meta(min_length=1, pattern=NAME_PATTERN)]
    kind: SourceKind
    columns: dict[str, Text] = msgspec.field(default_factory=dict)  # canonical field -> column
    path: Text | None = None  # files: a glob, relative to the config file unless absolute
    dsn: Text | None = None  # postgresql: a libpq connection string...
    dsn_env: Text | None = None  # ...or the environment variable that holds one
    table: Text | None = None  # postgresql: a table ("schema.table")...
    query: Text | None = None  # ...or a SELECT
    chunk_rows: Annotated[int, _range(1, 10_000_000)] = 50_000  # postgresql: rows per round trip
    customer_namespace: Text = "customer"
    timestamp_format: Text | None = None
    timezone: Text = "UTC"  # of timestamps written without an offset
    currency_rate: Annotated[float, _range(1e-9, 1e9)] = 1.0  # unit price x rate = shop price
    trust: Annotated[float, _range(1e-9, 1e3)] = 1.0  # weight of its purchases in training
    cancellation_prefix: Text | None = None  # order ids starting with it are cancellations
    encoding: Text = "utf-8"
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] = ","
    # More of its rows quarantined than this share fails the run (see training.pipeline).
    max_quarantine_share: Annotated[float, _range(0.0, 1.0)] = MAX_QUARANTINE_SHARE
    # files: the longest line or JSON record read, and the most one compressed file may hold
    max_line_bytes: Annotated[int, _range(1 << 16, 1 << 30)] = MAX_LINE_BYTES
    max_decompressed_bytes: Annotated[int, _range(1, 1 << 50)] = MAX_DECOMPRESSED_BYTES
    base_dir: Path = Path()  # the config file's folder, set by the loader, never by the TOML

    def files(self) -> list[Path]:
        return [] if self.path is None else matching_files(self.base_dir / self.path)

    def __repr__(self) -> str:
        """Without ``dsn``'s value, which may hold a password."""
        shown = (
            f"{name}={'<hidden>' if name == 'dsn' and value else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"SourceConfig({', '.join(shown)})"


def matching_files(pattern: Path) -> list[Path]:
    """The files a glob pattern matches (a plain path: itself, if it exists), sorted."""
    if pattern.is_absolute():
        return sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
    return sorted(Path().glob(str(pattern)))


_COMMON = ("name", "kind", "trust", "max_quarantine_share")
_MAPPED = (
    "columns",
    "customer_namespace",
    "timestamp_format",
    "timezone",
    "currency_rate",
    "cancellation_prefix",
)
_FILES = ("path", "max_line_bytes", "max_decompressed_bytes")
_TEXT = ("encoding", "delimiter")
_DATABASE = ("dsn", "dsn_env", "table", "query", "chunk_rows")
# The keys each source kind takes; an event log's columns are fixed (EVENTS_COLUMNS).
SOURCE_OPTIONS: dict[str, frozenset[str]] = {
    "csv": frozenset(_COMMON + _MAPPED + _FILES + _TEXT),
    "jsonl": frozenset(_COMMON + _MAPPED + _FILES + _TEXT),
    "parquet": frozenset(_COMMON + _MAPPED + _FILES + _TEXT),
    "postgresql": frozenset(_COMMON + _MAPPED + _DATABASE),
    "events": frozenset(_COMMON + _FILES),
}


class ItemRules(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Which item ids are not products (postage, fees, discounts, vouchers): set aside; and
    the optional crosswalk from source item ids to catalog items and groups of editions."""

    non_product_ids: frozenset[str] = frozenset()  # compared stripped and upper-cased
    non_product_pattern: Text | None = None
    crosswalk: Path | None = None
    taxonomy: Path | None = None  # TOML [categories] name = [keywords]
    # Never recommended by the bundle (still counted in history): these ids, and the items
    # the service's catalog log (a RECSVC_EVENTS_DIR) last marked available=false.
    discontinued: frozenset[str] = frozenset()  # compared stripped and upper-cased
    catalog_log: Path | None = None  # a directory of catalog-*.jsonl; may not exist yet

    def is_non_product(self, item_id: str) -> bool:
        if item_id in self.non_product_ids:
            return True
        return bool(self.non_product_pattern and re.search(self.non_product_pattern, item_id))


ItemItemKind = Literal["auto", "ease", "knn"]


class ModelParams(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """ALS on BM25-weighted, time-decayed purchases, blended with an item-item model and a
    trending-items prior.

    Score of an item for a customer: z(ALS score) + item_item_weight * z(item-item score) +
    trend_weight * z(log(1 + trending sales)), each z over the catalog; trending sales decay
    with ``trend_half_life_days``. The item-item score sums, over the customer's purchases
    (time-decayed), the item's weight among each purchase's ``neighbours``
    (``training.itemitem``). Weights of 0 give plain ALS. Ranges are inclusive; bm25_b = 1
    makes implicit divide by zero. ``weights``: interactions as weaker feedback in the
    matrix both models learn from (off by default).
    """

    factors: Annotated[int, _range(1, 4096)] = 64
    regularization: Annotated[float, _range(1e-9, 1e6)] = 1.0
    alpha: Annotated[float, _range(1e-9, 1e6)] = 1.0
    iterations: Annotated[int, _range(1, 1000)] = 15
    bm25_k1: Annotated[float, _range(1e-9, 1e6)] = 100.0
    bm25_b: Annotated[float, _range(0.0, 0.99)] = 0.8
    half_life_days: Annotated[float, _range(1e-3, 1e6)] = 30.0
    trend_half_life_days: Annotated[float, _range(1e-3, 1e6)] = 14.0
    trend_weight: Annotated[float, _range(0.0, 100.0)] = 2.0
    # "ease": EASE^R (closed form); "knn": BM25 item-kNN; "auto": EASE^R up to
    # training.itemitem.EASE_MAX_ITEMS catalog items, kNN beyond.
    item_item: ItemItemKind = "auto"
    item_item_weight: Annotated[float, _range(0.0, 100.0)] = 0.5
    ease_regularization: Annotated[float, _range(1e-6, 1e9)] = 300.0
    neighbours: Annotated[int, _range(1, 1000)] = 100  # per item, kept in the bundle
    seed: Annotated[int, _range(0, 2**31 - 1)] = 42
    # per customer, precomputed for the service's fast path (0: none)
    candidates: Annotated[int, _range(0, 1000)] = 50
    weights: InteractionWeights = InteractionWeights()


class EngineConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What runs the merge's SQL (``training.engine``): DuckDB in the trainer's process, or
    Spark SQL at ``master``, with ``conf`` passed to either as written."""

    kind: Literal["duckdb", "spark"] = "duckdb"
    master: Text = "local[2]"  # spark only: local[N], spark://host:port, yarn, k8s://...
    # As the engine takes them: Spark's ("spark.executor.memory" = "8g") or DuckDB's settings
    # ("memory_limit" = "4GB", "threads" = "4"; training.engine.DUCKDB_SETTINGS are defaults).
    conf: dict[str, str] = {}


@dataclass(frozen=True)
class IdentityConfig:
    rules: IdentityRules = field(default_factory=IdentityRules)
    links: LinkRules = field(default_factory=LinkRules)
    crosswalk: Path | None = None  # CSV: left,right = two keys of one customer
    # The service's erasure list, or a glob of several hosts' (see ``erasure_files``).
    erasures: Path | None = None
    # Keys the alias digests: RECSVC_ID_SECRET, set by the CLI from the environment, never
    # from the TOML (a config file gets copied and committed).
    key: IdentityKey = field(default_factory=IdentityKey.development_key)

    def erasure_files(self) -> list[Path]:
        """The erasure lists ``erasures`` names: a file, or a glob matching every host's. None
        may exist yet (nobody erased), which the manifest notes."""
        return [] if self.erasures is None else matching_files(self.erasures)


@dataclass(frozen=True)
class ChannelsConfig:
    """Website blocks and email picks: where links point, what each slot holds."""

    base_url: str = DEFAULT_CHANNELS["base_url"]
    product_path: str = DEFAULT_CHANNELS["product_path"]
    image_path: str = DEFAULT_CHANNELS["image_path"]
    currency_symbol: str = DEFAULT_CHANNELS["currency_symbol"]
    content: Path | None = None  # JSON content catalog (banners, articles, offers)
    slots: dict[str, dict[str, int]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_CHANNELS["slots"])
    )
    utm: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CHANNELS["utm"]))

    def to_manifest(self) -> Channels:
        return Channels(
            base_url=self.base_url,
            product_path=self.product_path,
            image_path=self.image_path,
            currency_symbol=self.currency_symbol,
            slots={name: Slot(**slot) for name, slot in self.slots.items()},
            utm=dict(self.utm),
        )


@dataclass(frozen=True)
class TrainConfig:
    sources: tuple[SourceConfig, ...]
    items: ItemRules = field(default_factory=ItemRules)
    model: ModelParams = field(default_factory=ModelParams)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    tiers: TierConfig = field(default_factory=TierConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tuned_from: Path | None = None  # the file whose [model] overrode the config's


# The TOML tables whose shape differs from the objects the trainer uses; their defaults are
# those objects'.


class IdentityTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    strip_plus_tags: bool = IdentityRules.strip_plus_tags
    dotless_domains: tuple[str, ...] = ()
    default_region: Text | None = None  # a region code such as GB
    link_distinct_ids: bool = LinkRules.link_distinct_ids
    max_cluster_ids: Annotated[int, _range(1, 10_000)] = LinkRules.max_cluster_ids
    crosswalk: Path | None = None  # must exist
    erasures: Path | None = None  # may not exist yet


class TierLevelTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Text
    min_spend: Annotated[float, _range(0.0, 1e12)] | None = None  # method "thresholds"
    min_percentile: Annotated[float, _range(0.0, 100.0)] | None = None  # method "percentiles"
    perks: tuple[str, ...] = ()
    premium_boost: Annotated[float, _range(0.0, 10.0)] = 0.0


class TiersTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    window_days: Annotated[float, _range(1.0, 3650.0)] = TierConfig.window_days
    method: Literal["thresholds", "percentiles"] = "thresholds"
    levels: tuple[TierLevelTable, ...] = ()  # required when [tiers] is present
    price_affinity: Annotated[float, _range(0.0, 10.0)] = TierConfig.price_affinity
    premium_price_percentile: Annotated[float, _range(0.0, 100.0)] = (
        TierConfig.premium_price_percentile
    )
    exclusive_items: Path | None = None
    lapsing_factor: Annotated[float, _range(1.0, 100.0)] = TierConfig.lapsing_factor
    min_orders_for_interval: Annotated[int, _range(2, 1000)] = TierConfig.min_orders_for_interval
    min_orders_for_timing: Annotated[int, _range(1, 1000)] = TierConfig.min_orders_for_timing
    spend_thresholds: tuple[Annotated[float, Meta(gt=0)], ...] = ()
    order_thresholds: tuple[Annotated[int, Meta(gt=0)], ...] = ()
    thank_you_spend: Annotated[float, _range(0.0, 1e12)] | None = None
    thank_you_orders: Annotated[int, _range(1, 1_000_000)] | None = None
    min_opens_for_timing: Annotated[int, _range(1, 1000)] = TierConfig.min_opens_for_timing
    disengaged_opens: Annotated[int, _range(1, 1000)] = TierConfig.disengaged_opens


class SlotTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    content: Annotated[int, _range(0, 10)] = 0
    products: Annotated[int, _range(0, 50)] = 4


class EmailTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    utm_source: Text = DEFAULT_CHANNELS["utm"]["utm_source"]
    utm_medium: Text = DEFAULT_CHANNELS["utm"]["utm_medium"]
    utm_campaign: Text = DEFAULT_CHANNELS["utm"]["utm_campaign"]


class ChannelsTable(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    base_url: Text = ChannelsConfig.base_url
    product_path: Text = ChannelsConfig.product_path  # starts with / and holds {item_id}
    image_path: Text = ChannelsConfig.image_path
    currency_symbol: Text = ChannelsConfig.currency_symbol
    content: Path | None = None
    slots: dict[str, SlotTable] = {}  # named with a-z, 0-9, '_' and '-'
    email: EmailTable = EmailTable()


class ConfigFile(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole file, as written."""

    sources: Annotated[tuple[SourceConfig, ...], Meta(min_length=1)]
    items: ItemRules = ItemRules()
    model: ModelParams = ModelParams()
    identity: IdentityTable = IdentityTable()
    tiers: TiersTable = TiersTable()
    channels: ChannelsTable = ChannelsTable()
    engine: EngineConfig = EngineConfig()


class TunedFile(Struct, frozen=True, forbid_unknown_fields=True):
    """What ``recsvc tune`` writes: a [model] table (checked as the config's) and notes."""

    model: dict[str, Any] = {}
    validation: dict[str, Any] = {}


def tuned_path(config_path: Path) -> Path:
    """Where ``recsvc tune`` writes, and ``load_config`` reads, tuned model parameters."""
    return config_path.with_name(f"{config_path.stem}.tuned.toml")


def load_config(path: Path) -> TrainConfig:
    """Read a config; a sibling ``<name>.tuned.toml`` overrides its [model] table."""
    raw = _read_toml(path)
    tuned = tuned_path(path)
    tuned_from = None
    if tuned.is_file():
        tuned_raw = _read_toml(tuned)
        tuned_file = _decode(tuned_raw, TunedFile, Path(), str(tuned))
        if isinstance(raw.get("model", {}), dict):
            raw["model"] = {**raw.get("model", {}), **tuned_file.model}
        tuned_from = tuned
    config = parse_config(raw, base_dir=path.resolve().parent, origin=str(path))
    return TrainConfig(
        sources=config.sources,
        items=config.items,
        model=config.model,
        identity=config.identity,
        tiers=config.tiers,
        channels=config.channels,
        engine=config.engine,
        tuned_from=tuned_from,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error


def parse_config(raw: dict[str, Any], base_dir: Path, origin: str = "config") -> TrainConfig:
    """Decode a parsed TOML document; paths in it are relative to ``base_dir``."""
    return _validate(_decode(raw, ConfigFile, base_dir, origin), raw, base_dir, origin)


def _validate(file: ConfigFile, raw: dict[str, Any], base_dir: Path, origin: str) -> TrainConfig:
    """The rules that span keys; ``raw`` tells which keys were written."""
    sources = tuple(
        _source(source, raw["sources"][index], base_dir, f"{origin}: sources[{index}]")
        for index, source in enumerate(file.sources)
    )
    names = [s.name for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{origin}: source names must be unique, repeated: {duplicated}")
    return TrainConfig(
        sources=sources,
        items=_items(file.items, f"{origin}: items"),
        model=file.model,
        identity=_identity(file.identity, f"{origin}: identity"),
        tiers=_tiers(file.tiers, bool(raw.get("tiers")), f"{origin}: tiers"),
        channels=_channels(file.channels, f"{origin}: channels"),
        engine=_engine(file.engine, raw.get("engine", {}), f"{origin}: engine"),
    )


def _source(source: SourceConfig, raw: dict[str, Any], base_dir: Path, where: str) -> SourceConfig:
    where = f"{where} ({source.name})"
    _reject_unknown(raw, SOURCE_OPTIONS[source.kind], where)
    columns = source.columns
    if source.kind == "events":
        columns = EVENTS_COLUMNS
    else:
        if "columns" not in raw:
            raise ConfigError(
                f"{where}.columns: a table mapping fields to column names is required"
            )
        _reject_unknown(columns, set(FIELDS), f"{where}.columns")
        for required in REQUIRED_FIELDS:
            if required not in columns:
                raise ConfigError(f"{where}.columns.{required}: required")
    if source.kind == "postgresql":
        if (source.dsn is None) == (source.dsn_env is None):
            raise ConfigError(f"{where}: set exactly one of dsn or dsn_env")
        if (source.table is None) == (source.query is None):
            raise ConfigError(f"{where}: set exactly one of table or query")
    elif source.path is None:
        raise ConfigError(f"{where}.path: required, a non-empty string")
    try:
        zoneinfo.ZoneInfo(source.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}.timezone: {source.timezone!r} is not an IANA time zone"
        ) from None
    namespace = source.customer_namespace
    if namespace in (EMAIL, PHONE, CANONICAL, SESSION) or ":" in namespace:
        raise ConfigError(f"{where}.customer_namespace: {namespace!r} is reserved or has ':'")
    return msgspec.structs.replace(source, columns=dict(columns), base_dir=base_dir)


def _engine(engine: EngineConfig, raw: dict[str, Any], where: str) -> EngineConfig:
    if engine.kind != "spark":
        spark_only = sorted(set(raw) & {"master"})
        if spark_only:
            raise ConfigError(f'{where}: {spark_only} only apply to kind = "spark"')
    return engine


def _items(items: ItemRules, where: str) -> ItemRules:
    if items.non_product_pattern is not None:
        try:
            re.compile(items.non_product_pattern)
        except re.error as error:
            raise ConfigError(f"{where}.non_product_pattern: invalid regex ({error})") from None
    _require_files(items, ("crosswalk", "taxonomy"), where)
    ids = frozenset(i.strip().upper() for i in items.non_product_ids)
    return msgspec.structs.replace(items, non_product_ids=ids)


def _identity(table: IdentityTable, where: str) -> IdentityConfig:
    region = table.default_region
    if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{where}.default_region: {region!r} is not a region code (e.g. GB)")
    _require_files(table, ("crosswalk",), where)
    return IdentityConfig(
        rules=IdentityRules(
            strip_plus_tags=table.strip_plus_tags,
            dotless_domains=frozenset(d.strip().lower() for d in table.dotless_domains),
            default_region=None if region is None else region.upper(),
        ),
        links=LinkRules(
            link_distinct_ids=table.link_distinct_ids, max_cluster_ids=table.max_cluster_ids
        ),
        crosswalk=table.crosswalk,
        erasures=table.erasures,
    )


def _tiers(table: TiersTable, written: bool, where: str) -> TierConfig:
    if not written:
        return TierConfig()
    if not table.levels:
        raise ConfigError(f"{where}.levels: [[tiers.levels]] must declare at least one tier")
    bound, other = ("min_spend", "min_percentile")
    if table.method == "percentiles":
        bound, other = other, bound
    levels = []
    for index, level in enumerate(table.levels):
        at = f"{where}.levels[{index}]"
        if getattr(level, other) is not None:
            allowed = sorted(set(level.__struct_fields__) - {other})
            raise ConfigError(f"{at}: unknown key(s) [{other!r}]; allowed: {allowed}")
        value = getattr(level, bound)
        if value is None:
            raise ConfigError(f"{at}.{bound}: required")
        levels.append(
            TierLevel(
                name=level.name,
                min_spend=level.min_spend,
                min_percentile=level.min_percentile,
                perks=level.perks,
                premium_boost=level.premium_boost,
            )
        )
    if getattr(levels[0], bound) != 0:
        raise ConfigError(f"{where}.levels[0].{bound}: the first tier must start at 0")
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.levels: tier names must be unique")
    _require_files(table, ("exclusive_items",), where)
    return TierConfig(
        window_days=table.window_days,
        method=table.method,
        levels=tuple(levels),
        price_affinity=table.price_affinity,
        premium_price_percentile=table.premium_price_percentile,
        exclusive_items=table.exclusive_items,
        lapsing_factor=table.lapsing_factor,
        min_orders_for_interval=table.min_orders_for_interval,
        min_orders_for_timing=table.min_orders_for_timing,
        spend_thresholds=tuple(sorted(table.spend_thresholds)),
        order_thresholds=tuple(sorted(table.order_thresholds)),
        thank_you_spend=table.thank_you_spend,
        thank_you_orders=table.thank_you_orders,
        min_opens_for_timing=table.min_opens_for_timing,
        disengaged_opens=table.disengaged_opens,
    )


def _channels(table: ChannelsTable, where: str) -> ChannelsConfig:
    base_url = table.base_url.rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
        raise ConfigError(f"{where}.base_url: must be an absolute http(s) URL, got {base_url!r}")
    for key in ("product_path", "image_path"):
        path = getattr(table, key)
        if not path.startswith("/") or "{item_id}" not in path:
            raise ConfigError(f"{where}.{key}: must start with / and contain {{item_id}}")
    for name in table.slots:
        if not re.fullmatch(r"[a-z0-9_-]+", name):
            raise ConfigError(
                f"{where}.slots.{name}: a slot is a table named with a-z, 0-9, _ or -"
            )
    _require_files(table, ("content",), where)
    defaults = ChannelsConfig()
    slots = defaults.slots | {
        name: {"content": slot.content, "products": slot.products}
        for name, slot in table.slots.items()
    }
    return ChannelsConfig(
        base_url=base_url,
        product_path=table.product_path,
        image_path=table.image_path,
        currency_symbol=table.currency_symbol,
        content=table.content,
        slots=slots,
        utm=msgspec.structs.asdict(table.email),
    )


def _require_files(table: Struct, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        path = getattr(table, key)
        if path is not None and not path.is_file():
            raise ConfigError(f"{where}.{key}: file {path} not found")


def _reject_unknown(raw: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


# From msgspec's errors to the project's wording.


def _decode(raw: dict[str, Any], kind: type[_T], base_dir: Path, origin: str) -> _T:
    def paths(cls: type, value: Any) -> Any:
        """A path in the config is relative to the config file."""
        if cls is not Path:
            raise NotImplementedError(cls)
        if not isinstance(value, str) or not value:
            raise TypeError
        return Path(value) if Path(value).is_absolute() else base_dir / value

    try:
        return msgspec.convert(raw, kind, dec_hook=paths)
    except msgspec.ValidationError as error:
        raise ConfigError(_explain(str(error), raw, kind, origin)) from None


_T = TypeVar("_T")
_MISSING: Any = object()
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"Object contains unknown field `(\w+)`")
_REQUIRED = re.compile(r"Object missing required field `(\w+)`")


def _explain(message: str, raw: Any, kind: type, origin: str) -> str:
    """``Expected `int` >= 1 - at `$.sources[0].chunk_rows``` becomes ``train.toml:
    sources[0] (shop).chunk_rows: must be an integer from 1 to 1e+07, got 0``."""
    found = _AT.match(message)
    assert found is not None
    value, info, where = raw, msgspec.inspect.type_info(kind), ""
    for name, index in _STEP.findall(found["path"] or ""):
        info = _unwrap(info)
        if name:
            value = value.get(name, _MISSING) if isinstance(value, dict) else _MISSING
            info = next(f.type for f in _fields(info) if f.name == name)
            where += f".{name}" if where else name
        elif index == "...":  # a dict's value; msgspec does not say which
            key, value = _first_bad(value, info)
            info = info.value_type
            where += f".{key}"
        else:
            value = value[int(index)]
            info = info.item_type
            where += f"[{index}]"
            if where.startswith("sources[") and isinstance(value, dict):
                name_value = value.get("name")
                if isinstance(name_value, str) and re.fullmatch(NAME_PATTERN, name_value):
                    where += f" ({name_value})"
    info = _unwrap(info)
    at = f"{origin}: {where}" if where else origin
    if unknown := _UNKNOWN.match(found["what"]):
        allowed = sorted(f.name for f in _fields(info) if f.name != "base_dir")
        if info.cls is SourceConfig and value.get("kind") in SOURCE_OPTIONS:
            allowed = sorted(SOURCE_OPTIONS[value["kind"]])
        unknown_keys = sorted(set(value) - set(allowed)) or [unknown[1]]
        return f"{at}: unknown key(s) {unknown_keys}; allowed: {allowed}"
    if required := _REQUIRED.match(found["what"]):
        key = required[1]
        if key == "sources":
            return f"{origin}: [[sources]] must declare at least one source"
        expected = _expected(_unwrap(next(f.type for f in _fields(info) if f.name == key)))
        return f"{at}.{key}: required, {expected.removeprefix('must be ')}"
    if isinstance(info, msgspec.inspect.LiteralType):
        values = SOURCE_KINDS if set(info.values) == set(SOURCE_KINDS) else info.values
        return f"{at}: {value!r} is not one of {', '.join(map(str, values))}"
    if (
        isinstance(info, msgspec.inspect.StrType)
        and info.pattern in PATTERN_WORDS
        and isinstance(value, str)
    ):
        return f"{at}: {value!r} may hold {PATTERN_WORDS[info.pattern]}"
    if where == "sources" and isinstance(value, list) and not value:
        return f"{origin}: [[sources]] must declare at least one source"
    expected = _expected(info)
    return f"{at}: {expected}" if value is _MISSING else f"{at}: {expected}, got {value!r}"


def _unwrap(info: msgspec.inspect.Type) -> Any:
    """X | None is X here: None cannot be written in TOML."""
    if isinstance(info, msgspec.inspect.UnionType):
        types = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(types) == 1:
            return types[0]
    if isinstance(info, msgspec.inspect.Metadata):
        return info.type
    return info


def _fields(info: Any) -> tuple[msgspec.inspect.Field, ...]:
    return info.fields if isinstance(info, msgspec.inspect.StructType) else ()


def _first_bad(value: Any, info: Any) -> tuple[str, Any]:
    target: Any = dict[str, _python_type(info.value_type)]  # type: ignore[misc]
    for key, item in value.items():
        try:
            msgspec.convert({"v": item}, target)
        except (msgspec.ValidationError, TypeError):
            return key, item
    return "...", _MISSING


def _python_type(info: Any) -> Any:
    if isinstance(info, msgspec.inspect.StrType):
        return Annotated[str, Meta(min_length=info.min_length, pattern=info.pattern)]
    if isinstance(info, msgspec.inspect.StructType):
        return info.cls
    return Any


def _expected(info: Any) -> str:
    """What a value of this declared type looks like, in words."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.BoolType):
        return "must be true or false"
    if isinstance(info, inspect.IntType | inspect.FloatType):
        kind = "an integer" if isinstance(info, inspect.IntType) else "a number"
        if info.ge is not None and info.le is not None:
            return f"must be {kind} from {info.ge:g} to {info.le:g}"
        if info.gt == 0:
            return f"must be {'a positive integer' if kind == 'an integer' else 'positive'}"
        return f"must be {kind}"
    if isinstance(info, inspect.StrType):
        if info.max_length == 1 and info.min_length == 1:
            return "must be one character"
        return "must be a non-empty string" if info.min_length else "must be a string"
    if isinstance(info, inspect.CustomType) and info.cls is Path:
        return "must be a non-empty path (relative to the config file)"
    if isinstance(info, inspect.ListType | inspect.VarTupleType | inspect.FrozenSetType):
        item = _expected(_unwrap(info.item_type)).removeprefix("must be ")
        return f"must be a list, each {item}"
    if isinstance(info, inspect.StructType | inspect.DictType):
        return "must be a table"
    return f"must be {info}"
