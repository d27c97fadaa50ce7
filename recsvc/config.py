"""The service configuration, read once from RECSVC_* variables at start.

Every variable is declared once, in ``SETTINGS``: its name, default, range or allowed values
and a one-line description. Parsing, the error messages and the README's configuration table
(``settings_table``, checked by tests/test_config.py) all come from there.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsvc import defaults
from recsvc.auth import ApiKey, parse_api_keys
from recsvc.errors import ConfigError
from recsvc.experiments import Experiment, parse_spec
from recsvc.identity import SECRET_VARIABLE, IdentityKey
from recsvc.store import CLUSTER_SCHEME, cluster_nodes
from recsvc.tokens import secret_from

PREFIX = "RECSVC_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# gunicorn's own worker classes; recsvc ships and measured sync (README, Production topology).
WORKER_CLASSES = ("sync", "gthread", "gevent", "eventlet", "tornado")


@dataclass(frozen=True)
class Setting:
    """One RECSVC_* variable: its text (stripped; ``default`` when unset) must be an integer
    within ``bounds``, one of ``choices`` (case-insensitive), or whatever ``parse`` accepts
    (it raises ValueError saying what is allowed)."""

    name: str  # without the prefix
    default: str  # as it would be written in the environment; "" = none
    doc: str
    parse: Callable[[str], Any] = lambda text: text
    bounds: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    computed: Callable[[], Any] | None = None  # the default when none is written
    shown_default: str | None = None  # the README's, when not ``default``
    secret: bool = False  # never echo its value in an error
    field: str | None = ""  # the ServiceConfig attribute ("": name lower-cased; None: combined)

    @property
    def variable(self) -> str:
        return PREFIX + self.name

    def attribute(self) -> str | None:
        return self.name.lower() if self.field == "" else self.field

    def read(self, values: Mapping[str, str]) -> Any:
        text = values.get(self.variable, self.default).strip()
        if not text and self.computed is not None:
            return self.computed()
        try:
            return self.parse(self._checked(text))
        except ValueError as error:
            shown = "" if self.secret else f"={text!r}"
            raise ConfigError(f"{self.variable}{shown}: {error}") from None

    def _checked(self, text: str) -> Any:
        if self.bounds is not None:
            low, high = self.bounds
            if not re.fullmatch(r"-?[0-9]+", text) or not low <= int(text) <= high:
                raise ValueError(f"must be an integer from {low} to {high}")
            return int(text)
        if self.choices:
            for allowed in self.choices:
                if text.lower() == allowed.lower():
                    return allowed
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return text


def _models_dir(text: str) -> Path:
    if not text:
        raise ValueError("is empty; set it to the models directory")
    return Path(text)


def _redis_url(text: str) -> str | None:
    if text.startswith(CLUSTER_SCHEME):
        cluster_nodes(text)  # ValueError naming what is wrong
    elif text and not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
    return text or None


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not an origin like https://shop.example.com")
    if "*" in origins:
        raise ValueError("list the shop's origins; '*' is not allowed")
    return origins


def _secret_key(text: str) -> bytes:
    return secret_from(text) if text else b""


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "MODELS_DIR",
        defaults.MODELS_DIR,
        "directory holding the bundles and the `current` pointer",
        _models_dir,
    ),
    Setting(
        "VERIFIED_DIR",
        "",
        "a directory of this host's own where the first process to verify a bundle records it, "
        "so that every other worker on the host trusts it instead of reading it all again",
        lambda text: Path(text) if text else None,
        shown_default="`$TMPDIR/recsvc-verified-<uid>`",
    ),
    Setting("LOG_LEVEL", defaults.LOG_LEVEL, "least severe level logged", choices=LOG_LEVELS),
    Setting(
        "RELOAD_SECONDS",
        str(defaults.RELOAD_SECONDS),
        "how often each worker looks for a newly published bundle or experiment file; `0` never",
        bounds=(0, 86400),
    ),
    Setting(
        "API_KEYS",
        "",
        "comma-separated `<name>:<sha256 of key>:<scope>+<scope>[:<rate>]` entries",
        secret=True,
        field=None,
    ),
    Setting("API_KEYS_FILE", "", "a file with one such entry per line", field=None),
    Setting(
        "AUTH",
        "on",
        "`off` allows every request (local development only; logs a warning)",
        choices=("on", "off"),
    ),
    Setting(
        "REDIS_URL",
        "",
        "e.g. `redis://127.0.0.1:6379/0`, or a Redis Cluster as "
        "`redis+cluster://host:port[,host:port...]` (no database number); unset: the embedded "
        "store (SQLite in `RECSVC_EVENTS_DIR`)",
        _redis_url,
    ),
    Setting(
        "REDIS_PREFIX",
        defaults.REDIS_PREFIX,
        "prefix of every Redis key",
        lambda text: text or defaults.REDIS_PREFIX,
    ),
    Setting(
        "STORE_TIMEOUT_MS",
        str(defaults.STORE_TIMEOUT_MS),
        "a slower store counts as down",
        bounds=(1, 10_000),
    ),
    Setting(
        "EVENTS_DIR",
        defaults.EVENTS_DIR,
        "the service's durable state: event logs, erasure list, the embedded store",
        lambda text: Path(text or defaults.EVENTS_DIR),
    ),
    Setting(
        "EVENT_RETENTION_DAYS",
        str(defaults.EVENT_RETENTION_DAYS),
        "how long events and event ids stay in the store",
        bounds=(1, 3650),
    ),
    Setting(
        "CORS_ORIGINS",
        "",
        "comma-separated origins whose pages may call the API (`https://shop.example.com`)",
        _origins,
    ),
    Setting(
        "SNAPSHOT_TTL_DAYS",
        str(defaults.SNAPSHOT_TTL_DAYS),
        "how long one email send's picks stay fixed",
        bounds=(1, 3650),
    ),
    Setting(
        "RATE_LIMIT",
        str(defaults.RATE_LIMIT),
        "requests per second per API key, unless its entry sets its own; `0` unlimited",
        bounds=(0, 1_000_000),
    ),
    Setting(
        "LOG_SALT",
        "",
        "keys the customer hashes in log lines; set it to correlate lines across restarts",
        str.encode,
        shown_default="random per start",
        secret=True,
    ),
    Setting(
        "MAX_BODY_BYTES",
        str(defaults.MAX_BODY_BYTES),
        "larger request bodies get 413 unread (a chunked one as soon as it passes the limit); "
        "a batch of 1000 events with every text field at its longest is about 680 KB",
        bounds=(1024, 1 << 30),
    ),
    Setting(
        "ID_SECRET",
        "",
        "keys every alias digest (bundles, store keys, erasure list); the trainer reads the "
        "same variable",
        shown_default="required with auth",
        secret=True,
        field=None,
    ),
    Setting(
        "ALLOW_DEVELOPMENT_SECRET",
        "off",
        "`on` lets a service with keys on use the published development secret (local load "
        "tests and benchmarks only: anyone can reverse its digests)",
        choices=("on", "off"),
        field=None,
    ),
    Setting(
        "ID_SECRETS_RETIRED",
        "",
        "comma-separated secrets replaced by a rotation; erasures recorded under them still count",
        secret=True,
        field=None,
    ),
    Setting(
        "SECRET_KEY",
        "",
        "signs visitor tokens and dashboard sessions (32 characters or more, e.g. `openssl rand "
        "-hex 32`); the same on every worker and host; unset: no token is valid and nobody can "
        "sign in to the dashboard",
        _secret_key,
        secret=True,
    ),
    Setting(
        "EVALUATION_REPORT",
        "",
        "the `report.json` of the last `recsvc evaluate`, which the dashboard's overview shows; "
        "unset: it shows none",
        lambda text: Path(text) if text else None,
    ),
    Setting(
        "EXPERIMENT",
        "",
        "an A/B test of bundles, `<arm>:<version>:<weight>,...` with weights adding up to 100 "
        "(`champion:<version>:90,challenger:<version>:10`); `<models dir>/experiment.json`, "
        "when there, comes first",
        parse_spec,
    ),
    Setting(
        "ATTRIBUTION_HOURS",
        str(defaults.ATTRIBUTION_HOURS),
        "how long after an answer a click on it or a purchase of one of its items counts for it",
        bounds=(1, 720),
    ),
    Setting(
        "BIND",
        defaults.BIND,
        "where gunicorn listens: `host:port` or `unix:/path/to/socket`",
    ),
    Setting(
        "WORKERS",
        "",
        "gunicorn worker processes",
        bounds=(1, 1024),
        computed=multiprocessing.cpu_count,
        shown_default="one per core",
    ),
    Setting(
        "WORKER_CLASS",
        defaults.WORKER_CLASS,
        "gunicorn's worker class",
        choices=WORKER_CLASSES,
    ),
    Setting(
        "THREADS",
        str(defaults.THREADS),
        "threads per gunicorn worker (`gthread`)",
        bounds=(1, 1024),
    ),
)


@dataclass(frozen=True)
class ServiceConfig:
    models_dir: Path
    verified_dir: Path | None = None  # None: VerificationRecords' default directory
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
    evaluation_report: Path | None = None  # report.json of `recsvc evaluate`, for the dashboard
    experiment: Experiment | None = None  # from RECSVC_EXPERIMENT (the models dir's file first)
    attribution_hours: int = defaults.ATTRIBUTION_HOURS
    # gunicorn's (gunicorn.conf.py); the app itself does not use them
    bind: str = defaults.BIND
    workers: int = 1
    worker_class: str = defaults.WORKER_CLASS
    threads: int = defaults.THREADS

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> ServiceConfig:
        """Build from a mapping such as ``os.environ``; a bad value raises ConfigError naming it."""
        parsed: dict[str, Any] = {}
        for setting in SETTINGS:
            value = setting.read(values)
            attribute = setting.attribute()
            if attribute is not None:
                parsed[attribute] = value
        auth = parsed.pop("auth") == "on"
        keys = _api_keys(values)
        if auth and not keys:
            raise ConfigError(
                f"{PREFIX}API_KEYS or {PREFIX}API_KEYS_FILE must grant at least one key "
                f"(mint one with `recsvc keys mint`), or set {PREFIX}AUTH=off for local use"
            )
        allow_development = ALLOW_DEVELOPMENT.read(values) == "on"
        key = _identity_key(values, auth, allow_development)
        return cls(**parsed, auth=auth, api_keys=keys, identity_key=key)


ALLOW_DEVELOPMENT = next(s for s in SETTINGS if s.name == "ALLOW_DEVELOPMENT_SECRET")


def settings_table() -> str:
    """The README's table of the variables, as Markdown."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.shown_default or (f"`{setting.default}`" if setting.default else "")
        row = f"| `{setting.variable}` | {default} | {_allowed(setting)}{setting.doc} |"
        rows.append(row.replace("|  |", "| |"))
    return "\n".join(rows)


def _allowed(setting: Setting) -> str:
    if setting.choices:
        return f"{', '.join(f'`{c}`' for c in setting.choices)}: "
    if setting.bounds:
        return f"{setting.bounds[0]} to {setting.bounds[1]}: "
    return ""


def _identity_key(values: Mapping[str, str], auth: bool, allow_development: bool) -> IdentityKey:
    """The deployment's secret. With authentication on it must be set, and not to the
    published development secret unless that is allowed explicitly; with it off, unset means
    the development secret (create_app warns whenever that one is in use)."""
    try:
        key = IdentityKey.from_environment(values)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if key is None and auth:
        raise ConfigError(
            f"{SECRET_VARIABLE} must be set to this deployment's secret (the trainer uses the "
            "same one); make one with python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    if key is not None and key.development and auth and not allow_development:
        raise ConfigError(
            f"{SECRET_VARIABLE} is the published development secret, whose digests anyone can "
            "reverse: set this deployment's own (python -c 'import secrets; "
            f"print(secrets.token_hex(32))'), or {ALLOW_DEVELOPMENT.variable}=on for a local test"
        )
    return key or IdentityKey.development_key()


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
