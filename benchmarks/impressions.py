"""What impressions and experiments cost a read: a recommendation with and without its
impression kept, in an experiment, and the background write of a worker's buffer.

    python benchmarks/impressions.py [--models-dir models] [--repeat 2000] [--out out.json]

In-process, with the Flask test client (no HTTP, no gunicorn), on the embedded store, so the
figures are the service's own work. The bundle in --models-dir (the shipped sample, trained
into a temporary folder, when not given) is copied into a temporary models directory, twice:
the experiment's two arms. Prints and writes (--out, JSON) the median microseconds per request
of: /healthz (the floor); a recommendation whose impression is not kept (the id only); one
whose impression is kept (the default); the same in a 50/50 experiment; and the microseconds
per impression of writing a buffer of 1,000 to the store (the writer thread's work).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import sample_bundle  # noqa: E402
from recsvc.api.context import service_of  # noqa: E402
from recsvc.app import create_app  # noqa: E402
from recsvc.bundle import load_current, publish_bundle  # noqa: E402
from recsvc.impressions import new_id  # noqa: E402


def timed(call: Callable[[], Any], repeat: int) -> float:
    """Median microseconds of ``call`` over ``repeat`` runs (after a few to warm up)."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def id_only(*args: Any, impression_id: str | None = None, **kwargs: Any) -> str:
    """What an answer costs without keeping its impression: its id alone."""
    return impression_id or new_id()


def measure(source: Path, work: Path, repeat: int) -> dict[str, float]:
    current = load_current(source)
    models_dir, events_dir, other = work / "models", work / "events", f"{current.version}-b"
    for version in (other, current.version):
        publish_bundle(models_dir, version, current.arrays, current.manifest, current.attachments)
    settings = {
        "RECSVC_MODELS_DIR": str(models_dir),
        "RECSVC_AUTH": "off",
        "RECSVC_LOG_LEVEL": "WARNING",
        "RECSVC_RELOAD_SECONDS": "0",
    }
    plain = create_app({**settings, "RECSVC_EVENTS_DIR": str(events_dir / "plain")})
    experiment = f"a:{current.version}:50,b:{other}:50"
    split = create_app(
        {**settings, "RECSVC_EVENTS_DIR": str(events_dir / "ab"), "RECSVC_EXPERIMENT": experiment}
    )
    customers = [str(c) for c in current.arrays.customer_ids[:200].tolist()]

    def recommendations(app: Any) -> Callable[[], Any]:
        client = app.test_client()
        turn = iter(range(10**9))

        def call() -> Any:
            customer = customers[next(turn) % len(customers)]
            response = client.get(f"/v1/customers/{customer}/recommendations")
            assert response.status_code == 200, response.get_data(as_text=True)

        return call

    service = service_of(plain)
    keeping = service.impressions.shown
    figures = {"healthz": timed(lambda: plain.test_client().get("/healthz"), repeat)}
    service.impressions.shown = id_only  # type: ignore[method-assign]
    figures["recommendation, id only"] = timed(recommendations(plain), repeat)
    service.impressions.shown = keeping  # type: ignore[method-assign]
    figures["recommendation, impression kept"] = timed(recommendations(plain), repeat)
    figures["recommendation, in an experiment"] = timed(recommendations(split), repeat)
    buffer = service.impressions
    buffer.flush()
    items: Sequence[str] = [str(item) for item in current.arrays.item_ids[:10].tolist()]
    for number in range(1000):
        buffer.shown(current.version, "recommendations", f"customer-{number}", items)
    started = time.perf_counter()
    written = buffer.flush()
    figures["write, per impression"] = (time.perf_counter() - started) / written * 1e6
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsvc-bench-impressions-") as scratch:
        work = Path(scratch)
        models_dir = sample_bundle(args.models_dir, work)
        figures = measure(models_dir, work, args.repeat)
    print("µs per request (in-process, embedded store):")
    for label, value in figures.items():
        print(f"  {label:34} {value:8.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
