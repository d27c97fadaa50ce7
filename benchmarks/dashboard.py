"""Dashboard benchmark: the server time of every dashboard page against a real gunicorn.

    python benchmarks/dashboard.py --models-dir models [--repeat 30] [--out FILE.json]

Starts gunicorn (gunicorn.conf.py, --workers workers, the embedded store in a scratch events
folder) on the bundle in --models-dir, signs in with a freshly minted admin key, and requests
each page --repeat times after eight warm-up rounds: the overview, the customer lookup form, a
lookup (the POST), customer pages (the highest spenders and customers drawn at random, in
turn), the tiers page (its first and its last page of the lowest tier), the trigger feed
(first page, and filtered by kind and dates), the quarantined rows and the experiments
page. The server time is each answer's ``Server-Timing`` (from the request's start to the
page rendered, in the worker); the client time adds HTTP and gunicorn. The first request of
each page is reported apart: it includes what is computed once per bundle and worker (tier
figures, template compilation).

Also measured in this process: comparing the bundle's customers with themselves as the tier
movements do once per pair of bundles (the cost a first look at the tiers page starts on a
background thread).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import load_current  # noqa: E402
from recsvc.registry import serve  # noqa: E402

SECRET = "benchmark-dashboard-secret-of-32-chars"
TIMING = re.compile(r"app;dur=([0-9.]+)")
WARM_UP = 8  # rounds of each page before measuring


class Browser:
    """A signed-in session: cookies kept, redirects not followed (a 303 is an answer)."""

    def __init__(self, base: str) -> None:
        self.base = base
        jar = http.cookiejar.CookieJar()

        class Stay(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), Stay)
        self.csrf = ""

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, float, float]:
        """Status, server milliseconds (Server-Timing) and client milliseconds."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        started = time.perf_counter()
        try:
            response = self.opener.open(self.base + path, data=data, timeout=30)
        except urllib.error.HTTPError as error:  # a 303 lands here, unfollowed
            response = error
        body = response.read()
        client = (time.perf_counter() - started) * 1000
        status = response.status if hasattr(response, "status") else response.code
        found = TIMING.search(response.headers.get("Server-Timing", ""))
        if form is None and status == 200 and b'name="csrf"' in body:
            token = re.search(rb'name="csrf" value="([^"]+)"', body)
            if token is not None:
                self.csrf = token.group(1).decode()
        return status, float(found.group(1)) if found else float("nan"), client


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "dashboard.json")
    args = parser.parse_args()

    bundle = load_current(args.models_dir)
    arrays = bundle.arrays
    ids = arrays.customer_ids
    chooser = random.Random(7)
    top = [str(ids[row]) for row in (-arrays.window_spend).argsort()[:5].tolist()]
    drawn = [str(ids[chooser.randrange(len(ids))]) for _ in range(15)]
    customers = top + drawn
    levels = bundle.manifest.tiers.levels
    lowest = levels[0].name
    in_lowest = bundle.manifest.tiers.customers_per_tier.get(lowest, 0)
    last_page = max((in_lowest + 49) // 50, 1)
    as_of = (bundle.manifest.data_as_of or "2011-12-09")[:10]
    pages: dict[str, list[str]] = {
        "overview": ["/dashboard/"],
        "customers": ["/dashboard/customers"],
        "customer": [f"/dashboard/customer?id={urllib.parse.quote(c)}" for c in customers],
        "tiers": ["/dashboard/tiers"],
        "tiers_last_page": [f"/dashboard/tiers?tier={lowest}&page={last_page}"],
        "triggers": ["/dashboard/triggers"],
        "triggers_filtered": [f"/dashboard/triggers?kind=lapsing&kind=tier_up&to={as_of}"],
        "quarantine": ["/dashboard/quarantine"],
        "experiments": ["/dashboard/experiments"],
    }
    admin_key, admin_line = mint("bench", ["admin"])
    results: dict[str, Any] = {
        "bundle": bundle.version,
        "customers": len(ids),
        "items": len(arrays.item_ids),
        "workers": args.workers,
        "repeat": args.repeat,
        "pages": {},
    }
    with tempfile.TemporaryDirectory(prefix="recsvc-bench-dashboard-") as scratch:
        env = {
            "RECSVC_MODELS_DIR": str(args.models_dir),
            "RECSVC_EVENTS_DIR": str(Path(scratch) / "events"),
            "RECSVC_API_KEYS": admin_line,
            "RECSVC_SECRET_KEY": SECRET,
            "RECSVC_WORKERS": str(args.workers),
            "RECSVC_RATE_LIMIT": "0",
            "RECSVC_LOG_LEVEL": "WARNING",
            "RECSVC_RELOAD_SECONDS": "0",
        }
        with gunicorn(env, Path(scratch) / "gunicorn.log") as url:
            browser = Browser(url)
            status, _, _ = browser.request("/dashboard/sign-in", {"key": admin_key})
            assert status == 303, f"sign-in answered {status}"
            browser.request("/dashboard/customers")  # the CSRF token
            for name, paths in pages.items():
                results["pages"][name] = measure(browser, paths, args.repeat)
            lookups = [{"key": c, "csrf": browser.csrf} for c in customers]
            results["pages"]["lookup_post"] = measure_form(
                browser, "/dashboard/customers", lookups, args.repeat
            )
    results["tier_movements_s"] = movements_seconds(bundle)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"bundle {bundle.version}: {len(ids):,} customers, {len(arrays.item_ids):,} items; "
        f"{args.workers} workers, {args.repeat} requests per page"
    )
    print(f"{'page':18} {'server p50':>10} {'p99':>8} {'max':>8} {'first':>8} {'client p50':>10}")
    for name, figures in results["pages"].items():
        print(
            f"{name:18} {figures['server_p50_ms']:>10.1f} {figures['server_p99_ms']:>8.1f} "
            f"{figures['server_max_ms']:>8.1f} {figures['first_ms']:>8.1f} "
            f"{figures['client_p50_ms']:>10.1f}"
        )
    print(
        f"tier movements (once per pair of bundles, off the request path): "
        f"{results['tier_movements_s']:.2f} s"
    )
    print(f"written to {args.out}")
    return 0


