"""A realistic traffic mix against a running recsvc.

    RECSVC_MODELS_DIR=models RECSVC_LOADTEST_KEY=rk_... \\
        locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Each simulated user is a visit: an anonymous session (``session:<id>``) that views items of
one category, adds some to its cart, asks for its blocks and recommendations, and now and
then signs in as a customer of the bundle (a ``login`` event) and starts a new visit. Around
it, traffic for known and unknown customers: website blocks, recommendations, similar items
and cart recommendations, email picks with opens and clicks, purchases. Keys of real
customers come from the bundle the server serves (RECSVC_MODELS_DIR). The key needs the
scopes recs:read and events:write. ``loadtests/run.py`` starts a server and checks targets.

With RECSVC_LOADTEST_WRITES set to a directory, every event write's outcome is appended to
``<dir>/writes-<pid>.txt`` as ``<status> <kind> <event_id>`` lines, so a fault scenario can
check that no acknowledged event was lost and no refused one applied.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from locust import FastHttpUser, task

from recsvc.bundle import load_bundle, load_current

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust runs it as a script
from loadtests.traffic import Traffic  # noqa: E402

# The customers and items to ask for: a named bundle, or the one the models dir serves.
TRAFFIC = Traffic(
    load_bundle(Path(os.environ["RECSVC_LOADTEST_BUNDLE"]))
    if os.environ.get("RECSVC_LOADTEST_BUNDLE")
    else load_current(Path(os.environ.get("RECSVC_MODELS_DIR", "models")))
)
READS = TRAFFIC.reads
HEADERS = {"X-API-Key": os.environ.get("RECSVC_LOADTEST_KEY", "")}
RATE_PER_USER = float(os.environ.get("RECSVC_LOADTEST_RATE_PER_USER", "10"))
EVENT_IDS = itertools.count()
WRITES = os.environ.get("RECSVC_LOADTEST_WRITES")
VIEWS_PER_VISIT = 8  # then the visit signs in, or ends


def now() -> str:
    return datetime.now(UTC).isoformat()


class Shopper(FastHttpUser):
    def on_start(self) -> None:
        self.next_request_at = time.monotonic()
        self.new_visit()

    def new_visit(self) -> None:
        self.session = f"session:load-{os.getpid()}-{random.randrange(10**12)}"
        self.browsing = TRAFFIC.same_category()
        self.viewed = 0

    def wait_time(self) -> float:
        """Each user's requests start as a Poisson process: exponential gaps between starts,
        kept whatever the responses take. Users with a fixed gap who started one gap apart
        (as locust spawns them) would all send at the same instant, every time."""
        self.next_request_at += random.expovariate(RATE_PER_USER)
        return max(0.0, self.next_request_at - time.monotonic())

    def post_event(self, kind: str, customer_key: str, **fields: object) -> None:
        event_id = f"load-{os.getpid()}-{next(EVENT_IDS)}-{random.randrange(10**9)}"
        event = {"event_id": event_id, "kind": kind, "customer": customer_key, "timestamp": now()}
        response = self.client.post(
            "/v1/events",
            json={"events": [{**event, **fields}]},
            name=f"/v1/events ({kind})",
            headers=HEADERS,
        )
        if WRITES:
            with open(Path(WRITES) / f"writes-{os.getpid()}.txt", "a") as handle:
                handle.write(f"{response.status_code} {kind} {event_id}\n")

    # The visit

    @task(10)
    def view(self) -> None:
        self.post_event("view", self.session, item_id=random.choice(self.browsing))
        self.viewed += 1
        if self.viewed >= VIEWS_PER_VISIT:
            if random.random() < 0.3:
                who = random.choice(TRAFFIC.customers)
                self.post_event("login", who, session=self.session)
            self.new_visit()

    @task(3)
    def cart_change(self) -> None:
        kind = "cart_add" if random.random() < 0.75 else "cart_remove"
        self.post_event(kind, self.session, item_id=random.choice(self.browsing))

    @task(10)
    def session_block(self) -> None:
        self.client.get(
            TRAFFIC.customer_block(self.session),
            name="/v1/customers/[session]/blocks/[slot]",
            headers=HEADERS,
        )

    @task(8)
    def session_recommendations(self) -> None:
        self.client.get(
            TRAFFIC.recommendations(self.session),
            name="/v1/customers/[session]/recommendations",
            headers=HEADERS,
        )

    @task(2)
    def recently_viewed(self) -> None:
        self.client.get(
            f"/v1/customers/{self.session}/recently-viewed",
            name="/v1/customers/[session]/recently-viewed",
            headers=HEADERS,
        )

    # Everyone else

    def read(self, name: str) -> None:
        self.client.get(READS[name].path(), name=name, headers=HEADERS)

    @task(22)
    def customer_block(self) -> None:
        self.read("/v1/customers/[key]/blocks/[slot]")

    @task(5)
    def anonymous_block(self) -> None:
        self.read("/v1/blocks/[slot]")

    @task(15)
    def recommendations(self) -> None:
        self.read("/v1/customers/[key]/recommendations")

    @task(5)
    def similar(self) -> None:
        self.read("/v1/items/[id]/similar")

    @task(3)
    def cart_recommendations(self) -> None:
        self.read("/v1/cart/recommendations")

    @task(8)
    def email_picks(self) -> None:
        self.read("/v1/customers/[key]/email-picks")

    @task(4)
    def email_engagement(self) -> None:
        who, send = random.choice(TRAFFIC.customers), f"campaign-{random.randrange(5)}"
        self.post_event("email_open", who, send_id=send)
        if random.random() < 0.2:
            item = random.choice(TRAFFIC.items)
            self.post_event("email_click", who, send_id=send, item_id=item)

    @task(3)
    def purchase(self) -> None:
        buyer = self.session if random.random() < 0.3 else TRAFFIC.customer()
        item = random.choice(TRAFFIC.items)
        self.post_event("purchase", buyer, item_id=item, quantity=1, price=2.5)
