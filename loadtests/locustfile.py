"""Traffic against a running recsvc: recommendations for real customers and for unknown ones.

    RECSVC_MODELS_DIR=models locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Customer ids are read from the bundle the server is serving (RECSVC_MODELS_DIR).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import HttpUser, between, task

from recsvc.bundle import load_current

BUNDLE = load_current(Path(os.environ.get("RECSVC_MODELS_DIR", "models")))
CUSTOMERS = [str(customer) for customer in BUNDLE.arrays.customer_ids]


class Visitor(HttpUser):
    wait_time = between(0.0, 0.02)

    @task(9)
    def known_customer(self) -> None:
        customer = random.choice(CUSTOMERS)
        self.client.get(
            f"/v1/customers/{customer}/recommendations?n=10",
            name="/v1/customers/[id]/recommendations",
        )

    @task(1)
    def unknown_customer(self) -> None:
        self.client.get(
            f"/v1/customers/unknown-{random.randrange(10**9)}/recommendations?n=10",
            name="/v1/customers/[unknown]/recommendations",
        )
