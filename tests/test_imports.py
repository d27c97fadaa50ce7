"""The import graph the dependency split relies on, checked in fresh interpreters: the trainer
imports the bundle format, identity and policy without Flask or redis, and the service runs
without the `train` extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recsvc.bundle import load_current
from training import cli

ROOT = Path(__file__).resolve().parents[1]

# The `train` extra in pyproject.toml, by import name.
TRAIN_EXTRA = tuple(sorted(cli.TRAIN_EXTRA))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "module",
    [
        "training.pipeline",
        "training.config",
        "training.cli",
        "training.evaluate",
        "recsvc.bundle",
        "recsvc.manifest",
        "recsvc.identity",
        "recsvc.policy",
        "recsvc.logrecords",
        "recsvc.text",
        "recsvc.defaults",
        "recsvc.ranker",
    ],
)
def test_trainer_imports_without_flask_or_redis(module: str) -> None:
    result = run_python(
        f"import {module}, sys; "
        "loaded = [m for m in ('flask', 'redis') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    assert result.returncode == 0, result.stderr


def without(modules: tuple[str, ...]) -> str:
    """Code that makes importing any of ``modules`` fail, as where they are not installed."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Missing())
        """
    )


def test_service_serves_without_the_train_extra(sample_models: Path, tmp_path: Path) -> None:
    customer = str(load_current(sample_models).arrays.customer_ids[0])
    code = without((*TRAIN_EXTRA, "training")) + textwrap.dedent(
        f"""
        from pathlib import Path
        from recsvc.app import create_app
        from recsvc.config import ServiceConfig

        app = create_app(ServiceConfig(
            models_dir=Path({str(sample_models)!r}), events_dir=Path({str(tmp_path)!r}), auth=False
        ))
        client = app.test_client()
        paths = ("/readyz", "/metrics", "/openapi.json", "/v1/customers/{customer}/recommendations")
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code)
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_keys_and_tokens_run_without_the_train_extra() -> None:
    code = without(TRAIN_EXTRA) + textwrap.dedent(
        """
        import os
        from training.cli import main

        os.environ["RECSVC_SECRET_KEY"] = "k" * 32
        assert main(["keys", "mint", "--name", "web", "--scopes", "recs:read"]) == 0
        assert main(["tokens", "mint", "--customer", "12347"]) == 0
        assert main(["train", "--config", "missing.toml"]) == 2
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "recs:read" in result.stdout
    assert "this command needs the trainer's dependencies" in result.stderr
    assert "pip install 'recsvc[train]'" in result.stderr
