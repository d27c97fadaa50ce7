from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc import create_app
from recsvc.config import ServiceConfig
from training.config import load_config
from training.pipeline import train

SAMPLE_DIR = Path(str(resources.files("training") / "sample"))


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained once per test session on the shipped demo sample."""
    models_dir = tmp_path_factory.mktemp("sample-models")
    train(load_config(SAMPLE_DIR / "sample.toml"), models_dir)
    return models_dir


@pytest.fixture(scope="session")
def sample_app(sample_models: Path) -> Flask:
    return create_app(ServiceConfig(models_dir=sample_models))


@pytest.fixture
def client(sample_app: Flask) -> FlaskClient:
    return sample_app.test_client()
