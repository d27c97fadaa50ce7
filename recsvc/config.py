"""The service configuration, read once from RECSVC_* variables at start."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recsvc import defaults
from recsvc.auth import ApiKey, parse_api_keys
from recsvc.errors import ConfigError
from recsvc.identity import SECRET_VARIABLE, IdentityKey
from recsvc.tokens import secret_from

PREFIX = "RECSVC_"


@dataclass(frozen=True)
class ServiceConfig:
    models_dir: Path
    log_level: str = defaults.LOG_LEVEL
    reload_seconds: int = defaults.RELOAD_SECONDS
    redis_url: str | None = None  # None: the embedded in-process store
    redis_prefix: str = defaults.REDIS_PREFIX
    store_timeout_ms: int = defaults.STORE_TIMEOUT_MS
    events_dir: Path = Path(defaults.EVENTS_DIR)
    event_retention_days: int = defaults.EVENT_RETENTION_DAYS
    auth: bool = True
    api_keys: tuple[ApiKey, ...] = ()
    cors_origins: tuple[str, ...] = ()  # pages allowed to call the API from a browser
    snapshot_ttl_days: int = defaults.SNAPSHOT_TTL_DAYS
    rate_limit: int = defaults.RATE_LIMIT  # per key and second, unless the key sets its own
    log_salt: bytes = b""  # keys the customer hashes in log lines; empty: random per start
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    # Keys every alias digest (bundle lookups, store keys, erasure records).
    identity_key: IdentityKey = field(default_factory=IdentityKey.development_key)
    secret_key: bytes = b""  # signs visitor tokens (recsvc.tokens); empty: none is valid

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> ServiceConfig:
        """Build from a mapping such as ``os.environ``; a bad value raises ConfigError naming it."""

        def get(name: str, default: str) -> str:
            return values.get(PREFIX + name, default).strip()

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name}={raw!r} is not an integer") from None
            if not low <= value <= high:
                raise ConfigError(f"{PREFIX}{name}={value} must be from {low} to {high}")
            return value

        models_dir = get("MODELS_DIR", defaults.MODELS_DIR)
        if not models_dir:
            raise ConfigError(f"{PREFIX}MODELS_DIR is empty; set it to the models directory")
        log_level = get("LOG_LEVEL", defaults.LOG_LEVEL).upper()
        if not isinstance(logging.getLevelNamesMapping().get(log_level), int):
            raise ConfigError(
                f"{PREFIX}LOG_LEVEL={log_level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)"
            )
        auth = get("AUTH", "on").lower()
        if auth not in ("on", "off"):
            raise ConfigError(f"{PREFIX}AUTH={auth!r} must be 'on' or 'off'")
        redis_url = get("REDIS_URL", "") or None
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{PREFIX}REDIS_URL must start with redis://, rediss:// or unix://")
        keys = _api_keys(values)
        if auth == "on" and not keys:
            raise ConfigError(
                f"{PREFIX}API_KEYS or {PREFIX}API_KEYS_FILE must grant at least one key "
                f"(mint one with `recsvc keys mint`), or set {PREFIX}AUTH=off for local use"
            )
        identity_key = _identity_key(values, auth == "on")
        secret_text, secret_key = get("SECRET_KEY", ""), b""
        if secret_text:
            try:
                secret_key = secret_from(secret_text)
            except ValueError as error:
                raise ConfigError(f"{PREFIX}SECRET_KEY {error}") from None
        return cls(
            models_dir=Path(models_dir),
            log_level=log_level,
            reload_seconds=integer("RELOAD_SECONDS", defaults.RELOAD_SECONDS, 0, 86400),
            redis_url=redis_url,
            redis_prefix=get("REDIS_PREFIX", defaults.REDIS_PREFIX) or defaults.REDIS_PREFIX,
            store_timeout_ms=integer("STORE_TIMEOUT_MS", defaults.STORE_TIMEOUT_MS, 1, 10_000),
            events_dir=Path(get("EVENTS_DIR", defaults.EVENTS_DIR) or defaults.EVENTS_DIR),
            event_retention_days=integer(
                "EVENT_RETENTION_DAYS", defaults.EVENT_RETENTION_DAYS, 1, 3650
            ),
            auth=auth == "on",
            api_keys=keys,
            cors_origins=_origins(get("CORS_ORIGINS", "")),
            snapshot_ttl_days=integer("SNAPSHOT_TTL_DAYS", defaults.SNAPSHOT_TTL_DAYS, 1, 3650),
            rate_limit=integer("RATE_LIMIT", defaults.RATE_LIMIT, 0, 1_000_000),
            log_salt=get("LOG_SALT", "").encode(),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.MAX_BODY_BYTES, 1024, 1 << 30),
            identity_key=identity_key,
            secret_key=secret_key,
        )


def _identity_key(values: Mapping[str, str], auth: bool) -> IdentityKey:
    """The deployment's secret. Unset: an error with authentication on, else the published
    development secret (create_app warns whenever that one is in use)."""
    try:
        key = IdentityKey.from_environment(values)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if key is None and auth:
        raise ConfigError(
            f"{SECRET_VARIABLE} must be set to this deployment's secret (the trainer uses the "
            "same one); make one with python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key or IdentityKey.development_key()


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"{PREFIX}CORS_ORIGINS: {origin!r} is not an origin like https://shop.example.com"
            )
    if "*" in origins:
        raise ConfigError(f"{PREFIX}CORS_ORIGINS: list the shop's origins; '*' is not allowed")
    return origins


def _api_keys(values: Mapping[str, str]) -> tuple[ApiKey, ...]:
    inline = values.get(f"{PREFIX}API_KEYS", "")
    file_name = values.get(f"{PREFIX}API_KEYS_FILE", "").strip()
    text = inline
    if file_name:
        try:
            text += "\n" + Path(file_name).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{PREFIX}API_KEYS_FILE={file_name!r}: {error}") from None
    try:
        return parse_api_keys(text, f"{PREFIX}API_KEYS")
    except ValueError as error:
        raise ConfigError(str(error)) from None
