"""What an operator sees: Prometheus metrics, JSON request logs without personal data, rate
limits per API key."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from benchmarks.local_server import gunicorn
from recsvc.app import create_app
from recsvc.auth import mint
from recsvc.bundle import current_version, load_current, publish_bundle
from recsvc.config import ServiceConfig
from recsvc.identity import DEVELOPMENT_SECRET
from recsvc.manifest import Manifest
from tests.helpers import ManualClock, WatcherTicks
from tests.test_bundle import tiny_arrays
from tests.test_reload import corrupt

OPS, OPS_LINE = mint("ops", ["metrics:read"])
WEB, WEB_LINE = mint("web", ["recs:read"], rate=5)
ADMIN, ADMIN_LINE = mint("admin", ["admin"], rate=0)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def service(
    models: Path,
    tmp_path: Path,
    redis_url: str | None = None,
    clock: Callable[[], float] = time.time,
    wait: Callable[[float], object] = time.sleep,
) -> FlaskClient:
    config = ServiceConfig.from_mapping(
        {
            "RECSVC_MODELS_DIR": str(models),
            "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
            "RECSVC_API_KEYS": ",".join([OPS_LINE, WEB_LINE, ADMIN_LINE]),
            "RECSVC_ID_SECRET": DEVELOPMENT_SECRET,  # the sample bundle's
            "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",
            "RECSVC_RELOAD_SECONDS": "1",
            **({"RECSVC_REDIS_URL": redis_url} if redis_url else {}),
        }
    )
    return create_app(config, clock=clock, wait=wait).test_client()


def scrape(client: FlaskClient) -> dict[str, float]:
    """Each sample line of /metrics, name{labels} -> value."""
    response = client.get("/metrics", headers=bearer(OPS))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_requests_latency_and_fallbacks(sample_models: Path, tmp_path: Path) -> None:
    client = service(sample_models, tmp_path)
    route = "/v1/customers/<key>/recommendations"
    before = scrape(client)
    ok = f'recsvc_requests_total{{method="GET",route="{route}",status="200"}}'
    missing = 'recsvc_requests_total{method="GET",route="unmatched",status="404"}'
    fallbacks = f'recsvc_fallbacks_total{{route="{route}"}}'
    latency = f'recsvc_request_duration_seconds_count{{route="{route}"}}'

    known = str(load_current(sample_models).arrays.customer_ids[0])
    for key in (known, "nobody-we-know", "nobody-else"):
        assert (
            client.get(f"/v1/customers/{key}/recommendations", headers=bearer(WEB)).status_code
            == 200
        )
    assert client.get("/no/such/path/12345").status_code == 404

    after = scrape(client)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[latency] - before.get(latency, 0) == 3
    assert after[fallbacks] - before.get(fallbacks, 0) == 2
    assert after[missing] - before.get(missing, 0) == 1
    version = current_version(sample_models)
    assert after[f'recsvc_bundle_info{{version="{version}"}}'] == 1
    assert 0 <= after["recsvc_bundle_age_seconds"] < 86400
    assert after["recsvc_bundle_refusals"] == 0
    assert not any("12345" in name or known in name for name in after)  # no ids as labels


def test_metrics_need_the_metrics_scope(sample_models: Path, tmp_path: Path) -> None:
    client = service(sample_models, tmp_path)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(WEB)).status_code == 403
    assert client.get("/metrics", headers=bearer(ADMIN)).status_code == 200


def test_a_refused_bundle_shows_in_the_metrics(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    ticks = WatcherTicks()
    client = service(models, tmp_path, wait=ticks)
    assert client.get("/v1/model").get_json()["version"] == "v1"  # starts the watcher
    corrupt(publish_bundle(models, "v2", tiny_arrays(2.0), Manifest()))
    ticks.step()
    samples = scrape(client)
    assert samples['recsvc_bundle_refused{version="v2"}'] == 1
    assert samples["recsvc_bundle_refusals"] == 1
    assert samples['recsvc_bundle_info{version="v1"}'] == 1
    assert client.get("/v1/model").get_json()["version"] == "v1"


def test_rate_limit_answers_429_with_retry_after(sample_models: Path, tmp_path: Path) -> None:
    # A small "now": a burst's sums of 1/rate steps then round far below the limiter's 1e-9.
    clock = ManualClock(start=1000.0)
    client = service(sample_models, tmp_path, clock=clock)
    statuses = [
        client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code
        for _ in range(8)
    ]
    assert statuses[:5] == [200] * 5 and statuses[-1] == 429  # a burst of one second's worth
    refused = client.get("/v1/customers/x/recommendations", headers=bearer(WEB))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "'web' is over its rate limit" in refused.get_json()["detail"]
    # Other keys have their own buckets; rate 0 means unlimited.
    assert all(
        client.get("/v1/customers/x/recommendations", headers=bearer(ADMIN)).status_code == 200
        for _ in range(20)
    )
    clock.advance(0.19)
    assert client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code == 429
    clock.advance(0.02)  # over 1/5 s after the burst: one more request at 5 a second
    assert client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code == 200
    assert client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code == 429
    clock.advance(1.2)  # a whole burst again
    assert [
        client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code
        for _ in range(6)
    ] == [200] * 5 + [429]


def test_rate_limit_is_shared_through_redis(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> None:
    first = service(sample_models, tmp_path / "a", clean_redis)
    second = service(sample_models, tmp_path / "b", clean_redis)  # another worker or host
    statuses = [
        client.get("/v1/customers/x/recommendations", headers=bearer(WEB)).status_code
        for client in (first, second) * 4
    ]
    assert statuses.count(200) in (5, 6) and statuses[-1] == 429


def test_request_ids_are_echoed_or_made(sample_models: Path, tmp_path: Path) -> None:
    client = service(sample_models, tmp_path)
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == (
        "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert re.fullmatch(r"[0-9a-f]{16}", made.headers["X-Request-ID"])


def test_logs_of_an_end_to_end_run_hold_no_personal_data(
    sample_models: Path, tmp_path: Path
) -> None:
    """Train, serve under gunicorn, send traffic naming customers by id, email and phone,
    then read every log line."""
    models = tmp_path / "models"
    shutil.copytree(sample_models, models)
    arrays = load_current(models).arrays
    known = [str(customer) for customer in arrays.customer_ids[:5]]
    email, phone = "jane.doe@example.com", "+44 7700 900123"
    env = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_API_KEYS": ADMIN_LINE,
        "RECSVC_WORKERS": "2",
    }
    log_path = tmp_path / "service.log"
    with gunicorn(env, log_path=log_path) as base:
        paths = [f"/v1/customers/{key}/recommendations" for key in known]
        paths += [
            f"/v1/customers/email:{email}/profile",
            f"/v1/customers/phone:{phone.replace(' ', '%20')}/email-picks?send_id=s1",
            f"/v1/customers/{known[0]}/blocks/home_hero?format=html",
            "/v1/customers/12345678/recommendations?n=0",  # a 400
            "/v1/triggers",
            "/metrics",
        ]
        for path in paths:
            call(f"{base}{path}")
        event = {
            "event_id": "e1",
            "customer": f"email:{email}",
            "item_id": str(arrays.item_ids[0]),
            "quantity": 1,
            "price": 2.5,
            "timestamp": "2011-12-09T12:00:00Z",
        }
        assert call(f"{base}/v1/events", {"events": [event]})[0] == 200
        assert call(f"{base}/v1/customers/email:{email}", method="DELETE")[0] == 200

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    access = [
        line
        for line in lines
        if line["logger"] == "recsvc.access" and line["route"] != "/readyz"  # the start probe
    ]
    assert len(access) == len(paths) + 2
    for line in access:
        assert set(line) >= {"ts", "level", "request_id", "route", "status", "latency_ms"}
        assert line["route"].startswith(("/v1/", "/metrics"))
    assert {line["status"] for line in access} >= {200, 400}
    assert sum("customer" in line for line in access) == len(paths) - 2 + 1  # DELETE too
    text = log_path.read_text()
    for secret in [*known, "12345678", email, "jane.doe", "7700 900123", "447700900123"]:
        assert not contains_value(lines, secret), f"{secret!r} is in the service log"
    assert "@" not in text


def contains_value(lines: list[dict[str, Any]], secret: str) -> bool:
    """Whether any logged string holds ``secret`` (numbers such as latencies are not ids)."""
    return any(
        isinstance(value, str) and secret in value for line in lines for value in line.values()
    )


def call(url: str, body: object = None, method: str | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=bearer(ADMIN))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer "])
def test_malformed_or_conflicting_credentials_are_refused(
    sample_models: Path, tmp_path: Path, header: str
) -> None:
    client = service(sample_models, tmp_path)
    path = "/v1/customers/x/recommendations"
    assert (
        client.get(path, headers={"Authorization": header, "X-API-Key": ADMIN}).status_code == 401
    )
    both = {**bearer(ADMIN), "X-API-Key": WEB}
    assert client.get(path, headers=both).status_code == 401
    same = {**bearer(ADMIN), "X-API-Key": ADMIN}
    assert client.get(path, headers=same).status_code == 200
