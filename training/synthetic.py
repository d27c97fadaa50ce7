"""A seeded synthetic day of shop events, with the answers they were drawn from.

The reference data (Online Retail) holds purchases only; this makes the rest of what a shop
reports, over a trained bundle's catalog and customers, so that every behaviour built on
interactions can be tested against a known answer:

- **sessions**: anonymous visits (``session:<id>``) that view items of one category, put some
  in the cart (and take some out), may buy what is left there, and may sign in as a known
  customer (a ``login``; the events after it carry the customer's key and the session's);
- **browsers**: known customers, signed in, who view items of one category;
- **email habits**: known customers, each opening the day's send in one hour of the day
  (with an open probability) and clicking an item in it (with a click probability), a few of
  them unsubscribing;
- **recommendation clicks**: impressions (given, or drawn here) clicked at a known
  click-through rate per model arm (``model_version``).

The same seed, catalog and plan give the same events, ids included. Roles are drawn once per
seed (a customer keeps their category and habits from day to day) and are disjoint while the
catalog has customers enough: a browser never logs in from a session nor gets emails.

Run ``python -m training.synthetic --models-dir models --out synthetic/`` to write a day over
the current bundle as an event log (``events-synthetic.jsonl``, which ``recsvc train`` reads
as a source of kind ``events``), as POST /v1/events bodies (``batches.jsonl``) and the answers
(``truth.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import Bundle, load_current
from recsvc.events import log_lines, log_record, parse_event
from recsvc.identity import SESSION_PREFIX
from recsvc.schemas import MAX_BATCH

LOG_FILE = "events-synthetic.jsonl"
BATCHES_FILE = "batches.jsonl"
TRUTH_FILE = "truth.json"
SOURCE = "synthetic"
RECOMMENDATIONS_SURFACE = "recommendations"


@dataclass(frozen=True)
class Catalog:
    """What events are drawn over: items (with prices) by category, and known customers."""

    item_ids: tuple[str, ...]
    prices: tuple[float, ...]
    categories: dict[str, tuple[int, ...]]  # name -> positions in item_ids
    customers: tuple[str, ...]  # keys of customers the model knows

    @classmethod
    def from_bundle(cls, bundle: Bundle, min_items: int = 10) -> Catalog:
        """The bundle's items, its categories with at least ``min_items`` items (an item may
        be in several), and its customers."""
        arrays = bundle.arrays
        masks = arrays.item_categories
        categories = {}
        for bit, name in enumerate(bundle.categories):
            members = tuple(np.flatnonzero((masks >> np.int64(bit)) & 1).tolist())
            if len(members) >= min_items:
                categories[name] = members
        prices = [1.0 if math.isnan(p) or p <= 0 else round(p, 2) for p in arrays.prices.tolist()]
        return cls(
            item_ids=tuple(str(item) for item in arrays.item_ids.tolist()),
            prices=tuple(prices),
            categories=categories,
            customers=tuple(str(customer) for customer in arrays.customer_ids.tolist()),
        )


@dataclass(frozen=True)
class Plan:
    """How much of each behaviour a day holds, and its odds."""

    sessions: int = 200  # anonymous visits a day
    views_per_session: tuple[int, int] = (3, 8)  # distinct items viewed, inclusive range
    cart_adds_per_session: tuple[int, int] = (1, 2)  # of the items viewed
    cart_remove_probability: float = 0.2  # one item taken back out
    buy_probability: float = 0.4  # the session buys what is left in the cart
    login_probability: float = 0.4  # the session signs in as a known customer
    browsers: int = 30  # known customers browsing one category, signed in
    views_per_browser: tuple[int, int] = (5, 12)
    email_customers: int = 80  # known customers with an email habit
    send_hour: int = 5  # the day's send goes out at 05:00 UTC; opens come after
    open_hours: tuple[int, int] = (6, 22)  # the range each customer's open hour is drawn from
    open_probability: tuple[float, float] = (0.3, 0.9)
    click_probability: tuple[float, float] = (0.1, 0.5)  # of an open
    unsubscribe_probability: float = 0.01  # per send; no later sends after it
    impressions: int = 300  # drawn when no impressions are given and arms are
    items_per_impression: int = 4


@dataclass(frozen=True)
class Impression:
    """A list recsvc showed: clicks on it are ``rec_click`` events naming it."""

    impression_id: str
    customer: str
    model_version: str  # the arm
    items: tuple[str, ...]
    shown_at: datetime
    surface: str = RECOMMENDATIONS_SURFACE


@dataclass(frozen=True)
class SessionTruth:
    session: str  # session:<id>
    category: str  # every item it viewed is in it
    viewed: tuple[str, ...]
    cart: tuple[str, ...]  # in the cart when the visit ended
    bought: tuple[str, ...]
    customer: str | None  # the known customer it signed in as; None: stayed anonymous
    bought_before_login: bool  # its purchases were made under the session key


@dataclass(frozen=True)
class BrowserTruth:
    customer: str
    category: str
    viewed: tuple[str, ...]


@dataclass(frozen=True)
class HabitTruth:
    customer: str
    open_hour: int  # every open falls in this hour (UTC): the best hour to send
    open_probability: float
    click_probability: float
    sends: int = 0
    opens: int = 0
    clicks: int = 0
    unsubscribed: bool = False


@dataclass(frozen=True)
class ArmTruth:
    model_version: str
    click_through: float  # the rate clicks were drawn at
    impressions: int
    clicks: int


@dataclass(frozen=True)
class Truth:
    sessions: tuple[SessionTruth, ...]
    browsers: tuple[BrowserTruth, ...]
    habits: tuple[HabitTruth, ...]
    arms: dict[str, ArmTruth]


@dataclass(frozen=True)
class Synthetic:
    """The events (POST /v1/events event objects, in time order) and their truth."""

    events: list[dict[str, Any]]
    truth: Truth

    def batches(self, size: int = MAX_BATCH) -> list[dict[str, Any]]:
        """The events as POST /v1/events bodies of at most ``size`` events."""
        return [
            {"events": self.events[start : start + size]}
            for start in range(0, len(self.events), size)
        ]

    def log_records(self, delay: float = 1.0) -> list[dict[str, Any]]:
        """The events as the service's event log holds them (``recsvc.logrecords``), each
        received ``delay`` seconds after it happened. Validated as the service validates."""
        latest = max((_moment(event["timestamp"]) for event in self.events), default=None)
        now = latest or datetime.now(UTC)
        records = []
        for raw in self.events:
            event, errors = parse_event(raw, now)
            if event is None:
                raise ValueError(f"synthetic event {raw['event_id']} is invalid: {errors}")
            records.append(log_record(event, event.timestamp.timestamp() + delay))
        return records

    def write_log(self, path: Path) -> Path:
        """Write the event log (one JSON object a line, as the service writes it)."""
        path.write_text(log_lines(self.log_records()), encoding="utf-8")
        return path


def generate(
    catalog: Catalog,
    first_day: date,
    days: int = 1,
    seed: int = 0,
    plan: Plan | None = None,
    click_through: Mapping[str, float] | None = None,
    impressions: Sequence[Impression] = (),
) -> Synthetic:
    """``days`` days of events from ``first_day`` on. ``click_through``: model arm ->
    the rate its impressions are clicked at; ``impressions``: the lists to click on (none:
    ``plan.impressions`` a day are drawn over the arms, evenly)."""
    plan = plan or Plan()
    if not catalog.categories:
        raise ValueError("the catalog has no category with items enough to browse")
    if not catalog.customers:
        raise ValueError("the catalog has no known customers")
    roles = _Roles.draw(catalog, plan, seed)
    ids = _Ids(seed, first_day)
    events: list[tuple[datetime, dict[str, Any]]] = []
    sessions: list[SessionTruth] = []
    browsers: dict[str, BrowserTruth] = {}
    habits = {habit.customer: habit for habit in roles.habits}
    arms = {arm: [0, 0] for arm in sorted(click_through or {})}
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        rng = random.Random(f"{seed}:{day.isoformat()}")
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for _ in range(plan.sessions):
            sessions.append(_session(catalog, plan, roles, rng, ids, start, events))
        for customer, category in roles.browsers:
            earlier = browsers[customer].viewed if customer in browsers else ()
            viewed = _browse(catalog, plan, rng, ids, start, customer, category, events)
            browsers[customer] = BrowserTruth(customer, category, earlier + viewed)
        for customer in list(habits):
            habits[customer] = _email(catalog, plan, rng, ids, start, habits[customer], events)
        if impressions:
            shown = [i for i in impressions if i.shown_at.date() == day]
        elif click_through:
            shown = _impressions(catalog, plan, rng, ids, start, sorted(click_through))
        else:
            shown = []
        for impression in shown:
            rate = (click_through or {}).get(impression.model_version, 0.0)
            counts = arms.setdefault(impression.model_version, [0, 0])
            counts[0] += 1
            counts[1] += _click(impression, rate, rng, ids, events)
    events.sort(key=lambda pair: pair[0])
    truth = Truth(
        sessions=tuple(sessions),
        browsers=tuple(browsers.values()),
        habits=tuple(habits.values()),
        arms={
            arm: ArmTruth(arm, (click_through or {}).get(arm, 0.0), shown, clicked)
            for arm, (shown, clicked) in sorted(arms.items())
        },
    )
    return Synthetic([event for _, event in events], truth)


@dataclass(frozen=True)
class _Roles:
    """Who does what, drawn once per seed."""

    browsers: list[tuple[str, str]]  # customer, category
    habits: list[HabitTruth]
    logins: list[str]  # customers sessions sign in as, in turn

    @classmethod
    def draw(cls, catalog: Catalog, plan: Plan, seed: int) -> _Roles:
        rng = random.Random(f"{seed}:roles")
        customers = list(catalog.customers)
        rng.shuffle(customers)
        categories = sorted(catalog.categories)
        browsing = customers[: plan.browsers]
        emailed = customers[plan.browsers : plan.browsers + plan.email_customers]
        logins = customers[plan.browsers + plan.email_customers :] or customers
        low, high = plan.open_hours
        return cls(
            browsers=[(customer, rng.choice(categories)) for customer in browsing],
            habits=[
                HabitTruth(
                    customer=customer,
                    open_hour=rng.randint(low, high),
                    open_probability=round(rng.uniform(*plan.open_probability), 3),
                    click_probability=round(rng.uniform(*plan.click_probability), 3),
                )
                for customer in emailed
            ],
            logins=logins,
        )


class _Ids:
    """Deterministic event, session, send and impression ids, unique per seed and first day."""

    def __init__(self, seed: int, first_day: date) -> None:
        self.stem = f"{seed}-{first_day:%Y%m%d}"
        self.count = 0
        self.logins = 0

    def next(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.stem}-{self.count:07d}"

    def event(self, kind: str, customer: str, when: datetime, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": self.next("syn"),
            "customer": customer,
            "kind": kind,
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": SOURCE,
            **fields,
        }


def _session(
    catalog: Catalog,
    plan: Plan,
    roles: _Roles,
    rng: random.Random,
    ids: _Ids,
    day: datetime,
    events: list[tuple[datetime, dict[str, Any]]],
) -> SessionTruth:
    """One visit: views of one category, cart changes, maybe a purchase, maybe a login
    (halfway through the views, or when the visit ends)."""
    session = f"{SESSION_PREFIX}{ids.next('s')}"
    category = rng.choice(sorted(catalog.categories))
    members = catalog.categories[category]
    count = min(len(members), _n(rng, plan.views_per_session))
    viewed = [catalog.item_ids[i] for i in rng.sample(members, count)]
    customer = None
    if rng.random() < plan.login_probability:
        customer = roles.logins[ids.logins % len(roles.logins)]
        ids.logins += 1
    buys = rng.random() < plan.buy_probability
    login_at = len(viewed) // 2 if customer is not None and rng.random() < 0.5 else None
    moment = day + timedelta(seconds=rng.randint(0, 22 * 3600))
    as_key: dict[str, Any] = {"customer": session}

    def emit(kind: str, **fields: Any) -> None:
        nonlocal moment
        moment += timedelta(seconds=rng.randint(10, 120))
        event = ids.event(kind, session, moment, **fields)
        events.append((moment, event | as_key))

    def sign_in() -> None:
        assert customer is not None
        as_key.update(customer=customer, session=session)  # from here on, both keys
        emit("login")

    for position, item in enumerate(viewed):
        if position == login_at:
            sign_in()
        emit("view", item_id=item)
    carted = rng.sample(viewed, min(len(viewed), _n(rng, plan.cart_adds_per_session)))
    for item in carted:
        emit("cart_add", item_id=item, quantity=1)
    if len(carted) > 1 and rng.random() < plan.cart_remove_probability:
        emit("cart_remove", item_id=carted.pop())
    bought: list[str] = []
    if buys:
        for item in carted:
            price = catalog.prices[catalog.item_ids.index(item)]
            emit("purchase", item_id=item, quantity=rng.randint(1, 3), price=price)
        bought, carted = carted, []
    if customer is not None and login_at is None:
        sign_in()
    return SessionTruth(
        session=session,
        category=category,
        viewed=tuple(viewed),
        cart=tuple(carted),
        bought=tuple(bought),
        customer=customer,
        bought_before_login=bool(bought) and customer is not None and login_at is None,
    )


def _browse(
    catalog: Catalog,
    plan: Plan,
    rng: random.Random,
    ids: _Ids,
    day: datetime,
    customer: str,
    category: str,
    events: list[tuple[datetime, dict[str, Any]]],
) -> tuple[str, ...]:
    """A signed-in customer's views of one category; the items viewed."""
    members = catalog.categories[category]
    count = min(len(members), _n(rng, plan.views_per_browser))
    viewed = tuple(catalog.item_ids[i] for i in rng.sample(members, count))
    moment = day + timedelta(seconds=rng.randint(0, 22 * 3600))
    for item in viewed:
        moment += timedelta(seconds=rng.randint(10, 120))
        events.append((moment, ids.event("view", customer, moment, item_id=item)))
    return viewed


