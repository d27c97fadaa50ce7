"""The training config (TOML): sources with their column mappings, item rules, model parameters."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from recsvc.channels import DEFAULT_CHANNELS
from recsvc.identity import IdentityKey, IdentityRules
from training.errors import ConfigError
from training.identity import LinkRules
from training.tiers import TierConfig, TierLevel

SOURCE_KINDS = ("csv", "jsonl", "parquet", "postgresql", "events")
# The service's event log (recsvc.events.EventLog) has fixed columns; its customer column holds
# request keys (canonical id, <source>:<id>, email:, phone:).
EVENTS_COLUMNS = {
    "order_id": "event_id",
    "customer_id": "customer",
    "item_id": "item_id",
    "quantity": "quantity",
    "unit_price": "price",
    "timestamp": "timestamp",
}
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


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    base_dir: Path
    columns: dict[str, str]  # canonical field -> source column
    path: str | None = None  # files: a glob, relative to the config file unless absolute
    dsn: str | None = None  # postgresql: a libpq connection string...
    dsn_env: str | None = None  # ...or the environment variable that holds one
    table: str | None = None  # postgresql: a table ("schema.table")...
    query: str | None = None  # ...or a SELECT
    chunk_rows: int = 50_000  # postgresql: rows fetched per round trip
    customer_namespace: str = "customer"
    timestamp_format: str | None = None
    timezone: str = "UTC"  # of timestamps written without an offset
    currency_rate: float = 1.0  # unit price x rate = price in the shop currency
    trust: float = 1.0  # weight of this source's purchases in training
    cancellation_prefix: str | None = None  # order ids starting with it are cancellations
    encoding: str = "utf-8"
    delimiter: str = ","
    # More of its rows quarantined than this share fails the run (see training.pipeline).
    max_quarantine_share: float = MAX_QUARANTINE_SHARE
    max_line_bytes: int = MAX_LINE_BYTES  # files: the longest line or JSON record read
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES  # per compressed file

    def files(self) -> list[Path]:
        if self.path is None:
            return []
        pattern = Path(self.path)
        if pattern.is_absolute():
            return sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
        return sorted(self.base_dir.glob(self.path))


@dataclass(frozen=True)
class ItemRules:
    """Which item ids are not products (postage, fees, discounts, vouchers): set aside; and
    the optional crosswalk from source item ids to catalog items and groups of editions."""

    non_product_ids: frozenset[str] = frozenset()
    non_product_pattern: str | None = None
    crosswalk: Path | None = None
    taxonomy: Path | None = None  # TOML [categories] name = [keywords]

    def is_non_product(self, item_id: str) -> bool:
        if item_id in self.non_product_ids:
            return True
        return bool(self.non_product_pattern and re.search(self.non_product_pattern, item_id))


@dataclass(frozen=True)
class ModelParams:
    """ALS on BM25-weighted, time-decayed purchases, blended with a trending-items prior.

    Score of an item for a customer: z(ALS score over the catalog) + trend_weight * z(log(1 +
    trending sales)), where trending sales decay with ``trend_half_life_days``. A weight of 0
    gives plain ALS.
    """

    factors: int = 64
    regularization: float = 1.0
    alpha: float = 1.0
    iterations: int = 15
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    half_life_days: float = 30.0
    trend_half_life_days: float = 14.0
    trend_weight: float = 2.0
    seed: int = 42
    candidates: int = 50  # per customer, precomputed for the service's fast path (0: none)


# Allowed range of each model parameter, inclusive; bm25_b = 1 makes implicit divide by zero.
MODEL_RANGES: dict[str, tuple[float, float]] = {
    "factors": (1, 4096),
    "regularization": (1e-9, 1e6),
    "alpha": (1e-9, 1e6),
    "iterations": (1, 1000),
    "bm25_k1": (1e-9, 1e6),
    "bm25_b": (0.0, 0.99),
    "half_life_days": (1e-3, 1e6),
    "trend_half_life_days": (1e-3, 1e6),
    "trend_weight": (0.0, 100.0),
    "seed": (0, 2**31 - 1),
    "candidates": (0, 1000),
}


@dataclass(frozen=True)
class IdentityConfig:
    rules: IdentityRules = field(default_factory=IdentityRules)
    links: LinkRules = field(default_factory=LinkRules)
    crosswalk: Path | None = None  # CSV: left,right = two keys of one customer
    # The service's erasure list; may not exist yet (nobody erased), which the manifest notes.
    erasures: Path | None = None
    # Keys the alias digests: RECSVC_ID_SECRET, set by the CLI from the environment, never
    # from the TOML (a config file gets copied and committed).
    key: IdentityKey = field(default_factory=IdentityKey.development_key)


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

    def to_manifest(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "product_path": self.product_path,
            "image_path": self.image_path,
            "currency_symbol": self.currency_symbol,
            "slots": self.slots,
            "utm": self.utm,
        }


@dataclass(frozen=True)
class TrainConfig:
    sources: tuple[SourceConfig, ...]
    items: ItemRules = field(default_factory=ItemRules)
    model: ModelParams = field(default_factory=ModelParams)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    tiers: TierConfig = field(default_factory=TierConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    tuned_from: Path | None = None  # the file whose [model] overrode the config's


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
        _reject_unknown(tuned_raw, {"model", "validation"}, str(tuned))
        raw["model"] = {**_table(raw, "model", str(path)), **_table(tuned_raw, "model", str(tuned))}
        tuned_from = tuned
    config = parse_config(raw, base_dir=path.resolve().parent, origin=str(path))
    return dataclasses.replace(config, tuned_from=tuned_from)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error


def parse_config(raw: dict[str, Any], base_dir: Path, origin: str = "config") -> TrainConfig:
    _reject_unknown(raw, {"sources", "items", "model", "identity", "tiers", "channels"}, origin)
    raw_sources = raw.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ConfigError(f"{origin}: [[sources]] must declare at least one source")
    sources = tuple(
        _parse_source(s, base_dir, f"{origin}: sources[{i}]") for i, s in enumerate(raw_sources)
    )
    names = [s.name for s in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{origin}: source names must be unique, repeated: {duplicated}")
    return TrainConfig(
        sources=sources,
        items=_parse_items(_table(raw, "items", origin), base_dir, f"{origin}: items"),
        model=_parse_model(_table(raw, "model", origin), f"{origin}: model"),
        identity=_parse_identity(_table(raw, "identity", origin), base_dir, f"{origin}: identity"),
        tiers=_parse_tiers(_table(raw, "tiers", origin), base_dir, f"{origin}: tiers"),
        channels=_parse_channels(_table(raw, "channels", origin), base_dir, f"{origin}: channels"),
    )


def _parse_source(raw: Any, base_dir: Path, where: str) -> SourceConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    common = {
        "name",
        "kind",
        "columns",
        "customer_namespace",
        "timestamp_format",
        "timezone",
        "currency_rate",
        "trust",
        "cancellation_prefix",
        "max_quarantine_share",
    }
    files = {"path", "max_line_bytes", "max_decompressed_bytes"}
    name = _string(raw, "name", where)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"{where}.name: {name!r} may hold only letters, digits, '_' and '-'")
    where = f"{where} ({name})"
    kind = _string(raw, "kind", where)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
    if kind == "events":
        _reject_unknown(raw, {"name", "kind", "trust", "max_quarantine_share"} | files, where)
        _string(raw, "path", where)
        raw = {**raw, "columns": EVENTS_COLUMNS}
    elif kind == "postgresql":
        _reject_unknown(raw, common | {"dsn", "dsn_env", "table", "query", "chunk_rows"}, where)
        if ("dsn" in raw) == ("dsn_env" in raw):
            raise ConfigError(f"{where}: set exactly one of dsn or dsn_env")
        if ("table" in raw) == ("query" in raw):
            raise ConfigError(f"{where}: set exactly one of table or query")
    else:
        _reject_unknown(raw, common | files | {"encoding", "delimiter"}, where)
        _string(raw, "path", where)
    columns_raw = raw.get("columns")
    if not isinstance(columns_raw, dict):
        raise ConfigError(f"{where}.columns: a table mapping fields to column names is required")
    _reject_unknown(columns_raw, set(FIELDS), f"{where}.columns")
    columns: dict[str, str] = {}
    for key, value in columns_raw.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.columns.{key}: must be a non-empty column name")
        columns[key] = value
    for required in REQUIRED_FIELDS:
        if required not in columns:
            raise ConfigError(f"{where}.columns.{required}: required")
    delimiter = _string(raw, "delimiter", where, default=",")
    if len(delimiter) != 1:
        raise ConfigError(f"{where}.delimiter: must be one character, got {delimiter!r}")
    timezone = _string(raw, "timezone", where, default="UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}.timezone: {timezone!r} is not an IANA time zone") from None
    namespace = _string(raw, "customer_namespace", where, default="customer")
    if namespace in ("email", "phone", "id") or ":" in namespace:
        raise ConfigError(f"{where}.customer_namespace: {namespace!r} is reserved or has ':'")
    return SourceConfig(
        name=name,
        kind=kind,
        base_dir=base_dir,
        columns=columns,
        path=_optional_string(raw, "path", where),
        dsn=_optional_string(raw, "dsn", where),
        dsn_env=_optional_string(raw, "dsn_env", where),
        table=_optional_string(raw, "table", where),
        query=_optional_string(raw, "query", where),
        chunk_rows=int(_number(raw, "chunk_rows", where, 50_000, 1, 10_000_000, integer=True)),
        customer_namespace=namespace,
        timestamp_format=_optional_string(raw, "timestamp_format", where),
        timezone=timezone,
        currency_rate=_number(raw, "currency_rate", where, 1.0, 1e-9, 1e9),
        trust=_number(raw, "trust", where, 1.0, 1e-9, 1e3),
        cancellation_prefix=_optional_string(raw, "cancellation_prefix", where),
        encoding=_string(raw, "encoding", where, default="utf-8"),
        delimiter=delimiter,
        max_quarantine_share=_number(
            raw, "max_quarantine_share", where, MAX_QUARANTINE_SHARE, 0.0, 1.0
        ),
        max_line_bytes=int(
            _number(raw, "max_line_bytes", where, MAX_LINE_BYTES, 1 << 16, 1 << 30, integer=True)
        ),
        max_decompressed_bytes=int(
            _number(raw, "max_decompressed_bytes", where, MAX_DECOMPRESSED_BYTES, 1, 1 << 50, True)
        ),
    )


def _parse_identity(raw: dict[str, Any], base_dir: Path, where: str) -> IdentityConfig:
    allowed = {
        "strip_plus_tags",
        "dotless_domains",
        "default_region",
        "link_distinct_ids",
        "max_cluster_ids",
        "crosswalk",
        "erasures",
    }
    _reject_unknown(raw, allowed, where)
    domains = raw.get("dotless_domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise ConfigError(f"{where}.dotless_domains: must be a list of domains")
    region = _optional_string(raw, "default_region", where)
    if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{where}.default_region: {region!r} is not a region code (e.g. GB)")
    return IdentityConfig(
        rules=IdentityRules(
            strip_plus_tags=_bool(raw, "strip_plus_tags", where, False),
            dotless_domains=frozenset(d.strip().lower() for d in domains),
            default_region=None if region is None else region.upper(),
        ),
        links=LinkRules(
            link_distinct_ids=_bool(raw, "link_distinct_ids", where, False),
            max_cluster_ids=int(_number(raw, "max_cluster_ids", where, 10, 1, 10_000, True)),
        ),
        crosswalk=_optional_file(raw, "crosswalk", base_dir, where),
        erasures=_optional_path(raw, "erasures", base_dir, where),
    )


def _parse_tiers(raw: dict[str, Any], base_dir: Path, where: str) -> TierConfig:
    if not raw:
        return TierConfig()
    allowed = {
        "window_days",
        "method",
        "levels",
        "price_affinity",
        "premium_price_percentile",
        "exclusive_items",
        "lapsing_factor",
        "min_orders_for_interval",
        "min_orders_for_timing",
        "spend_thresholds",
        "order_thresholds",
        "thank_you_spend",
        "thank_you_orders",
    }
    _reject_unknown(raw, allowed, where)
    method = _string(raw, "method", where, default="thresholds")
    if method not in ("thresholds", "percentiles"):
        raise ConfigError(f"{where}.method: {method!r} is not thresholds or percentiles")
    bound = "min_spend" if method == "thresholds" else "min_percentile"
    raw_levels = raw.get("levels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise ConfigError(f"{where}.levels: [[tiers.levels]] must declare at least one tier")
    levels = []
    for index, level in enumerate(raw_levels):
        at = f"{where}.levels[{index}]"
        if not isinstance(level, dict):
            raise ConfigError(f"{at}: must be a table")
        _reject_unknown(level, {"name", bound, "perks", "premium_boost"}, at)
        perks = level.get("perks", [])
        if not isinstance(perks, list) or not all(isinstance(p, str) for p in perks):
            raise ConfigError(f"{at}.perks: must be a list of strings")
        high = 100.0 if method == "percentiles" else 1e12
        value = _number(level, bound, at, -1.0, 0.0, high)
        if value < 0:
            raise ConfigError(f"{at}.{bound}: required")
        levels.append(
            TierLevel(
                name=_string(level, "name", at),
                min_spend=value if method == "thresholds" else None,
                min_percentile=value if method == "percentiles" else None,
                perks=tuple(perks),
                premium_boost=_number(level, "premium_boost", at, 0.0, 0.0, 10.0),
            )
        )
    if getattr(levels[0], bound) != 0:
        raise ConfigError(f"{where}.levels[0].{bound}: the first tier must start at 0")
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.levels: tier names must be unique")

    def numbers(key: str, integer: bool) -> tuple[Any, ...]:
        values = raw.get(key, [])
        kinds = (int,) if integer else (int, float)
        if not isinstance(values, list) or not all(
            isinstance(v, kinds) and not isinstance(v, bool) and v > 0 for v in values
        ):
            raise ConfigError(f"{where}.{key}: must be a list of positive numbers")
        return tuple(sorted(values))

    thank_spend = raw.get("thank_you_spend")
    thank_orders = raw.get("thank_you_orders")
    return TierConfig(
        window_days=_number(raw, "window_days", where, 365.0, 1.0, 3650.0),
        method=method,
        levels=tuple(levels),
        price_affinity=_number(raw, "price_affinity", where, 0.0, 0.0, 10.0),
        premium_price_percentile=_number(raw, "premium_price_percentile", where, 90.0, 0.0, 100.0),
        exclusive_items=_optional_file(raw, "exclusive_items", base_dir, where),
        lapsing_factor=_number(raw, "lapsing_factor", where, 2.0, 1.0, 100.0),
        min_orders_for_interval=int(
            _number(raw, "min_orders_for_interval", where, 3, 2, 1000, True)
        ),
        min_orders_for_timing=int(_number(raw, "min_orders_for_timing", where, 3, 1, 1000, True)),
        spend_thresholds=numbers("spend_thresholds", integer=False),
        order_thresholds=numbers("order_thresholds", integer=True),
        thank_you_spend=None
        if thank_spend is None
        else _number(raw, "thank_you_spend", where, 0.0, 0.0, 1e12),
        thank_you_orders=None
        if thank_orders is None
        else int(_number(raw, "thank_you_orders", where, 0, 1, 1_000_000, True)),
    )


def _parse_channels(raw: dict[str, Any], base_dir: Path, where: str) -> ChannelsConfig:
    defaults = ChannelsConfig()
    _reject_unknown(
        raw,
        {"base_url", "product_path", "image_path", "currency_symbol", "content", "slots", "email"},
        where,
    )
    base_url = _string(raw, "base_url", where, default=defaults.base_url).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
        raise ConfigError(f"{where}.base_url: must be an absolute http(s) URL, got {base_url!r}")
    paths = {}
    for key in ("product_path", "image_path"):
        path = _string(raw, key, where, default=getattr(defaults, key))
        if not path.startswith("/") or "{item_id}" not in path:
            raise ConfigError(f"{where}.{key}: must start with / and contain {{item_id}}")
        paths[key] = path
    slots = dict(defaults.slots)
    raw_slots = raw.get("slots", {})
    if not isinstance(raw_slots, dict):
        raise ConfigError(f"{where}.slots: must be a table of slot tables")
    for name, slot in raw_slots.items():
        at = f"{where}.slots.{name}"
        if not re.fullmatch(r"[a-z0-9_-]+", name) or not isinstance(slot, dict):
            raise ConfigError(f"{at}: a slot is a table named with a-z, 0-9, _ or -")
        _reject_unknown(slot, {"content", "products"}, at)
        slots[name] = {
            "content": int(_number(slot, "content", at, 0, 0, 10, integer=True)),
            "products": int(_number(slot, "products", at, 4, 0, 50, integer=True)),
        }
    email = _table(raw, "email", where)
    _reject_unknown(email, {"utm_source", "utm_medium", "utm_campaign"}, f"{where}.email")
    utm = {
        key: _string(email, key, f"{where}.email", default=value)
        for key, value in defaults.utm.items()
    }
    return ChannelsConfig(
        base_url=base_url,
        product_path=paths["product_path"],
        image_path=paths["image_path"],
        currency_symbol=_string(raw, "currency_symbol", where, default=defaults.currency_symbol),
        content=_optional_file(raw, "content", base_dir, where),
        slots=slots,
        utm=utm,
    )


def _optional_path(raw: dict[str, Any], key: str, base_dir: Path, where: str) -> Path | None:
    name = _optional_string(raw, key, where)
    if name is None:
        return None
    return Path(name) if Path(name).is_absolute() else base_dir / name


def _parse_items(raw: dict[str, Any], base_dir: Path, where: str) -> ItemRules:
    _reject_unknown(raw, {"non_product_ids", "non_product_pattern", "crosswalk", "taxonomy"}, where)
    ids = raw.get("non_product_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ConfigError(f"{where}.non_product_ids: must be a list of item ids")
    pattern = _optional_string(raw, "non_product_pattern", where)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{where}.non_product_pattern: invalid regex ({error})") from None
    return ItemRules(
        frozenset(i.strip().upper() for i in ids),
        pattern,
        _optional_file(raw, "crosswalk", base_dir, where),
        _optional_file(raw, "taxonomy", base_dir, where),
    )


def _parse_model(raw: dict[str, Any], where: str) -> ModelParams:
    defaults = ModelParams()
    _reject_unknown(raw, set(defaults.__dataclass_fields__), where)
    values: dict[str, Any] = {}
    for key in defaults.__dataclass_fields__:
        default = getattr(defaults, key)
        value = raw.get(key, default)
        if isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: must be an integer, got {value!r}")
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: must be a number, got {value!r}")
        low, high = MODEL_RANGES[key]
        if not low <= value <= high:
            raise ConfigError(f"{where}.{key}: must be between {low:g} and {high:g}, got {value!r}")
        values[key] = float(value) if isinstance(default, float) else value
    return ModelParams(**values)


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _reject_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _string(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: required, a non-empty string")
    return value


def _number(
    raw: dict[str, Any],
    key: str,
    where: str,
    default: float,
    low: float,
    high: float,
    integer: bool = False,
) -> float:
    value = raw.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}.{key}: must be {kind} from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _bool(raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {value!r}")
    return value


def _optional_file(raw: dict[str, Any], key: str, base_dir: Path, where: str) -> Path | None:
    name = _optional_string(raw, key, where)
    if name is None:
        return None
    path = Path(name) if Path(name).is_absolute() else base_dir / name
    if not path.is_file():
        raise ConfigError(f"{where}.{key}: file {path} not found")
    return path


def _optional_string(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value
