"""End to end: the wsgi entry served by a real gunicorn, configured from the environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.bundle import load_current


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def gunicorn_url(sample_models: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(sample_models),
        "OPENBLAS_NUM_THREADS": "1",
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "recsvc.wsgi:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate()[0]
                pytest.fail(f"gunicorn did not become ready:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_served_by_gunicorn(gunicorn_url: str, sample_models: Path) -> None:
    bundle = load_current(sample_models)
    customer = str(bundle.arrays.customer_ids[5])
    owned = {
        str(bundle.arrays.item_ids[i])
        for i in bundle.arrays.owned_indices[
            bundle.arrays.owned_indptr[5] : bundle.arrays.owned_indptr[6]
        ]
    }

    status, body = get(f"{gunicorn_url}/v1/customers/{customer}/recommendations?n=20")
    assert status == 200 and body["fallback"] is False
    items = body["items"]
    assert isinstance(items, list) and len(items) == 20
    assert not {item["item_id"] for item in items} & owned

    status, body = get(f"{gunicorn_url}/v1/customers/unknown-42/recommendations")
    assert status == 200 and body["fallback"] is True

    status, body = get(f"{gunicorn_url}/v1/customers/x/recommendations?n=zero")
    assert status == 400 and "n:" in str(body["detail"])
