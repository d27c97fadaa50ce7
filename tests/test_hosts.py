"""Several hosts behind the shipped front proxy: two gunicorn instances (each a "host", with
its own events and verification directories) behind nginx, sharing one models directory and
one Redis. A purchase reported to one host is excluded by the other at once, and a bundle
published once is served by both."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from benchmarks.local_server import gunicorn, nginx
from recsvc import defaults
from recsvc.bundle import load_current, publish_bundle
from tests.test_front import require_nginx


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@pytest.fixture
def hosts(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> Iterator[tuple[Path, str, str, str]]:
    """(the shared models directory, host A's URL, host B's, the front's)."""
    require_nginx()
    models = tmp_path / "models"  # a copy, so that this test can publish into it
    sample = load_current(sample_models)
    publish_bundle(models, sample.version, sample.arrays, sample.manifest, sample.attachments)
    with ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            env = {
                "RECSVC_MODELS_DIR": str(models),
                "RECSVC_REDIS_URL": clean_redis,
                "RECSVC_AUTH": "off",
                "RECSVC_WORKERS": "2",
                "RECSVC_RELOAD_SECONDS": "1",
                # What each host keeps on its own disk.
                "RECSVC_EVENTS_DIR": str(tmp_path / name / "events"),
                "RECSVC_VERIFIED_DIR": str(tmp_path / name / "verified"),
            }
            urls.append(stack.enter_context(gunicorn(env, tmp_path / f"{name}.log")))
        a, b = urls
        front = stack.enter_context(
            nginx(
                a.removeprefix("http://"),
                defaults.MAX_BODY_BYTES,
                more_upstreams=[b.removeprefix("http://")],
            )
        )
        yield models, a, b, front


def recommended(base: str, customer: str) -> list[str]:
    body = get(f"{base}/v1/customers/{quote(customer, safe='')}/recommendations?n=10")
    return [item["item_id"] for item in body["items"]]


def test_a_purchase_reported_to_one_host_is_excluded_by_the_other_at_once(
    hosts: tuple[Path, str, str, str],
) -> None:
    models, a, b, front = hosts
    customer = str(load_current(models).arrays.customer_ids[5])
    top = recommended(b, customer)[0]
    assert recommended(a, customer)[0] == top  # one bundle, one answer

    purchase = {
        "event_id": "hosts-purchase-1",
        "kind": "purchase",
        "customer": customer,
        "item_id": top,
        "quantity": 1,
        "price": 2.5,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    assert post(f"{a}/v1/events", {"events": [purchase]})["accepted"] == ["hosts-purchase-1"]

    for _ in range(4):  # each host's two workers, any of them answering
        assert top not in recommended(b, customer)
        assert top not in recommended(a, customer)
    for _ in range(8):  # through the front, which spreads the requests over both hosts
        assert top not in recommended(front, customer)
    # The event reported again, to the other host, counts once: the event ids are shared.
    again = post(f"{front}/v1/events", {"events": [purchase]})
    assert again["accepted"] == [] and again["duplicates"] == ["hosts-purchase-1"]


def test_a_bundle_published_once_is_served_by_both_hosts(
    hosts: tuple[Path, str, str, str],
) -> None:
    models, a, b, front = hosts
    current = load_current(models)
    version = f"{current.version}-next"
    publish_bundle(models, version, current.arrays, current.manifest, current.attachments)
    deadline = time.monotonic() + 60  # a worker verifies the new bundle first, or waits for it
    for base in (a, b):
        # Every worker of the host checks the pointer each second; ten answers in a row
        # with the new version: both of its workers serve it.
        streak = 0
        while streak < 10:
            assert time.monotonic() < deadline, f"{base} does not serve {version}"
            streak = streak + 1 if get(f"{base}/v1/model")["version"] == version else 0
            if not streak:
                time.sleep(0.2)
    streak = 0
    while streak < 8:  # through the front, eight answers in a row from the new version
        assert time.monotonic() < deadline, f"{front} does not serve {version}"
        streak = streak + 1 if get(f"{front}/readyz")["model_version"] == version else 0
        if not streak:
            time.sleep(0.2)


def test_a_customer_erased_through_one_host_is_unknown_to_the_other(
    hosts: tuple[Path, str, str, str],
) -> None:
    models, a, b, _ = hosts
    customer = str(load_current(models).arrays.customer_ids[7])
    path = f"/v1/customers/{quote(customer, safe='')}"
    assert get(f"{b}{path}/recommendations")["fallback"] is False
    request = urllib.request.Request(f"{a}{path}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["erased"] is True
    for _ in range(4):
        assert get(f"{b}{path}/recommendations")["fallback"] is True
