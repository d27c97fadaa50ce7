"""A synthetic week of shop traffic replayed through gunicorn and Redis, checked against the
answers it was drawn from.

    python loadtests/replay.py --models-dir models [--days 7] [--seed 7]
        [--out loadtests/results/replay.json]

Publishes a copy of the current bundle as a challenger and starts a private redis-server and
gunicorn (API keys on) serving an A/B test of the two (50/50). It then shows lists to known
customers (each answer's impression id, arm and items), draws a week of events over the
bundle with ``training.synthetic`` (sessions that browse one category, put items in the cart,
buy and sign in; signed-in customers browsing; customers opening and clicking the daily
email at their own hour, a few unsubscribing; clicks on the lists shown, at a known
click-through rate per arm), posts them in time order, and checks that:

- **sessions follow their views**: an anonymous session's top 5 recommendations are in the
  category it browsed;
- **a login keeps them**: the customer a session signed in as gets the browsed category in
  their top 5;
- **a bought item disappears everywhere**: from the buyer's recommendations, blocks, email
  picks, similar items and cart recommendations;
- **engagement triggers fire**: ``disengaged`` for exactly the customers who opened
  ``disengaged_opens`` sends in a row without a click (counted from the events here);
- **best hours follow opens**: a customer with opens enough gets their open hour, ``from``
  ``own opens``;
- **unsubscribed customers get no picks**: email picks answer 409;
- **the experiment measures the truth**: each arm's click-through interval in
  ``GET /v1/experiments`` contains the rate its clicks were drawn at.

Prints each check's figures and writes them (--out, JSON); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.local_server import RedisProcess, gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402
from recsvc.bundle import Bundle, load_current, publish_bundle  # noqa: E402
from training.synthetic import Catalog, Impression, Plan, Synthetic, generate  # noqa: E402

CLICK_THROUGH = {"champion": 0.06, "challenger": 0.12}  # the truth the clicks are drawn at
TOP = 5  # recommendations checked for a category
SHOWN = 4  # items per list shown to customers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=120, help="anonymous visits a day")
    parser.add_argument("--impressions", type=int, default=1500, help="lists shown, in all")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/replay.json"))
    args = parser.parse_args()
    result = replay(args.models_dir, args.days, args.seed, args.sessions, args.impressions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, check in result["checks"].items():
        verdict = "PASS" if check["passed"] else "FAIL"
        figures = {key: value for key, value in check.items() if key != "passed"}
        print(f"{verdict} {name}: {json.dumps(figures)}")
    print(f"written to {args.out}")
    return 0 if all(check["passed"] for check in result["checks"].values()) else 1


def replay(
    models_dir: Path, days: int, seed: int, sessions: int, impressions: int
) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-replay-"))
    models = scratch / "models"
    current = load_current(models_dir)
    challenger = challenger_of(current, models)
    versions = {"champion": current.version, "challenger": challenger}
    key, line = mint("replay", ["admin"], rate=1_000_000)
    redis_server = RedisProcess(scratch)
    redis_server.start()
    env = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_REDIS_URL": redis_server.url,
        "RECSVC_EXPERIMENT": f"champion:{versions['champion']}:50,"
        f"challenger:{versions['challenger']}:50",
    }
    today = datetime.now(UTC).replace(microsecond=0)
    first_day = (today - timedelta(days=days - 1)).date()
    try:
        with gunicorn(env, log_path=scratch / "service.log") as base:
            api = Api(base, key)
            shown = show_lists(api, current, impressions, seed, today)
            rates = {versions[arm]: rate for arm, rate in CLICK_THROUGH.items()}
            plan = Plan(sessions=sessions)
            week = generate(
                Catalog.from_bundle(current),
                first_day,
                days,
                seed,
                plan,
                click_through=rates,
                impressions=shown,
            )
            for body in week.batches(500):
                answer = api.post("/v1/events", body)
                if answer["rejected"]:
                    raise RuntimeError(f"events rejected: {answer['rejected'][:3]}")
            time.sleep(2.5)  # every worker writes its impressions within a second
            checks = {  # the experiment first: the other checks show lists of their own
                "experiment_contains_truth": experiment_contains_truth(api, week),
                "sessions_follow_views": sessions_follow_views(api, current, week),
                "login_keeps_interest": login_keeps_interest(api, current, week),
                "bought_items_disappear": bought_items_disappear(api, current, week),
                "disengaged_triggers": disengaged_triggers(api, current, week),
                "best_hours_follow_opens": best_hours_follow_opens(api, current, week),
                "unsubscribed_get_no_picks": unsubscribed_get_no_picks(api, week),
            }
    finally:
        redis_server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "days": days,
        "seed": seed,
        "events": len(week.events),
        "events_by_kind": _count_kinds(week),
        "lists_shown": len(shown),
        "checks": checks,
    }


def challenger_of(bundle: Bundle, models: Path) -> str:
    """Publish ``bundle`` into ``models`` as it is, then a copy of it as the challenger (the
    same model: the arms differ only in the rates their clicks are drawn at)."""
    version = f"{bundle.version}-challenger"
    publish_bundle(models, version, bundle.arrays, bundle.manifest, bundle.attachments)
    publish_bundle(models, bundle.version, bundle.arrays, bundle.manifest, bundle.attachments)
    return version


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"X-API-Key": self.key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {answer}")
        return answer

    def post(self, path: str, body: Any) -> Any:
        status, answer = self.call("POST", path, body)
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {answer}")
        return answer


def _key(customer: str) -> str:
    return quote(customer, safe=":")


def show_lists(api: Api, bundle: Bundle, count: int, seed: int, now: datetime) -> list[Impression]:
    """``count`` recommendation lists shown to known customers, as the service answered."""
    rng = random.Random(seed)
    customers = [str(c) for c in bundle.arrays.customer_ids.tolist()]
    shown = []
    for _ in range(count):
        customer = rng.choice(customers)
        answer = api.get(f"/v1/customers/{_key(customer)}/recommendations?n={SHOWN}")
        shown.append(
            Impression(
                impression_id=answer["impression_id"],
                customer=customer,
                model_version=answer["model_version"],
                items=tuple(item["item_id"] for item in answer["items"]),
                shown_at=now - timedelta(minutes=15),
            )
        )
    return shown


def _in_category(bundle: Bundle, category: str) -> set[str]:
    bit = 1 << list(bundle.categories).index(category)
    arrays = bundle.arrays
    return {str(item) for item in arrays.item_ids[(arrays.item_categories & bit) != 0]}


def _top(api: Api, key: str, n: int = TOP) -> list[str]:
    answer = api.get(f"/v1/customers/{_key(key)}/recommendations?n={n}")
    return [item["item_id"] for item in answer["items"]]


def _share_in(api: Api, key: str, items: set[str]) -> float:
    """The share of ``key``'s top recommendations that are among ``items``."""
    top = _top(api, key)
    return sum(item in items for item in top) / max(len(top), 1)


