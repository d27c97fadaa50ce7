"""The production front: request bodies over the limit are refused unread."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from recsvc import create_app, defaults
from recsvc.config import ServiceConfig
from recsvc.errors import ConfigError

LIMIT = defaults.MAX_BODY_BYTES
TOO_LARGE = 2 * 1024 * 1024


class Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # the test client looks for the end; it never gets there

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return 0

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read")


@pytest.fixture
def client(sample_models: Path, tmp_path: Path) -> FlaskClient:
    config = ServiceConfig(models_dir=sample_models, events_dir=tmp_path / "events", auth=False)
    return create_app(config).test_client()


def assert_too_large(status: int, content_type: str, body: bytes) -> None:
    assert status == 413
    assert content_type.startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 413 and str(LIMIT) in problem["detail"]


def test_a_full_batch_of_the_longest_events_fits(client: FlaskClient) -> None:
    events = [
        {
            "event_id": f"{i:06d}".ljust(128, "e"),
            "customer": f"email:{i:06d}".ljust(250, "c") + "@x.com",
            "item_id": f"{i:06d}".ljust(64, "I"),
            "quantity": -999999.5,
            "price": 9999999.99,
            "timestamp": "2011-12-10T10:00:00.000000+00:00",
            "source": "s".ljust(64, "s"),
        }
        for i in range(1000)
    ]
    body = json.dumps({"events": events}).encode()
    assert 600_000 < len(body) < LIMIT
    response = client.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["accepted"]) == 1000


def test_a_declared_length_over_the_limit_is_refused_unread(client: FlaskClient) -> None:
    response = client.post(
        "/v1/events",
        input_stream=Unreadable(),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(LIMIT + 1)},
    )
    assert_too_large(response.status_code, response.content_type, response.get_data())
    # Wherever it is sent, before routing: no endpoint reads such a body.
    response = client.post(
        "/healthz", input_stream=Unreadable(), environ_overrides={"CONTENT_LENGTH": str(TOO_LARGE)}
    )
    assert response.status_code == 413


def test_a_chunked_body_over_the_limit_is_refused(client: FlaskClient) -> None:
    response = client.post(
        "/v1/events",
        input_stream=io.BytesIO(b"[" + b" " * TOO_LARGE + b"]"),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_too_large(response.status_code, response.content_type, response.get_data())
    # One of exactly the limit is read in full.
    batch = json.dumps({"events": []}).encode()
    response = client.post(
        "/v1/events",
        input_stream=io.BytesIO(batch.ljust(LIMIT)),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert "1 to 1000 events" in response.get_json()["detail"]


def test_the_limit_is_configured(sample_models: Path, tmp_path: Path) -> None:
    base = {"RECSVC_MODELS_DIR": str(sample_models), "RECSVC_AUTH": "off"}
    assert ServiceConfig.from_mapping(base).max_body_bytes == LIMIT
    config = ServiceConfig.from_mapping({**base, "RECSVC_MAX_BODY_BYTES": "4096"})
    assert config.max_body_bytes == 4096
    for bad in ("1mb", "0", str(2 << 30)):
        with pytest.raises(ConfigError, match="RECSVC_MAX_BODY_BYTES"):
            ServiceConfig.from_mapping({**base, "RECSVC_MAX_BODY_BYTES": bad})
    small = create_app(
        ServiceConfig(
            models_dir=sample_models, events_dir=tmp_path, auth=False, max_body_bytes=4096
        )
    ).test_client()
    response = small.post("/v1/events", data=b"x" * 4097, content_type="application/json")
    assert response.status_code == 413 and "4096 bytes" in response.get_json()["detail"]
