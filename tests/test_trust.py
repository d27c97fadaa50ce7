"""Correct with any number of workers: real gunicorn with two workers on the embedded store,
and with a real Redis that is restarted empty under load."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.local_server import gunicorn
from recsvc.bundle import load_current
from tests.redis_server import RedisProcess

NOW = "2011-12-10T10:00:00Z"


def call(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def purchase(event_id: str, customer: str, item: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer": customer,
        "item_id": item,
        "quantity": 1,
        "price": 2.0,
        "timestamp": NOW,
    }


def logged_ids(events_dir: Path) -> Counter[str]:
    return Counter(
        json.loads(line)["event_id"]
        for path in events_dir.glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    )


def test_every_worker_sees_one_state(sample_models: Path, tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    env = {
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(events_dir),
        "RECSVC_WORKERS": "2",
    }
    customer = str(load_current(sample_models).arrays.customer_ids[7])
    with gunicorn(env) as base:
        url = f"{base}/v1/customers/{customer}/recommendations?n=100"
        top = call("GET", url)[1]["items"][0]["item_id"]

        # The same event sent ten times at once, to whichever worker takes each: one accepted.
        batch = {"events": [purchase("w-1", customer, top)]}
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: call("POST", f"{base}/v1/events", batch), range(10)))
        accepted = [body for status, body in answers if body["accepted"]]
        assert len(accepted) == 1 and all(status == 200 for status, _ in answers)
        assert logged_ids(events_dir) == Counter({"w-1": 1})

        readers = list(ThreadPoolExecutor(4).map(lambda _: call("GET", url)[1], range(16)))
        assert all(top not in [item["item_id"] for item in body["items"]] for body in readers)
        pids = {p.name.rsplit("-", 1)[-1] for p in events_dir.glob("events-*.jsonl")}
        assert len(pids) == 1  # one worker logged it; the other read it through the store

        assert call("DELETE", f"{base}/v1/customers/{customer}")[0] == 200
        after = list(ThreadPoolExecutor(4).map(lambda _: call("GET", url)[1], range(16)))
        assert all(body["fallback"] is True for body in after)
        status, body = call(
            "POST", f"{base}/v1/events", {"events": [purchase("w-2", customer, top)]}
        )
        assert status == 422 and body["rejected"][0]["errors"] == [
            "customer: this customer was erased"
        ]

    # A restart keeps all of it.
    with gunicorn(env) as base:
        assert call("GET", f"{base}/v1/customers/{customer}/recommendations")[1]["fallback"]
        again = call("POST", f"{base}/v1/events", batch)[1]
        assert again["accepted"] == [] and (again["duplicates"] or again["rejected"])


def test_redis_restarted_empty_under_load_loses_and_doubles_nothing(
    sample_models: Path, tmp_path: Path
) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    events_dir = tmp_path / "events"
    env = {
        "RECSVC_MODELS_DIR": str(sample_models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(events_dir),
        "RECSVC_WORKERS": "2",
        "RECSVC_REDIS_URL": server.url,
    }
    arrays = load_current(sample_models).arrays
    customers = [str(c) for c in arrays.customer_ids[10:20]]
    items = [str(i) for i in arrays.item_ids[:400]]
    accepted: Counter[str] = Counter()
    refused = 0
    bought: dict[str, set[str]] = {c: set() for c in customers}
    stop = threading.Event()
    try:
        with gunicorn(env) as base:

            def write() -> None:
                nonlocal refused
                number = 0
                while not stop.is_set():
                    number += 1
                    customer, item = customers[number % 10], items[number % 400]
                    event = purchase(f"load-{number}", customer, item)
                    for _ in range(2):  # each event sent twice: a client retrying
                        status, body = call("POST", f"{base}/v1/events", {"events": [event]})
                        if status == 200 and body["accepted"]:
                            accepted[event["event_id"]] += 1
                            bought[customer].add(item)
                        refused += status == 503
                    # An id accepted long ago, replayed: must be a duplicate.
                    if number > 20:
                        old = purchase(f"load-{number - 20}", customers[(number - 20) % 10], "X")
                        status, body = call("POST", f"{base}/v1/events", {"events": [old]})
                        if status == 200 and body["accepted"]:
                            accepted[old["event_id"]] += 1
                    time.sleep(0.01)

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(2)
            server.stop()
            time.sleep(1)
            server.start()  # empty: this redis-server keeps nothing on disk
            deadline = time.monotonic() + 20
            probe = f"{base}/v1/customers/{customers[0]}/recommendations"
            while call("GET", probe)[1]["degraded"] and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)
            stop.set()
            writer.join()

            assert refused > 0, "the outage was not seen"
            assert accepted and max(accepted.values()) == 1, "an event was accepted twice"
            assert sum(logged_ids(events_dir).values()) == len(accepted)
            for customer in customers:
                body = call("GET", f"{base}/v1/customers/{customer}/recommendations?n=100")[1]
                assert body["degraded"] is False
                assert not bought[customer] & {item["item_id"] for item in body["items"]}
                profile = call("GET", f"{base}/v1/customers/{customer}/profile")[1]
                mine = [
                    i for i in accepted if int(i.split("-")[1]) % 10 == customers.index(customer)
                ]
                assert profile["since_training"]["events"] == len(mine), "a purchase was forgotten"
    finally:
        stop.set()
        server.stop()