def measure(browser: Browser, paths: list[str], repeat: int) -> dict[str, float]:
    first = browser.request(paths[0])
    assert first[0] == 200, f"{paths[0]} answered {first[0]}"
    for _ in range(WARM_UP):  # every worker, most likely: gunicorn's pick is not ours
        for path in paths:
            browser.request(path)
    server, client = [], []
    for number in range(repeat):
        status, took, wall = browser.request(paths[number % len(paths)])
        assert status == 200, f"{paths[number % len(paths)]} answered {status}"
        server.append(took)
        client.append(wall)
    return summary(server, client, first[1])


def measure_form(
    browser: Browser, path: str, forms: list[dict[str, str]], repeat: int
) -> dict[str, float]:
    first = browser.request(path, forms[0])
    server, client = [], []
    for number in range(repeat):
        status, took, wall = browser.request(path, forms[number % len(forms)])
        assert status in (200, 303), f"POST {path} answered {status}"
        server.append(took)
        client.append(wall)
    return summary(server, client, first[1])


def summary(server: list[float], client: list[float], first: float) -> dict[str, float]:
    return {
        "server_p50_ms": round(statistics.median(server), 2),
        "server_p99_ms": round(percentile(server, 0.99), 2),
        "server_max_ms": round(max(server), 2),
        "first_ms": round(first, 2),
        "client_p50_ms": round(statistics.median(client), 2),
    }


def movements_seconds(bundle: Any) -> float:
    """Seconds to compare the bundle's customers with themselves, as tier movements do."""
    from recsvc.identity import IdentityKey
    from recsvc.insights import tier_movements

    key = IdentityKey.from_environment(os.environ) or IdentityKey.development_key()
    model = serve(bundle, key)
    started = time.perf_counter()
    tier_movements(
        "itself",
        bundle.manifest.data_as_of,
        bundle.manifest.tiers.levels,
        bundle.arrays.customer_ids,
        bundle.arrays.window_spend,
        model,
    )
    return round(time.perf_counter() - started, 3)


if __name__ == "__main__":
    raise SystemExit(main())
