"""A customer's CRM signals as the service reports them: the bundle's figures, brought up to
date by the events reported since training, and their email engagement (``recsvc.engagement``).

Times are measured against the data, not the wall clock: "now" is the later of the bundle's
``as_of`` (its last event) and the customer's latest reported event. A shop that trains daily
sees no difference; a bundle trained on an old history still answers sensibly.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from recsvc import engagement
from recsvc.realtime import CustomerView
from recsvc.registry import ServedModel

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def customer_signals(model: ServedModel, view: CustomerView) -> dict[str, Any]:
    arrays = model.ranker.arrays
    rules = model.bundle.manifest.tiers
    as_of = _seconds(rules.as_of)
    row = view.row
    last = 0 if row is None else int(arrays.last_purchase[row])
    first = 0 if row is None else int(arrays.first_purchase[row])
    bought_since = [_seconds(e.timestamp) for e in view.events if e.quantity > 0]
    if bought_since:
        last = max(last, max(bought_since))
        first = first or min(bought_since)
    now = max(as_of, last)
    median = math.nan if row is None else float(arrays.median_interval_days[row])
    days_since = (now - last) / 86400.0 if last else None
    overdue = days_since / median if days_since is not None and median > 0 else None
    orders = 0 if row is None else int(arrays.customer_orders[row])
    email = engagement.of(view.interactions)
    opens_timing = email.best_contact(rules)
    if opens_timing is not None:
        (hour, weekday), timing_from = opens_timing, "own opens"
    else:
        own = row is not None and bool(arrays.timing_own[row])
        hour = int(arrays.best_hour[row]) if row is not None else -1
        weekday = int(arrays.best_weekday[row]) if row is not None else -1
        if row is None or hour < 0:
            hour, weekday = rules.population_best_hour, rules.population_best_weekday
        timing_from = "own orders" if own else "population"
    return {
        "as_of": _iso(now),
        "first_purchase": _iso(first) if first else None,
        "last_purchase": _iso(last) if last else None,
        "days_since_last_purchase": None if days_since is None else round(days_since, 1),
        "median_days_between_orders": None if math.isnan(median) else round(median, 1),
        "overdue_ratio": None if overdue is None else round(overdue, 2),
        "lapsing": rules.is_lapsing(overdue),
        "best_contact": {
            "hour": hour if hour >= 0 else None,
            "weekday": WEEKDAYS[weekday] if 0 <= weekday < 7 else None,
            "from": timing_from,
        },
        "thresholds_crossed": rules.thresholds_crossed(view.lifetime_spend, orders),
        "thank_you": rules.thank_you(view.lifetime_spend, orders),
        "email": {
            "opens": email.opens,
            "clicks": email.clicks,
            "sends_opened": email.sends_opened,
            "sends_clicked": email.sends_clicked,
            "click_rate": None if email.click_rate is None else round(email.click_rate, 3),
            "last_open": _iso_of(email.last_open),
            "sends_opened_since_click": email.sends_opened_since_click,
            "disengaged": email.disengaged(rules),
            "unsubscribed": email.unsubscribed,
            "unsubscribed_at": _iso_of(email.unsubscribed_at),
        },
    }


def _seconds(value: str | None) -> int:
    if not value:
        return 0
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _iso_of(moment: datetime | None) -> str | None:
    return None if moment is None else _iso(int(moment.timestamp()))
