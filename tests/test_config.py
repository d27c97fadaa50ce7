"""Configuration: the training TOML and the RECSVC_* settings fail naming the key, the source
and what is allowed; the README's settings table is the declarations'."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from recsvc.config import ServiceConfig, settings_table
from recsvc.errors import ConfigError as ServiceConfigError
from training.config import (
    EngineConfig,
    ModelParams,
    SourceConfig,
    load_config,
    parse_config,
    tuned_path,
)
from training.engine import engine as open_engine
from training.errors import ConfigError

SHOP = {"name": "shop", "kind": "csv", "path": "shop.csv", "columns": {"item_id": "Sku"}}


def source(**changes: Any) -> dict[str, Any]:
    return {"sources": [{**copy.deepcopy(SHOP), **changes}]}


def with_table(name: str, table: Any) -> dict[str, Any]:
    return {**source(), name: table}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "t.toml: [[sources]] must declare at least one source"),
        ({"sources": []}, "t.toml: [[sources]] must declare at least one source"),
        (with_table("bogus", 1), "t.toml: unknown key(s) ['bogus']; allowed: ['channels', "),
        (source(name="my shop"), "sources[0].name: 'my shop' may hold only letters, digits"),
        ({"sources": [{"kind": "csv"}]}, "sources[0].name: required, a non-empty string"),
        (
            source(kind="xml"),
            "sources[0] (shop).kind: 'xml' is not one of csv, jsonl, parquet, postgresql, events",
        ),
        (source(colour=1), "sources[0] (shop): unknown key(s) ['colour']; allowed: ['cancel"),
        (source(kind="events"), "(shop): unknown key(s) ['columns']; allowed: ['kind', 'max_d"),
        (source(columns={"item_id": ""}), "(shop).columns.item_id: must be a non-empty string"),
        (source(columns={"email": "E", "phone": 3}), "(shop).columns.phone: must be a non-empty"),
        (source(columns={"email": "E"}), "sources[0] (shop).columns.item_id: required"),
        (
            {"sources": [{"name": "s", "kind": "csv", "columns": {"item_id": "Sku"}}]},
            "sources[0] (s).path: required, a non-empty string",
        ),
        (source(chunk_rows=1), "(shop): unknown key(s) ['chunk_rows']"),
        (source(delimiter=";;"), "(shop).delimiter: must be one character, got ';;'"),
        (source(timezone="Mars/Base"), "(shop).timezone: 'Mars/Base' is not an IANA time zone"),
        (source(trust=True), "(shop).trust: must be a number from 1e-09 to 1000, got True"),
        (source(max_quarantine_share=2), "max_quarantine_share: must be a number from 0 to 1"),
        (source(base_dir="/etc"), "(shop): unknown key(s) ['base_dir']"),
        (with_table("model", {"factors": 0}), "model.factors: must be an integer from 1 to 4096"),
        (with_table("model", {"factors": 8.5}), "model.factors: must be an integer from 1 to"),
        (with_table("model", {"bm25_b": 1.0}), "model.bm25_b: must be a number from 0 to 0.99"),
        (with_table("model", 3), "t.toml: model: must be a table, got 3"),
        (with_table("items", {"non_product_ids": [1]}), "non_product_ids[0]: must be a string"),
        (with_table("items", {"crosswalk": "nope.csv"}), "items.crosswalk: file /tmp/nope.csv"),
        (with_table("identity", {"default_region": "XX"}), "'XX' is not a region code"),
        (with_table("tiers", {"window_days": 30}), "[[tiers.levels]] must declare at least one"),
        (
            with_table("tiers", {"method": "x"}),
            "tiers.method: 'x' is not one of percentiles, thresholds",
        ),
        (
            with_table("tiers", {"levels": [{"name": "a"}]}),
            "tiers.levels[0].min_spend: required",
        ),
        (
            with_table("tiers", {"levels": [{"name": "a", "min_percentile": 0}]}),
            "tiers.levels[0]: unknown key(s) ['min_percentile']",
        ),
        (with_table("channels", {"base_url": "shop"}), "channels.base_url: must be an absolute"),
        (
            with_table("channels", {"slots": {"s": {"products": 99}}}),
            "channels.slots.s.products: must be an integer from 0 to 50, got 99",
        ),
        (
            with_table("engine", {"kind": "polars"}),
            "engine.kind: 'polars' is not one of duckdb, spark",
        ),
        (
            with_table("engine", {"master": "yarn"}),
            "t.toml: engine: ['master'] only apply to kind = \"spark\"",
        ),
        (
            with_table("engine", {"kind": "spark", "conf": {"spark.x": 1}}),
            "engine.conf.spark.x: must be a string, got 1",
        ),
        (with_table("engine", {"kind": "spark", "master": ""}), "engine.master: must be a non-"),
    ],
)
def test_a_bad_config_names_the_key_and_what_is_allowed(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, Path("/tmp"), "t.toml")
    assert message in str(raised.value)


def test_defaults_and_paths_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("source,item_id,catalog_id\n")
    raw = with_table("items", {"crosswalk": "items.csv", "non_product_ids": [" post "]})
    config = parse_config(raw, tmp_path)
    assert config.items.crosswalk == tmp_path / "items.csv"
    assert config.items.non_product_ids == frozenset({"POST"})
    assert config.model == ModelParams()
    (shop,) = config.sources
    assert shop.base_dir == tmp_path and shop.delimiter == "," and shop.trust == 1.0


def test_the_engine_table_passes_spark_settings_through() -> None:
    assert parse_config(source(), Path("/tmp")).engine == EngineConfig(kind="duckdb")
    raw = with_table(
        "engine",
        {"kind": "spark", "master": "spark://head:7077", "conf": {"spark.executor.memory": "8g"}},
    )
    engine = parse_config(raw, Path("/tmp")).engine
    assert engine == EngineConfig(
        kind="spark", master="spark://head:7077", conf={"spark.executor.memory": "8g"}
    )


def test_the_engine_table_passes_duckdb_settings_through() -> None:
    raw = with_table("engine", {"conf": {"memory_limit": "512MB", "threads": "2"}})
    engine = parse_config(raw, Path("/tmp")).engine
    assert engine == EngineConfig(kind="duckdb", conf={"memory_limit": "512MB", "threads": "2"})
    with open_engine(engine) as sql:
        limit = sql.query("SELECT current_setting('memory_limit') AS m").column("m")[0].as_py()
    assert limit in ("488.2 MiB", "512.0 MB")


def test_a_tuned_file_overrides_the_model_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text('[model]\nfactors = 8\n[[sources]]\nname = "s"\nkind = "csv"\npath = "x"\n')
    path.write_text(path.read_text() + '[sources.columns]\nitem_id = "Sku"\n')
    tuned_path(path).write_text("[model]\nalpha = 2\n[validation]\nmetric = 'ndcg'\n")
    config = load_config(path)
    assert (config.model.factors, config.model.alpha, config.tuned_from) == (
        8,
        2.0,
        tuned_path(path),
    )
    tuned_path(path).write_text("[model]\nalpha = -1\n")
    with pytest.raises(ConfigError, match=r"train.toml: model.alpha: must be a number from"):
        load_config(path)
    tuned_path(path).write_text("[modle]\nalpha = 2\n")
    with pytest.raises(ConfigError, match=r"tuned.toml: unknown key\(s\) \['modle'\]"):
        load_config(path)


def test_the_readme_table_is_the_declared_settings() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RELOAD_SECONDS", "soon", "RECSVC_RELOAD_SECONDS='soon': must be an integer from 0 to"),
        ("WORKERS", "0", "RECSVC_WORKERS='0': must be an integer from 1 to 1024"),
        ("WORKER_CLASS", "fast", "RECSVC_WORKER_CLASS='fast': must be one of sync, gthread"),
        ("AUTH", "maybe", "RECSVC_AUTH='maybe': must be one of on, off"),
        ("LOG_LEVEL", "loud", "RECSVC_LOG_LEVEL='loud': must be one of DEBUG, INFO"),
        ("MODELS_DIR", "", "RECSVC_MODELS_DIR='': is empty"),
        ("REDIS_URL", "http://x", "RECSVC_REDIS_URL='http://x': must start with redis://"),
        (
            "REDIS_URL",
            "redis+cluster://10.0.0.1:7000/0",
            "RECSVC_REDIS_URL='redis+cluster://10.0.0.1:7000/0': a Redis Cluster URL is "
            "redis+cluster://host:port[,host:port...]: a cluster has no database numbers",
        ),
        (
            "REDIS_URL",
            "redis+cluster://10.0.0.1:7000,10.0.0.2",
            "'10.0.0.2' is not a cluster node as host:port",
        ),
        ("CORS_ORIGINS", "*", "RECSVC_CORS_ORIGINS='*': list the shop's origins"),
    ],
)
def test_a_bad_setting_is_named_with_what_is_allowed(name: str, value: str, message: str) -> None:
    with pytest.raises(ServiceConfigError) as raised:
        ServiceConfig.from_mapping({"RECSVC_AUTH": "off", f"RECSVC_{name}": value})
    assert message in str(raised.value)


def test_secret_settings_are_not_echoed() -> None:
    with pytest.raises(ServiceConfigError) as raised:
        ServiceConfig.from_mapping({"RECSVC_AUTH": "off", "RECSVC_SECRET_KEY": "hunter2"})
    assert "RECSVC_SECRET_KEY" in str(raised.value) and "hunter2" not in str(raised.value)


def test_settings_parse_to_typed_values() -> None:
    config = ServiceConfig.from_mapping(
        {
            "RECSVC_AUTH": "OFF",
            "RECSVC_LOG_LEVEL": "debug",
            "RECSVC_WORKERS": "3",
            "RECSVC_WORKER_CLASS": "GTHREAD",
            "RECSVC_REDIS_PREFIX": "",
        }
    )
    assert (config.auth, config.log_level, config.workers) == (False, "DEBUG", 3)
    assert (config.worker_class, config.redis_prefix, config.bind) == (
        "gthread",
        "recsvc",
        "127.0.0.1:8000",
    )
    assert ServiceConfig.from_mapping({"RECSVC_AUTH": "off"}).workers >= 1


def test_a_sources_repr_hides_its_connection_string() -> None:
    source = SourceConfig(name="orders", kind="postgresql", dsn="postgresql://u:s3cret@h/db")
    assert "s3cret" not in repr(source) and "dsn=<hidden>" in repr(source)
