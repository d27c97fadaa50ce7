from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from recsvc.app import create_app
from recsvc.config import ServiceConfig
from tests.redis_server import RedisClusterProcess, shared_redis_url
from training.config import EngineConfig, load_config
from training.engine import stop_spark_sessions
from training.pipeline import train

SAMPLE_DIR = Path(str(resources.files("training") / "sample"))


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained once per test session on the shipped demo sample."""
    models_dir = tmp_path_factory.mktemp("sample-models")
    train(load_config(SAMPLE_DIR / "sample.toml"), models_dir)
    return models_dir


@pytest.fixture(scope="session")
def sample_app(sample_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    events = tmp_path_factory.mktemp("sample-events")
    return create_app(ServiceConfig(models_dir=sample_models, events_dir=events, auth=False))


@pytest.fixture
def client(sample_app: Flask) -> FlaskClient:
    return sample_app.test_client()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis database for tests, flushed before and after the session."""
    url, private = shared_redis_url(tmp_path_factory.mktemp("redis"))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
    if private is not None:
        private.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[str]:
    """The test Redis database, flushed around one test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    """A real Redis Cluster (3 masters, 3 replicas) started for the session, then stopped."""
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def clean_cluster(redis_cluster: RedisClusterProcess) -> Iterator[str]:
    """The test cluster's URL (``redis+cluster://...``), every master flushed around one test."""
    redis_cluster.wait_until_ok()
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.master_ports()[0])
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield redis_cluster.url
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    client.close()


@pytest.fixture(scope="session")
def spark_engine() -> Iterator[EngineConfig]:
    """Spark SQL on two local cores. The JVM starts once per test session: every merge
    with this config shares one SparkSession (``training.engine.spark_session``)."""
    config = EngineConfig(kind="spark", master="local[2]")
    yield config
    stop_spark_sessions()