def sessions_follow_views(api: Api, bundle: Bundle, week: Synthetic) -> dict[str, Any]:
    """Anonymous sessions: the share of their top 5 in the category they browsed."""
    anonymous = [s for s in week.truth.sessions if s.customer is None]
    shares = []
    for session in anonymous[:100]:
        shares.append(_share_in(api, session.session, _in_category(bundle, session.category)))
    mean = sum(shares) / max(len(shares), 1)
    return {
        "passed": bool(shares) and mean >= 0.9,
        "sessions": len(shares),
        "mean_share_in_category": round(mean, 3),
        "all_five_in_category": sum(share == 1.0 for share in shares),
    }


def login_keeps_interest(api: Api, bundle: Bundle, week: Synthetic) -> dict[str, Any]:
    """Customers a session signed in as: the share of their top 5 in the categories their
    sessions browsed."""
    browsed: dict[str, set[str]] = defaultdict(set)
    for session in week.truth.sessions:
        if session.customer is not None:
            browsed[session.customer].add(session.category)
    shares = []
    for customer, names in list(browsed.items())[:100]:
        category = set().union(*(_in_category(bundle, name) for name in names))
        shares.append(_share_in(api, customer, category))
    mean = sum(shares) / max(len(shares), 1)
    return {
        "passed": bool(shares) and mean >= 0.6,
        "customers": len(shares),
        "mean_share_in_category": round(mean, 3),
    }


def bought_items_disappear(api: Api, bundle: Bundle, week: Synthetic) -> dict[str, Any]:
    """Every item a session bought, asked of every list endpoint for its buyer."""
    slots = list(bundle.manifest.channels.slots)
    checked, found = 0, []
    buyers = [s for s in week.truth.sessions if s.bought][:60]
    for session in buyers:
        buyer = session.customer or session.session
        key = _key(buyer)
        bought = set(session.bought)
        lists = {
            "recommendations": _top(api, buyer, 50),
            "email": [item["item_id"] for item in _picks(api, key, f"replay-{session.session}")],
            "cart": [
                item["item_id"]
                for item in api.get(
                    f"/v1/cart/recommendations?items={quote(session.viewed[0])}&customer={key}&n=20"
                )["items"]
            ],
            "similar": [
                item["item_id"]
                for item in api.get(
                    f"/v1/items/{quote(session.viewed[0])}/similar?customer={key}&n=20"
                )["items"]
            ],
        }
        for slot in slots:
            block = api.get(f"/v1/customers/{key}/blocks/{slot}")
            lists[f"block:{slot}"] = [product["item_id"] for product in block["products"]]
        for surface, items in lists.items():
            checked += 1
            found += [f"{surface}: {item}" for item in bought & set(items)]
    return {"passed": checked > 0 and not found, "lists_checked": checked, "bought_listed": found}


