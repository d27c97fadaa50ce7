"""New bundles are picked up without a restart; corrupt ones are refused and never served."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recsvc import create_app
from recsvc.bundle import publish_bundle
from recsvc.config import ServiceConfig
from recsvc.registry import ModelRegistry
from tests.test_bundle import tiny_arrays


def corrupt(path: Path) -> None:
    (path / "factors.npz").write_bytes(b"not a numpy archive")


def test_registry_swaps_in_new_bundles_and_refuses_corrupt_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), {})
    registry = ModelRegistry(tmp_path)
    assert registry.load() and registry.model is not None
    first = registry.model

    assert not registry.check()  # nothing new
    publish_bundle(tmp_path, "v2", tiny_arrays(2.0), {})
    assert registry.check() and registry.model.version == "v2"
    assert first.version == "v1"  # a request holding the old model keeps it whole

    corrupt(publish_bundle(tmp_path, "v3", tiny_arrays(3.0), {}))
    assert not registry.check()
    assert registry.model.version == "v2"
    assert registry.refused == "v3" and "factors.npz" in (registry.last_error or "")
    assert not registry.check()  # refused once, not retried every poll
    refusals = [r for r in caplog.records if r.message.startswith("bundle refused")]
    assert len(refusals) == 1 and "still serving v2" in refusals[0].message

    publish_bundle(tmp_path, "v4", tiny_arrays(4.0), {})
    assert registry.check() and registry.model.version == "v4"
    assert registry.last_error is None


def test_the_service_follows_the_pointer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), {})
    config = ServiceConfig(
        models_dir=models, events_dir=tmp_path / "ev", auth=False, reload_seconds=1
    )
    client = create_app(config).test_client()
    assert client.get("/v1/model").get_json()["version"] == "v1"  # starts the watcher

    publish_bundle(models, "v2", tiny_arrays(2.0), {})
    assert wait_for(client, "v2")

    corrupt(publish_bundle(models, "v3", tiny_arrays(3.0), {}))
    time.sleep(2.5)
    body = client.get("/v1/model").get_json()
    assert body["version"] == "v2" and "factors.npz" in body["last_error"]
    assert client.get("/v1/customers/c1/recommendations").status_code == 200


def wait_for(client: object, version: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/v1/model").get_json()["version"] == version:  # type: ignore[attr-defined]
            return True
        time.sleep(0.1)
    return False
