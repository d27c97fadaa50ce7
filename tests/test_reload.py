"""New bundles are picked up without a restart; corrupt ones are refused and never served, and
a service that starts on a corrupt one serves the newest bundle that verifies, or answers 503."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.local_server import ROOT, free_port
from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.bundle import VerificationRecords, point_current, publish_bundle
from recsvc.config import ServiceConfig
from recsvc.manifest import Manifest
from recsvc.registry import ModelRegistry
from tests.helpers import WatcherTicks
from tests.test_bundle import rewrite, tiny_arrays, unreadable_files


def corrupt(path: Path) -> None:
    (path / "factors.npz").write_bytes(b"not a numpy archive")


def test_registry_swaps_in_new_bundles_and_refuses_corrupt_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    registry = ModelRegistry(tmp_path)
    assert registry.load() and registry.model is not None
    first = registry.model

    assert not registry.check()  # nothing new
    publish_bundle(tmp_path, "v2", tiny_arrays(2.0), Manifest())
    assert registry.check() and registry.model.version == "v2"
    assert first.version == "v1"  # a request holding the old model keeps it whole

    corrupt(publish_bundle(tmp_path, "v3", tiny_arrays(3.0), Manifest()))
    assert not registry.check()
    assert registry.model.version == "v2"
    assert registry.refused == "v3" and "factors.npz" in (registry.last_error or "")
    assert not registry.check()  # refused once, not retried every poll
    refusals = [r for r in caplog.records if r.message.startswith("bundle refused")]
    assert len(refusals) == 1 and "still serving v2" in refusals[0].message

    publish_bundle(tmp_path, "v4", tiny_arrays(4.0), Manifest())
    assert registry.check() and registry.model.version == "v4"
    assert registry.last_error is None


def test_workers_of_a_host_verify_a_bundle_once_and_refuse_a_corrupt_mapped_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="recsvc.registry")
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    records = VerificationRecords(tmp_path / "verified")
    first, second = ModelRegistry(models, records=records), ModelRegistry(models, records=records)
    assert first.load() and second.load()
    serving = [r.message for r in caplog.records if r.message.startswith("serving bundle v1")]
    assert serving[0].endswith("(verified)")
    assert serving[1].endswith("(verified on this host before)")

    path = publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    target = path / "user_factors.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one bit of one customer's factors
    target.write_bytes(bytes(data))
    for registry in (first, second):
        assert not registry.check()
        assert registry.model is not None and registry.model.version == "v1"
        assert "user_factors.npy: sha256 does not match" in (registry.last_error or "")


def test_the_service_follows_the_pointer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    config = ServiceConfig(
        models_dir=models, events_dir=tmp_path / "ev", auth=False, reload_seconds=1
    )
    ticks = WatcherTicks()
    client = create_app(config, wait=ticks).test_client()
    assert client.get("/v1/model").get_json()["version"] == "v1"  # starts the watcher

    publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    assert client.get("/v1/model").get_json()["version"] == "v1"  # until the watcher checks
    ticks.step()
    assert client.get("/v1/model").get_json()["version"] == "v2"

    corrupt(publish_bundle(models, "v3", tiny_arrays(3.0), Manifest()))
    ticks.step()
    ticks.step()  # refused once, and v2 still served on the next check
    body = client.get("/v1/model").get_json()
    assert body["version"] == "v2" and "factors.npz" in body["last_error"]
    assert client.get("/v1/customers/c1/recommendations").status_code == 200
    assert ticks.intervals == [1, 1, 1, 1]  # RECSVC_RELOAD_SECONDS between two checks


def test_a_worker_forked_after_a_swap_serves_the_current_bundle(tmp_path: Path) -> None:
    """gunicorn forks a new worker (after a crash, a timeout, a HUP) from the master, which
    holds the bundle it loaded at start: the worker's first request serves what ``current``
    names now, not that one."""
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    config = ServiceConfig(
        models_dir=models, events_dir=tmp_path / "ev", auth=False, reload_seconds=3600
    )
    app = create_app(config, wait=WatcherTicks())  # the master: loads v1, serves nothing
    publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    assert app.test_client().get("/v1/model").get_json()["version"] == "v2"


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.message.startswith("bundle refused")]


def test_a_corrupt_current_at_start_serves_the_newest_bundle_that_verifies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    corrupt(publish_bundle(models, "v3", tiny_arrays(3.0), Manifest()))
    config = ServiceConfig(models_dir=models, events_dir=tmp_path / "ev", auth=False)
    app = create_app(config)
    client = app.test_client()

    assert (models / "current").read_text().strip() == "v3"  # the operator's pointer stays
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "model_version": "v2", "fallback_from": "v3"}
    model = client.get("/v1/model").get_json()
    assert model["version"] == "v2" and model["fallback_from"] == "v3"
    assert "factors.npz" in model["last_error"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'recsvc_bundle_fallback{current="v3",version="v2"} 1.0' in metrics
    assert 'recsvc_bundle_refused{version="v3"} 1.0' in metrics
    fallback = [r for r in caplog.records if "serving v2 instead" in r.message]
    assert len(fallback) == 1 and "current names v3" in fallback[0].message

    registry = service_of(app).registry
    assert not registry.check()  # the refused pointer is not retried
    assert len(refusal_lines(caplog)) == 1

    point_current(models, "v1")  # the pointer moves to a good bundle: it is served
    assert registry.check() and registry.model.version == "v1"
    assert client.get("/readyz").get_json()["fallback_from"] is None
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "recsvc_bundle_fallback{" not in metrics and "recsvc_bundle_refused{" not in metrics


def test_a_pointer_moved_back_clears_the_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    config = ServiceConfig(models_dir=models, events_dir=tmp_path / "ev", auth=False)
    app = create_app(config)
    client = app.test_client()
    registry = service_of(app).registry

    corrupt(publish_bundle(models, "v2", tiny_arrays(2.0), Manifest()))
    assert not registry.check()
    assert client.get("/v1/model").get_json()["last_error"] is not None
    assert 'recsvc_bundle_refused{version="v2"} 1.0' in client.get("/metrics").get_data(
        as_text=True
    )

    point_current(models, "v1")  # back to the bundle being served
    assert not registry.check()  # nothing to load ...
    body = client.get("/v1/model").get_json()
    assert body["version"] == "v1" and body["last_error"] is None  # ... but the refusal is over
    assert registry.refused is None
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "recsvc_bundle_refused{" not in metrics
    assert "recsvc_bundle_refusals 1.0" in metrics  # the count since start stays

    point_current(models, "v2")  # the pointer moved again: v2 is tried again, and refused
    assert not registry.check() and registry.refused == "v2"
    assert len(refusal_lines(caplog)) == 2


def test_nothing_verifies_at_start_then_a_good_bundle_is_published(tmp_path: Path) -> None:
    models = tmp_path / "models"
    corrupt(publish_bundle(models, "v1", tiny_arrays(), Manifest()))
    config = ServiceConfig(
        models_dir=models, events_dir=tmp_path / "ev", auth=False, reload_seconds=1
    )
    ticks = WatcherTicks()
    client = create_app(config, wait=ticks).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "factors.npz" in ready.get_json()["detail"]

    publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    ticks.step()
    assert client.get("/v1/model").get_json()["version"] == "v2"
    assert client.get("/readyz").get_json()["fallback_from"] is None


@pytest.mark.parametrize("damage", ["broken_zip", "wrong_dtype", "wrong_shape", "pickled_object"])
def test_an_unreadable_npz_is_refused_once_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    registry = ModelRegistry(tmp_path)
    assert registry.load()
    path = publish_bundle(tmp_path, "v2", tiny_arrays(2.0), Manifest())
    rewrite(path, *unreadable_files(tiny_arrays())[damage])

    for _ in range(3):  # three polls
        assert not registry.check()
    assert registry.model is not None and registry.model.version == "v1"
    assert registry.refused == "v2" and registry.refusals == 1
    (line,) = refusal_lines(caplog)
    assert "v2" in line.message and "still serving v1" in line.message
    assert all(record.exc_info is None for record in caplog.records)
    assert "Traceback" not in caplog.text


def test_triggers_that_cannot_be_served_are_a_refusal(tmp_path: Path) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    unknown_kind = dataclasses.replace(
        tiny_arrays(),
        trigger_rows=np.array([0], dtype=np.int32),
        trigger_kinds=np.array(["birthday"]),
        trigger_at=np.array([1], dtype=np.int64),
        trigger_reasons=np.array(["r"]),
        trigger_figures=np.array(["{}"]),
    )
    publish_bundle(tmp_path, "v2", unknown_kind, Manifest())
    not_json = dataclasses.replace(unknown_kind, trigger_kinds=np.array(["lapsing"]))
    not_json = dataclasses.replace(not_json, trigger_figures=np.array(["{not json"]))
    registry = ModelRegistry(tmp_path)
    assert not registry.load() and registry.model is not None  # the fallback, v1
    assert "trigger_kinds[0]" in (registry.last_error or "")
    publish_bundle(tmp_path, "v3", not_json, Manifest())
    assert not registry.check() and "trigger_figures[0]" in (registry.last_error or "")


def test_gunicorn_starts_with_nothing_servable_and_answers_readyz_503(tmp_path: Path) -> None:
    """The app is preloaded in gunicorn's master: a bundle that cannot be read must not stop
    the master, or nothing answers at all."""
    models = tmp_path / "models"
    path = publish_bundle(models, "v1", tiny_arrays(), Manifest())
    rewrite(path, *unreadable_files(tiny_arrays())["broken_zip"])
    port = free_port()
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_AUTH": "off",
        "RECSVC_WORKERS": "2",
        "RECSVC_RELOAD_SECONDS": "1",
        "RECSVC_BIND": f"127.0.0.1:{port}",
    }
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
            + ["recsvc.wsgi:app"],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            status, body = poll(f"http://127.0.0.1:{port}/readyz", server, lambda s: s == 503)
            assert status == 503 and "factors.npz" in str(body["detail"])
            publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
            status, body = poll(f"http://127.0.0.1:{port}/readyz", server, lambda s: s == 200)
            assert status == 200 and body["model_version"] == "v2"
        finally:
            server.terminate()
            server.wait(timeout=20)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert sum('"bundle refused' in line for line in text.splitlines()) == 1  # the master's


def poll(
    url: str, server: subprocess.Popen[bytes], done: Callable[[int], bool], seconds: float = 60
) -> tuple[int, dict[str, object]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "gunicorn exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            status, body = error.code, json.loads(error.read())
        except OSError:
            time.sleep(0.2)
            continue
        if done(status):
            return status, body
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer as expected in {seconds} s")