def _email(
    catalog: Catalog,
    plan: Plan,
    rng: random.Random,
    ids: _Ids,
    day: datetime,
    habit: HabitTruth,
    events: list[tuple[datetime, dict[str, Any]]],
) -> HabitTruth:
    """The day's send to one customer: opened in their hour (or not), maybe clicked."""
    if habit.unsubscribed:
        return habit
    send_id = ids.next("send")
    opens = clicks = 0
    unsubscribed = False
    if rng.random() < habit.open_probability:
        opens = 1
        when = day + timedelta(hours=habit.open_hour, seconds=rng.randint(0, 3000))
        events.append((when, ids.event("email_open", habit.customer, when, send_id=send_id)))
        if rng.random() < habit.click_probability:
            clicks = 1
            item = catalog.item_ids[rng.randrange(len(catalog.item_ids))]
            when += timedelta(seconds=rng.randint(5, 500))
            events.append(
                (
                    when,
                    ids.event("email_click", habit.customer, when, send_id=send_id, item_id=item),
                )
            )
        if rng.random() < plan.unsubscribe_probability:
            unsubscribed = True
            when += timedelta(seconds=rng.randint(5, 90))
            events.append((when, ids.event("unsubscribe", habit.customer, when, send_id=send_id)))
    return HabitTruth(
        habit.customer,
        habit.open_hour,
        habit.open_probability,
        habit.click_probability,
        habit.sends + 1,
        habit.opens + opens,
        habit.clicks + clicks,
        unsubscribed,
    )


