"""A realistic traffic mix against a running recsvc.

    RECSVC_MODELS_DIR=models RECSVC_LOADTEST_KEY=rk_... \\
        locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Website blocks ~50 %, recommendations ~30 % (this API has no similar-items endpoint yet, so
its share is here), email picks ~15 %, purchase events ~5 %; keys of real customers from the
bundle the server serves (RECSVC_MODELS_DIR) and of unknown visitors. The key needs the
scopes recs:read and events:write. ``loadtests/run.py`` starts a server and checks targets.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from locust import FastHttpUser, task

from recsvc.bundle import load_bundle, load_current

# The customers and items to ask for: a named bundle, or the one the models dir serves.
BUNDLE = (
    load_bundle(Path(os.environ["RECSVC_LOADTEST_BUNDLE"]))
    if os.environ.get("RECSVC_LOADTEST_BUNDLE")
    else load_current(Path(os.environ.get("RECSVC_MODELS_DIR", "models")))
)
CUSTOMERS = [str(customer) for customer in BUNDLE.arrays.customer_ids]
ITEMS = [str(item) for item in BUNDLE.arrays.item_ids[BUNDLE.arrays.popular_items[:500]]]
SLOTS = list(BUNDLE.manifest.channels.slots)
HEADERS = {"X-API-Key": os.environ.get("RECSVC_LOADTEST_KEY", "")}
RATE_PER_USER = float(os.environ.get("RECSVC_LOADTEST_RATE_PER_USER", "10"))
UNKNOWN_SHARE = 0.2
EVENT_IDS = itertools.count()


def customer() -> str:
    if random.random() < UNKNOWN_SHARE:
        return f"visitor-{random.randrange(10**9)}"
    return random.choice(CUSTOMERS)


class Shopper(FastHttpUser):
    def on_start(self) -> None:
        self.next_request_at = time.monotonic()

    def wait_time(self) -> float:
        """Each user's requests start as a Poisson process: exponential gaps between starts,
        kept whatever the responses take. Users with a fixed gap who started one gap apart
        (as locust spawns them) would all send at the same instant, every time."""
        self.next_request_at += random.expovariate(RATE_PER_USER)
        return max(0.0, self.next_request_at - time.monotonic())

    @task(40)
    def customer_block(self) -> None:
        self.client.get(
            f"/v1/customers/{customer()}/blocks/{random.choice(SLOTS)}?format=html",
            name="/v1/customers/[key]/blocks/[slot]",
            headers=HEADERS,
        )

    @task(10)
    def anonymous_block(self) -> None:
        self.client.get(
            f"/v1/blocks/{random.choice(SLOTS)}?format=html",
            name="/v1/blocks/[slot]",
            headers=HEADERS,
        )

    @task(30)
    def recommendations(self) -> None:
        self.client.get(
            f"/v1/customers/{customer()}/recommendations?n=10",
            name="/v1/customers/[key]/recommendations",
            headers=HEADERS,
        )

    @task(15)
    def email_picks(self) -> None:
        send = f"campaign-{random.randrange(5)}"
        self.client.get(
            f"/v1/customers/{customer()}/email-picks?send_id={send}&n=4",
            name="/v1/customers/[key]/email-picks",
            headers=HEADERS,
        )

    @task(5)
    def purchase(self) -> None:
        event = {
            "event_id": f"load-{os.getpid()}-{next(EVENT_IDS)}-{random.randrange(10**9)}",
            "customer": customer(),
            "item_id": random.choice(ITEMS),
            "quantity": 1,
            "price": 2.5,
            "timestamp": datetime.now(UTC).isoformat(),
        }
        self.client.post("/v1/events", json={"events": [event]}, name="/v1/events", headers=HEADERS)
