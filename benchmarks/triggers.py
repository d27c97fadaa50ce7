"""Triggers feed benchmark: the cost of one page of GET /v1/triggers beside a recommendation.

    python benchmarks/triggers.py [--models-dir models] [--triggers 200000] [--out out.json]

In-process, with the Flask test client (no HTTP, no gunicorn), so the figures are the
service's own work. Measured on the bundle in --models-dir (the shipped sample, trained into a
temporary folder, when not given) and on a copy of it whose trigger table is replaced by
--triggers synthetic ones (random customers, kinds and times), each with some triggers fired
by events since (in the embedded store). Prints and writes (--out, JSON) the median
microseconds per request of: /healthz (the floor), a recommendation, the first page (limit 1
and 100), a page deep in the feed (following next_cursor), and a page filtered by kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import sample_bundle  # noqa: E402
from recsvc.app import create_app  # noqa: E402
from recsvc.bundle import load_current, publish_bundle  # noqa: E402
from recsvc.config import ServiceConfig  # noqa: E402
from recsvc.policy import TRIGGER_KINDS  # noqa: E402

KINDS = TRIGGER_KINDS


def many_triggers(models_dir: Path, target: Path, count: int, seed: int = 7) -> None:
    """Publish the bundle in ``models_dir`` again into ``target`` with ``count`` triggers."""
    bundle = load_current(models_dir)
    arrays = bundle.arrays
    random = np.random.default_rng(seed)
    rows = random.integers(0, len(arrays.customer_ids), count).astype(np.int32)
    kinds = np.array(KINDS)[random.integers(0, len(KINDS), count)]
    # A year of seconds, with repeats, so ties on fired_at are common.
    at = (1_290_000_000 + random.integers(0, 365 * 86400 // 60, count) * 60).astype(np.int64)
    reasons = np.array([f"synthetic {kind}" for kind in kinds.tolist()])
    figures = np.array(
        [json.dumps({"spend": float(value)}) for value in random.integers(0, 5000, count)]
    )
    replaced = dataclasses.replace(
        arrays,
        trigger_rows=rows,
        trigger_kinds=kinds,
        trigger_at=at,
        trigger_reasons=reasons,
        trigger_figures=figures,
    )
    publish_bundle(target, "many-triggers", replaced, bundle.manifest, bundle.attachments)


def timed(call: Callable[[], Any], repeat: int) -> float:
    """Median microseconds of ``call`` over ``repeat`` runs (after a few to warm up)."""
    for _ in range(5):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def measure(models_dir: Path, events_dir: Path, repeat: int) -> dict[str, float]:
    config = ServiceConfig(
        models_dir=models_dir, events_dir=events_dir, auth=False, log_level="WARNING"
    )
    app = create_app(config)
    client = app.test_client()
    bundle = load_current(models_dir)
    customers = [str(c) for c in bundle.arrays.customer_ids[:50].tolist()]
    # Some triggers fired by reported purchases, merged with the bundle's.
    events = [
        {
            "event_id": f"bench-{i}",
            "customer": customer,
            "item_id": str(bundle.arrays.item_ids[i % len(bundle.arrays.item_ids)]),
            "quantity": 1,
            "price": 5000.0,
            "timestamp": "2011-12-01T10:00:00Z",
        }
        for i, customer in enumerate(customers)
    ]
    assert client.post("/v1/events", json={"events": events}).status_code == 200

    def get(path: str) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(path)
            assert response.status_code == 200, response.get_data(as_text=True)
            return response

        return call

    deep = get("/v1/triggers?limit=100")().get_json()
    for _ in range(3):
        if deep["next_cursor"] is None:
            break
        deep = client.get(f"/v1/triggers?limit=100&cursor={deep['next_cursor']}").get_json()
    cursor = deep["next_cursor"]
    figures = {
        "healthz": timed(get("/healthz"), repeat),  # the test client's own share
        "recommendation": timed(get(f"/v1/customers/{customers[3]}/recommendations"), repeat),
        "page_limit_1": timed(get("/v1/triggers?limit=1"), repeat),
        "page_limit_100": timed(get("/v1/triggers?limit=100"), repeat),
        "page_kind_filter": timed(get("/v1/triggers?limit=100&kind=tier_up,thank_you"), repeat),
    }
    if cursor is not None:
        figures["page_deep"] = timed(get(f"/v1/triggers?limit=100&cursor={cursor}"), repeat)
    figures["triggers"] = float(len(bundle.arrays.trigger_rows))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--triggers", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsvc-bench-triggers-") as scratch:
        work = Path(scratch)
        models_dir = sample_bundle(args.models_dir, work)
        many_triggers(models_dir, work / "many", args.triggers)
        results = {
            "sample": measure(models_dir, work / "events-sample", args.repeat),
            "many": measure(work / "many", work / "events-many", args.repeat),
        }
    for name, figures in results.items():
        print(f"{name} ({int(figures['triggers'])} triggers in the bundle), µs per request:")
        for label, value in figures.items():
            if label != "triggers":
                print(f"  {label:18} {value:10.0f}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