def _picks(api: Api, key: str, send: str) -> list[dict[str, Any]]:
    status, answer = api.call("GET", f"/v1/customers/{key}/email-picks?send_id={send}&n=8")
    return [] if status == 409 else list(answer["items"])


def _email_events(week: Synthetic) -> dict[str, list[dict[str, Any]]]:
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in week.events:
        if event["kind"] in ("email_open", "email_click", "unsubscribe"):
            by_customer[event["customer"]].append(event)
    return by_customer


def disengaged_triggers(api: Api, bundle: Bundle, week: Synthetic) -> dict[str, Any]:
    """Customers with ``disengaged_opens`` sends opened in a row without a click, counted
    from the events, against the customers the trigger feed names."""
    needed = bundle.manifest.tiers.disengaged_opens
    expected = set()
    for customer, events in _email_events(week).items():
        streak: set[str] = set()
        unsubscribed = False
        for event in sorted(events, key=lambda e: e["timestamp"]):
            if event["kind"] == "email_click":
                streak.clear()
            elif event["kind"] == "email_open":
                streak.add(event["send_id"])
                if len(streak) >= needed and not unsubscribed:
                    expected.add(customer)
            else:
                unsubscribed = True
    since = quote((datetime.now(UTC) - timedelta(hours=1)).isoformat())
    fired = {
        trigger["customer_id"]
        for trigger in api.get(f"/v1/triggers?kind=disengaged&since={since}&limit=1000")["triggers"]
    }
    return {
        "passed": bool(expected) and fired == expected,
        "expected": len(expected),
        "fired": len(fired),
        "missed": sorted(expected - fired)[:10],
        "unexpected": sorted(fired - expected)[:10],
    }


def best_hours_follow_opens(api: Api, bundle: Bundle, week: Synthetic) -> dict[str, Any]:
    """Customers with opens enough: their best contact hour against their open hour."""
    needed = bundle.manifest.tiers.min_opens_for_timing
    opens = {
        customer: sum(e["kind"] == "email_open" for e in events)
        for customer, events in _email_events(week).items()
    }
    matched, wrong = 0, []
    habits = [h for h in week.truth.habits if opens.get(h.customer, 0) >= needed]
    for habit in habits:
        contact = api.get(f"/v1/customers/{_key(habit.customer)}/profile")["signals"][
            "best_contact"
        ]
        if contact["hour"] == habit.open_hour and contact["from"] == "own opens":
            matched += 1
        else:
            wrong.append({"customer": habit.customer, "truth": habit.open_hour, **contact})
    return {
        "passed": bool(habits) and not wrong,
        "customers": len(habits),
        "matched": matched,
        "wrong": wrong[:10],
    }


def unsubscribed_get_no_picks(api: Api, week: Synthetic) -> dict[str, Any]:
    gone = [h.customer for h in week.truth.habits if h.unsubscribed]
    statuses = [
        api.call("GET", f"/v1/customers/{_key(c)}/email-picks?send_id=after&n=4")[0] for c in gone
    ]
    return {
        "passed": all(status == 409 for status in statuses),
        "unsubscribed": len(gone),
        "answered_409": statuses.count(409),
    }


def experiment_contains_truth(api: Api, week: Synthetic) -> dict[str, Any]:
    """Each arm's click-through interval against the rate its clicks were drawn at, and its
    counts against the lists shown and the clicks drawn."""
    report = api.get("/v1/experiments")["experiment"]
    drawn = {arm.model_version: arm for arm in week.truth.arms.values()}
    arms = {}
    for arm in report["arms"]:
        truth, ctr = drawn[arm["model_version"]], arm["ctr"]
        arms[arm["name"]] = {
            "truth": truth.click_through,
            "lists_shown": truth.impressions,
            "clicks_drawn": truth.clicks,
            "impressions": arm["impressions"],
            "clicked": arm["clicked"],
            "ctr": ctr,
            "counted_exactly": (arm["impressions"], arm["clicked"])
            == (truth.impressions, truth.clicks),
            "contains_truth": ctr["low"] is not None
            and ctr["low"] <= truth.click_through <= ctr["high"],
        }
    challenger = next(a for a in report["arms"] if a["name"] == "challenger")
    return {
        "passed": len(arms) == 2
        and all(a["contains_truth"] and a["counted_exactly"] for a in arms.values()),
        "arms": arms,
        "difference": challenger["difference"]["ctr"] if challenger["difference"] else None,
        "difference_truth": round(CLICK_THROUGH["challenger"] - CLICK_THROUGH["champion"], 4),
    }


def _count_kinds(week: Synthetic) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for event in week.events:
        counts[event["kind"]] += 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    raise SystemExit(main())
