"""What the load tests ask for: customers, items and read requests drawn from the bundle the
server serves. One definition for locust's realistic mix (``loadtests/locustfile.py``) and
the light latency probe (``loadtests/probe.py``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from recsvc.bundle import Bundle

UNKNOWN_SHARE = 0.2  # of requests for a customer: a visitor the bundle does not know
POPULAR_ITEMS = 500  # items are drawn from the best sellers


@dataclass(frozen=True)
class Read:
    """One kind of read request: ``name`` as locust reports it, ``route`` as the server's
    latency histogram labels it (its Flask rule), ``path`` a new request's path each call."""

    name: str
    route: str
    path: Callable[[], str]


class Traffic:
    def __init__(self, bundle: Bundle) -> None:
        arrays = bundle.arrays
        popular = arrays.popular_items[:POPULAR_ITEMS]
        self.customers = [str(customer) for customer in arrays.customer_ids]
        self.items = [str(item) for item in arrays.item_ids[popular]]
        self.category_bits = arrays.item_categories[popular]
        self.slots = list(bundle.manifest.channels.slots)
        # The reads that need no earlier request (a session's need its views first).
        self.reads = {
            read.name: read
            for read in (
                Read(
                    "/v1/customers/[key]/blocks/[slot]",
                    "/v1/customers/<key>/blocks/<slot>",
                    lambda: self.customer_block(self.customer()),
                ),
                Read(
                    "/v1/blocks/[slot]",
                    "/v1/blocks/<slot>",
                    lambda: f"/v1/blocks/{random.choice(self.slots)}?format=html",
                ),
                Read(
                    "/v1/customers/[key]/recommendations",
                    "/v1/customers/<key>/recommendations",
                    lambda: self.recommendations(self.customer()),
                ),
                Read(
                    "/v1/items/[id]/similar",
                    "/v1/items/<item_id>/similar",
                    lambda: f"/v1/items/{random.choice(self.items)}/similar?n=6",
                ),
                Read(
                    "/v1/cart/recommendations",
                    "/v1/cart/recommendations",
                    lambda: (
                        "/v1/cart/recommendations?items="
                        + ",".join(random.sample(self.items, random.randint(1, 4)))
                    ),
                ),
                Read(
                    "/v1/customers/[key]/email-picks",
                    "/v1/customers/<key>/email-picks",
                    lambda: (
                        f"/v1/customers/{self.customer()}/email-picks"
                        f"?send_id=campaign-{random.randrange(5)}&n=4"
                    ),
                ),
            )
        }
        # The reads of a visit's session: the same routes as a customer's.
        self.session_routes = {
            "/v1/customers/[session]/blocks/[slot]": "/v1/customers/<key>/blocks/<slot>",
            "/v1/customers/[session]/recommendations": "/v1/customers/<key>/recommendations",
            "/v1/customers/[session]/recently-viewed": "/v1/customers/<key>/recently-viewed",
        }

    def route_of(self, name: str) -> str | None:
        """The server's route for locust's request ``name`` (None: not a read)."""
        if name in self.reads:
            return self.reads[name].route
        return self.session_routes.get(name)

    def customer(self) -> str:
        if random.random() < UNKNOWN_SHARE:
            return f"visitor-{random.randrange(10**9)}"
        return random.choice(self.customers)

    def customer_block(self, key: str) -> str:
        return f"/v1/customers/{key}/blocks/{random.choice(self.slots)}?format=html"

    def recommendations(self, key: str) -> str:
        return f"/v1/customers/{key}/recommendations?n=10"

    def same_category(self) -> list[str]:
        """Popular items of one category, drawn at random (all of them if it has fewer than 3)."""
        seed = random.randrange(len(self.items))
        bits = self.category_bits
        same = [self.items[k] for k in range(len(self.items)) if bits[k] & bits[seed]]
        return same if len(same) >= 3 else self.items
