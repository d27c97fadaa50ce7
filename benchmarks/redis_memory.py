"""Redis memory per customer: what the real-time store holds for a customer's activity.

    python benchmarks/redis_memory.py [--customers 100000] [--redis-url URL]

Writes, through the service's own store (``recsvc.store.RedisStore``), one retention
window's activity for ``--customers`` customers into a private redis-server (or the one
``--redis-url`` names: it must be empty, as the figure is the server's whole memory):
per customer the event mix below, one email send's kept picks and the lists shown to them
within the attribution window. Prints and writes (--out, JSON) Redis's ``used_memory`` per
customer and per event, and its extrapolation to a million customers. The mix is an
assumption, written here so it can be changed: a shop's own event rates give its own figure
(memory grows linearly with events kept, as the per-event figure shows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import RedisProcess  # noqa: E402
from recsvc import defaults  # noqa: E402
from recsvc.identity import IdentityKey  # noqa: E402
from recsvc.store import Impression, RedisStore, StoredEvent, customer_key  # noqa: E402

# Events per customer kept in one retention window (defaults.EVENT_RETENTION_DAYS).
EVENT_MIX = {
    "purchase": 2,
    "view": 12,
    "cart_add": 2,
    "email_open": 3,
    "email_click": 1,
}
IMPRESSIONS = 2  # lists shown within the attribution window
SNAPSHOTS = 1  # email sends whose picks are kept
ITEMS_SHOWN = 10
BATCH = 500  # customers per store call


def customer_activity(
    store_key: str, number: int, now: float
) -> tuple[list[tuple[str, StoredEvent]], list[Impression]]:
    events = []
    for kind, count in EVENT_MIX.items():
        for k in range(count):
            at = now - 86400.0 * ((number + k) % defaults.EVENT_RETENTION_DAYS)
            events.append(
                (
                    store_key,
                    StoredEvent(
                        event_id=f"{kind}-{number}-{k}",
                        item_id="" if kind == "email_open" else f"SKU{(number * 7 + k) % 20000}",
                        quantity=1.0 if kind == "purchase" else 0.0,
                        price=9.95 if kind == "purchase" else 0.0,
                        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                        source="shop",
                        received_at=at,
                        kind=kind,
                        send_id=f"send-{k}" if kind.startswith("email") else None,
                    ),
                )
            )
    shown = [
        Impression(
            impression_id=f"imp-{number}-{k}",
            shown_at=now - 600.0 * k,
            customer=store_key,
            model_version="20261202T000000Z-bench",
            surface="recommendations",
            items=tuple(f"SKU{(number + j) % 20000}" for j in range(ITEMS_SHOWN)),
        )
        for k in range(IMPRESSIONS)
    ]
    return events, shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--redis-url", help="an empty Redis (default: a private redis-server)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/redis_memory.json"))
    args = parser.parse_args()
    key = IdentityKey.development_key()
    with ExitStack() as servers:
        url = args.redis_url
        if url is None:
            process = RedisProcess(Path(servers.enter_context(tempfile.TemporaryDirectory())))
            process.start()
            servers.callback(process.stop)
            url = process.url
        client = redis.Redis.from_url(url)
        if client.dbsize():
            sys.exit(f"{url} is not empty: the figure is the server's whole memory")
        store = RedisStore(url, "bench", defaults.EVENT_RETENTION_DAYS * 86400.0, timeout=30.0)
        store.mark_restored()
        empty = int(client.info("memory")["used_memory"])
        now = time.time()
        events = 0
        for start in range(0, args.customers, BATCH):
            batch_events: list[tuple[str, StoredEvent]] = []
            batch_shown: list[Impression] = []
            for number in range(start, min(start + BATCH, args.customers)):
                store_key = customer_key(key, f"id:customer-{number}")
                activity, shown = customer_activity(store_key, number, now)
                batch_events += activity
                batch_shown += shown
                for send in range(SNAPSHOTS):
                    picks = json.dumps({"items": [f"SKU{number % 20000}"] * 4, "send": send})
                    store.snapshot(store_key, f"send-{send}", picks, 30 * 86400.0)
            store.apply(batch_events)
            store.record_impressions(batch_shown)
            events += len(batch_events)
        used = int(client.info("memory")["used_memory"]) - empty
        client.close()
    per_customer = used / args.customers
    result = {
        "customers": args.customers,
        "events": events,
        "event_mix": EVENT_MIX,
        "impressions_per_customer": IMPRESSIONS,
        "snapshots_per_customer": SNAPSHOTS,
        "used_memory_bytes": used,
        "bytes_per_customer": round(per_customer),
        "bytes_per_event": round(used / events),
        "gib_per_million_customers": round(per_customer * 1e6 / 2**30, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.customers:,} customers, {events:,} events: {used / 2**20:,.0f} MiB, "
        f"{per_customer:,.0f} bytes per customer ({used / events:,.0f} per event kept "
        f"with its share of the rest): {result['gib_per_million_customers']} GiB per million"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