def _impressions(
    catalog: Catalog,
    plan: Plan,
    rng: random.Random,
    ids: _Ids,
    day: datetime,
    arms: list[str],
) -> list[Impression]:
    """``plan.impressions`` lists shown to known customers, the arms in turn."""
    shown = []
    for number in range(plan.impressions):
        count = min(plan.items_per_impression, len(catalog.item_ids))
        shown.append(
            Impression(
                impression_id=ids.next("imp"),
                customer=rng.choice(catalog.customers),
                model_version=arms[number % len(arms)],
                items=tuple(
                    catalog.item_ids[i] for i in rng.sample(range(len(catalog.item_ids)), count)
                ),
                shown_at=day + timedelta(seconds=rng.randint(0, 23 * 3600)),
            )
        )
    return shown


def _click(
    impression: Impression,
    rate: float,
    rng: random.Random,
    ids: _Ids,
    events: list[tuple[datetime, dict[str, Any]]],
) -> int:
    """A click on one of the impression's items (any rank alike) with probability ``rate``;
    1 if clicked."""
    if rng.random() >= rate:
        return 0
    rank = rng.randint(1, len(impression.items))
    moment = impression.shown_at + timedelta(seconds=rng.randint(5, 600))
    click = ids.event(
        "rec_click",
        impression.customer,
        moment,
        item_id=impression.items[rank - 1],
        impression_id=impression.impression_id,
        model_version=impression.model_version,
        surface=impression.surface,
        rank=rank,
    )
    events.append((moment, click))
    return 1


def _n(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(bounds[0], bounds[1])


def _moment(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def truth_json(synthetic: Synthetic) -> dict[str, Any]:
    return asdict(synthetic.truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, required=True, help="a directory, made if missing")
    parser.add_argument("--first-day", type=date.fromisoformat, default=date.today())
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="MODEL_VERSION=CTR",
        help="a model arm and the rate its drawn impressions are clicked at (repeatable)",
    )
    args = parser.parse_args(argv)
    click_through = {}
    for arm in args.arm:
        name, _, rate = arm.partition("=")
        click_through[name] = float(rate)
    synthetic = generate(
        Catalog.from_bundle(load_current(args.models_dir)),
        args.first_day,
        args.days,
        args.seed,
        click_through=click_through,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    synthetic.write_log(args.out / LOG_FILE)
    (args.out / BATCHES_FILE).write_text(
        "".join(json.dumps(batch) + "\n" for batch in synthetic.batches())
    )
    (args.out / TRUTH_FILE).write_text(json.dumps(truth_json(synthetic), indent=1) + "\n")
    print(f"{len(synthetic.events)} events -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
