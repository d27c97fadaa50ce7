"""Value tiers and CRM signals, computed at training time.

Tiers rank customers by spend over a trailing window (``window_days`` before the data's end).
Levels are given by minimum spend, or by percentile of the customers who spent in the window
(resolved to spend thresholds here, so the service applies the same table as events arrive).

Signals per customer: last and first purchase, median days between orders, how overdue they
are (lapsing when more than ``lapsing_factor`` median intervals have passed), the hour and
weekday they usually order (the population's when they have fewer than
``min_orders_for_timing`` orders), price band, and thresholds crossed. Triggers are the
signals that fired (kinds, thresholds and rules: recsvc.policy, which the service applies).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recsvc import policy
from recsvc.policy import TierPolicy, tier_indices
from training.dataset import (
    Settlement,
    combined_keys,
    distinct_sorted,
    factorized,
    outcome_is,
    positions,
    run_starts,
    settle_returns,
)
from training.errors import ConfigError


@dataclass(frozen=True)
class TierLevel:
    name: str
    min_spend: float | None = None  # method "thresholds"
    min_percentile: float | None = None  # method "percentiles": 0..100
    perks: tuple[str, ...] = ()
    premium_boost: float = 0.0  # added to premium items' scores for this tier


@dataclass(frozen=True)
class TierConfig:
    window_days: float = policy.WINDOW_DAYS
    method: str = "thresholds"
    levels: tuple[TierLevel, ...] = (TierLevel("standard", min_spend=0.0),)
    price_affinity: float = 0.0  # penalty per log-unit a price lies outside the usual band
    premium_price_percentile: float = 90.0  # items priced above this percentile are premium
    exclusive_items: Any = None  # Path of a CSV item_id,tier: items only that tier and up see
    lapsing_factor: float = policy.LAPSING_FACTOR
    min_orders_for_interval: int = policy.MIN_ORDERS_FOR_INTERVAL
    min_orders_for_timing: int = 3
    spend_thresholds: tuple[float, ...] = ()
    order_thresholds: tuple[int, ...] = ()
    thank_you_spend: float | None = None
    thank_you_orders: int | None = None
    min_opens_for_timing: int = policy.MIN_OPENS_FOR_TIMING  # applied by the service
    disengaged_opens: int = policy.DISENGAGED_OPENS  # applied by the service


@dataclass(frozen=True)
class CustomerSignals:
    window_spend: NDArray[np.float64]
    first_purchase: NDArray[np.int64]  # seconds since the epoch; 0 = none
    last_purchase: NDArray[np.int64]
    median_interval_days: NDArray[np.float32]  # NaN when too few orders
    best_hour: NDArray[np.int8]
    best_weekday: NDArray[np.int8]  # 0 = Monday
    timing_own: NDArray[np.bool_]  # best hour/weekday from their own orders (else population)
    price_low: NDArray[np.float32]  # the customer's usual unit-price band (10th..90th pct.)
    price_high: NDArray[np.float32]
    population: Population  # the tier table and everyone's usual order hour and weekday
    triggers: pd.DataFrame = field(default_factory=pd.DataFrame)


def resolve_levels(
    config: TierConfig, window_spend: NDArray[np.float64]
) -> tuple[policy.TierLevel, ...]:
    """The tier table as the service applies it: spend thresholds, ascending."""
    spenders = window_spend[window_spend > 0]
    return tier_levels(
        config, lambda q: float(np.percentile(spenders, q)) if len(spenders) else None
    )


def tier_levels(
    config: TierConfig, percentile: Callable[[float], float | None]
) -> tuple[policy.TierLevel, ...]:
    """``resolve_levels`` with ``percentile(q)``: the q-th percentile (0-100, linear
    interpolation) of the positive window spends, None when nobody spent."""
    levels: list[policy.TierLevel] = []
    for level in config.levels:
        if config.method == "percentiles":
            assert level.min_percentile is not None
            found = None if level.min_percentile <= 0 else percentile(level.min_percentile)
            threshold = 0.0 if found is None else found
        else:
            assert level.min_spend is not None
            threshold = level.min_spend
        levels.append(
            policy.TierLevel(
                name=level.name,
                min_spend=round(threshold, 2),
                perks=tuple(level.perks),
                premium_boost=level.premium_boost,
            )
        )
    for lower, higher in zip(levels, levels[1:], strict=False):
        if higher.min_spend < lower.min_spend:
            raise ConfigError(f"tiers: {higher.name} starts below {lower.name}")
    return tuple(levels)


@dataclass(frozen=True)
class CustomerLines:
    """The dated purchase and cancellation lines of the customers, as arrays, with the order
    each belongs to. A line without a timestamp falls in no window, order date or trigger."""

    row: NDArray[np.int32]  # the customer's row
    timestamp: NDArray[np.datetime64]  # datetime64[us]
    # A return's: the date of the purchase it returns, whose tier window it is charged to.
    charged_at: NDArray[np.datetime64]
    unit_price: NDArray[np.float64]  # NaN where unknown
    # quantity x unit price (negative for a return, bounded by what it returns; 0 unpriced)
    amount: NDArray[np.float64]
    purchase: NDArray[np.bool_]  # a purchase, not a cancellation
    order: NDArray[np.int32]  # the line's order: an index into order_rows
    order_rows: NDArray[np.int64]  # each distinct (customer, order)'s customer row, in that order

    @staticmethod
    def of(
        events: pd.DataFrame,
        customer_ids: NDArray[np.str_],
        settlement: Settlement | None = None,
    ) -> CustomerLines:
        """From merged events (see ``training.merge.MergedHistory``) and their returns
        settled (``TrainingData.settlement``; settled here when not given)."""
        settlement = settlement or settle_returns(events)
        rows = positions(events["customer_id"], pd.Index(customer_ids))
        timestamps = events["timestamp"].to_numpy()
        mine = (rows >= 0) & outcome_is(events, "used", "cancellation") & ~np.isnat(timestamps)
        lines = np.flatnonzero(mine)
        del mine
        rows = rows[lines]
        orders = events["order"].to_numpy()[lines]
        span = int(orders.max(initial=0)) + 1
        order, keys = factorized(combined_keys(rows, span, orders))
        del orders
        # The returns settled along these lines only (each column of every event is 160 MB
        # at 20 M purchases).
        at, settled = settlement.along(lines)
        quantity = events["quantity"].to_numpy()[lines]
        quantity[at] = settlement.quantity[settled]
        charged_at = timestamps[lines].astype("datetime64[us]", copy=False)
        charged_at[at] = settlement.charged_at[settled]
        price = events["unit_price"].to_numpy()[lines]
        quantity *= np.where(np.isnan(price), 0.0, price)
        return CustomerLines(
            row=rows,
            timestamp=timestamps[lines],
            charged_at=charged_at,
            unit_price=price,
            amount=quantity,
            purchase=outcome_is(events, "used")[lines],
            order=order,
            order_rows=keys // span,
        )

    def placed(self, lines: NDArray[np.bool_] | slice = slice(None)) -> NDArray[np.int64]:
        """Each order's earliest timestamp among ``lines`` (microseconds; the int64 maximum
        for an order with none of them)."""
        placed = np.full(len(self.order_rows), np.iinfo(np.int64).max)
        when = self.timestamp[lines].astype("datetime64[us]").view(np.int64)
        np.minimum.at(placed, self.order[lines], when)
        return placed


def customer_signals(
    lines: CustomerLines,
    count: int,
    as_of: pd.Timestamp | None,
    config: TierConfig,
    population: Population | None = None,
) -> CustomerSignals:
    """Per-customer figures from their purchase and cancellation lines; ``count`` customers.
    ``population``: that of a larger history these customers are part of (default: theirs)."""
    spend = window_spend(lines, count, as_of, config.window_days)
    order_rows, placed_at = _orders_placed(lines)
    first = np.zeros(count, dtype=np.int64)
    last = np.zeros(count, dtype=np.int64)
    if len(placed_at):
        seconds = placed_at.astype("datetime64[s]").astype(np.int64)
        first[:] = np.iinfo(np.int64).max
        np.minimum.at(first, order_rows, seconds)
        np.maximum.at(last, order_rows, seconds)
        first[first == np.iinfo(np.int64).max] = 0
        del seconds

    median = _median_interval_days(order_rows, placed_at, count, config.min_orders_for_interval)
    if population is None:
        population = Population.of(config, spend, *_slot_counts(placed_at))
    best_hour, best_weekday, own = _timing(
        order_rows, placed_at, count, config.min_orders_for_timing, population
    )
    low, high = _price_band(lines, count)
    return CustomerSignals(
        spend,
        first,
        last,
        median,
        best_hour,
        best_weekday,
        own,
        low,
        high,
        population,
    )


def _orders_placed(lines: CustomerLines) -> tuple[NDArray[np.int64], NDArray[np.datetime64]]:
    """Each order with a purchase: its customer row, and when it was placed (its first
    purchased line's time)."""
    placed = lines.placed(lines.purchase)
    bought = placed != np.iinfo(np.int64).max
    return lines.order_rows[bought], placed[bought].view("datetime64[us]")


def order_slots(lines: CustomerLines) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """How many orders with a purchase were placed in each hour of the day, and on each
    weekday (0 = Monday): of any part of the customers, summed over the parts."""
    return _slot_counts(_orders_placed(lines)[1])


def _slot_counts(placed_at: NDArray[np.datetime64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    return (
        np.bincount(_hours(placed_at), minlength=24).astype(np.int64),
        np.bincount(_weekdays(placed_at), minlength=7).astype(np.int64),
    )


def _hours(placed_at: NDArray[np.datetime64]) -> NDArray[np.int64]:
    hours: NDArray[np.int64] = placed_at.astype("datetime64[h]").view(np.int64) % 24
    return hours


def _weekdays(placed_at: NDArray[np.datetime64]) -> NDArray[np.int64]:
    weekdays: NDArray[np.int64] = (placed_at.astype("datetime64[D]").view(np.int64) + 3) % 7
    return weekdays  # 1970-01-01 was a Thursday


@dataclass(frozen=True)
class Population:
    """What each customer's tier, signals and triggers depend on beyond their own lines:
    the tier table (its percentiles are of every customer's window spend) and the most
    common order hour and weekday over everyone's orders (ties: the earlier; -1: no
    orders)."""

    levels: tuple[policy.TierLevel, ...]
    hour: int
    weekday: int

    @classmethod
    def of(
        cls,
        config: TierConfig,
        window_spend: NDArray[np.float64],
        hours: NDArray[np.int64],
        weekdays: NDArray[np.int64],
    ) -> Population:
        """From every customer's ``window_spend`` and the summed ``order_slots``."""
        return cls.with_slots(resolve_levels(config, window_spend), hours, weekdays)

    @classmethod
    def with_slots(
        cls,
        levels: tuple[policy.TierLevel, ...],
        hours: NDArray[np.int64],
        weekdays: NDArray[np.int64],
    ) -> Population:
        """The tier table ``levels`` and the summed ``order_slots``."""
        ordered = hours.sum() > 0
        return cls(
            levels,
            int(hours.argmax()) if ordered else -1,
            int(weekdays.argmax()) if ordered else -1,
        )


def window_spend(
    lines: CustomerLines, count: int, as_of: pd.Timestamp | None, window_days: float
) -> NDArray[np.float64]:
    """Each of ``count`` customers' spend in the tier window, the ``window_days`` before
    ``as_of``: returns charged to the purchase they return, never below zero."""
    if as_of is None:
        return np.zeros(count)
    start = (as_of - pd.Timedelta(days=window_days)).to_datetime64()
    recent = lines.charged_at >= start
    spend = np.bincount(lines.row[recent], lines.amount[recent], count).astype(np.float64)
    return np.maximum(spend, 0.0)  # refunds above the purchase price


def _median_interval_days(
    order_rows: NDArray[np.int64],
    placed_at: NDArray[np.datetime64],
    count: int,
    min_days: int,
) -> NDArray[np.float32]:
    """Median days between the distinct days a customer ordered on (NaN: fewer than
    ``min_days`` such days)."""
    median = np.full(count, np.nan, dtype=np.float32)
    days = placed_at.astype("datetime64[D]").view(np.int64)
    if not len(days):
        return median
    earliest = int(days.min())
    span = int(days.max()) - earliest + 1
    days -= earliest  # a copy of placed_at's
    customer_days = distinct_sorted(combined_keys(order_rows, span, days))
    del days
    rows, day = customer_days // span, customer_days % span
    del customer_days
    same_customer = ~run_starts(rows)
    gap_rows = rows[same_customer]
    gaps = np.diff(day)[same_customer[1:]]
    enough = np.bincount(rows, minlength=count) >= min_days
    # Each customer's gaps ascending: one sort of (customer, gap) keys, not a lexsort.
    ordered = np.sort(combined_keys(gap_rows, span, gaps))
    gap_rows, gaps = ordered // span, (ordered % span).astype(np.float64)
    del ordered
    sizes = np.bincount(gap_rows, minlength=count)
    starts = np.cumsum(sizes) - sizes
    measured = np.flatnonzero(enough & (sizes > 0))
    upper = starts[measured] + sizes[measured] // 2
    lower = starts[measured] + (sizes[measured] - 1) // 2
    median[measured] = (gaps[lower] + gaps[upper]) / 2
    return median


def _timing(
    order_rows: NDArray[np.int64],
    placed_at: NDArray[np.datetime64],
    count: int,
    min_orders: int,
    population: Population,
) -> tuple[NDArray[np.int8], NDArray[np.int8], NDArray[np.bool_]]:
    """Each customer's most common order hour and weekday (ties go to the earlier), the
    ``population``'s for customers with fewer than ``min_orders`` orders."""
    hour = np.full(count, population.hour, dtype=np.int8)
    weekday = np.full(count, population.weekday, dtype=np.int8)
    own = np.zeros(count, dtype=bool)
    if not len(order_rows):
        return hour, weekday, own
    hours, weekdays = _hours(placed_at), _weekdays(placed_at)
    regulars = np.flatnonzero(np.bincount(order_rows, minlength=count) >= min_orders)
    for values, slots, target in ((hours, 24, hour), (weekdays, 7, weekday)):
        counts = np.bincount(order_rows * slots + values, minlength=count * slots)
        target[regulars] = counts.reshape(count, slots)[regulars].argmax(axis=1)
    own[regulars] = True
    return hour, weekday, own


def _price_band(
    lines: CustomerLines, count: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The 10th and 90th percentile of the positive unit prices each customer bought at
    (linear interpolation, as numpy and pandas compute quantiles)."""
    low = np.full(count, np.nan, dtype=np.float32)
    high = np.full(count, np.nan, dtype=np.float32)
    priced = lines.purchase & (lines.unit_price > 0)
    rows, prices = lines.row[priced], lines.unit_price[priced]
    # Sorted by customer, then price: sorting one integer key per line (customer, price
    # rank) is several times faster than an argsort on the two.
    distinct = np.unique(prices)
    keys = np.sort(
        rows.astype(np.int64) * len(distinct) + pd.Index(distinct).get_indexer(pd.Index(prices))
    )
    prices = distinct[keys % len(distinct)]
    sizes = np.bincount(rows, minlength=count)
    starts = np.cumsum(sizes) - sizes
    measured = np.flatnonzero(sizes)
    for target, share in ((low, 0.1), (high, 0.9)):
        position = share * (sizes[measured] - 1)
        below = starts[measured] + position.astype(np.int64)
        fraction = position % 1
        above = np.minimum(below + 1, starts[measured] + sizes[measured] - 1)
        value = prices[below]
        target[measured] = np.where(
            fraction == 0, value, value + (prices[above] - value) * fraction
        )
    return low, high


def training_triggers(
    lines: CustomerLines,
    signals: CustomerSignals,
    rules: TierPolicy,
    as_of: pd.Timestamp | None,
) -> pd.DataFrame:
    """Every trigger that fired up to ``as_of``: customer row, kind, when, why, figures."""
    records: list[dict[str, Any]] = []
    orders = _order_totals(lines)
    if not orders.empty:
        records += _crossings(orders, rules)
    if as_of is not None:
        now = int(as_of.timestamp())
        overdue = signals.median_interval_days > 0
        for row in np.flatnonzero(overdue & (signals.last_purchase > 0)):
            median = float(signals.median_interval_days[row])
            since = (now - int(signals.last_purchase[row])) / 86400.0
            if rules.is_lapsing(since / median):
                fired = int(signals.last_purchase[row] + rules.lapsing_factor * median * 86400)
                records.append(
                    {
                        "row": int(row),
                        "kind": "lapsing",
                        "fired_at": fired,
                        "reason": f"{since:.0f} days since the last order, usually {median:.0f}",
                        "figures": {
                            "days_since_last_purchase": round(since, 1),
                            "median_days_between_orders": round(median, 1),
                            "overdue_ratio": round(since / median, 2),
                        },
                    }
                )
    columns = ["row", "kind", "fired_at", "reason", "figures"]
    return pd.DataFrame(records, columns=columns).sort_values(
        ["fired_at", "row", "kind"], ignore_index=True
    )


def _order_totals(lines: CustomerLines) -> pd.DataFrame:
    """One row per (customer, order) in time order: when placed (seconds), amount, and the
    running spend and orders."""
    count = len(lines.order_rows)
    placed = lines.placed()
    purchase = np.zeros(count, dtype=bool)
    purchase[lines.order[lines.purchase]] = True
    # Orders in the order their first line was read, then by customer and time.
    first_line = np.full(count, len(lines.order))
    np.minimum.at(first_line, lines.order, np.arange(len(lines.order)))
    ordered = np.lexsort((first_line, placed, lines.order_rows))
    del first_line
    rows = lines.order_rows[ordered]
    amount = np.bincount(lines.order, lines.amount, count)[ordered]
    purchase = purchase[ordered]
    seconds = placed.view("datetime64[us]")[ordered].astype("datetime64[s]").astype(np.int64)
    del placed, ordered
    # Running figures per customer (each customer's orders are together): the count from
    # one cumulative sum less each customer's start, the spend by pandas's grouped sum.
    counted = np.cumsum(purchase)
    before = np.maximum.accumulate(np.where(run_starts(rows), counted - purchase, 0))
    counted -= before
    del before
    spend = pd.Series(amount).groupby(rows).cumsum().to_numpy()
    return pd.DataFrame(
        {
            "row": rows,
            "amount": amount,
            "purchase": purchase,
            "spend": spend,
            "orders": counted,
            "seconds": seconds,
        },
        copy=False,
    )


def _crossings(orders: pd.DataFrame, rules: TierPolicy) -> list[dict[str, Any]]:
    """The triggers fired at the first order whose running figure reached a threshold."""
    records: list[dict[str, Any]] = []

    def first_crossing(kind: str, mask: pd.Series, reason: str, figure: str) -> None:
        hits = orders[mask].groupby("row").head(1)
        for row, seconds, value in zip(
            hits["row"].tolist(), hits["seconds"].tolist(), hits[figure].tolist(), strict=True
        ):
            records.append(
                {
                    "row": int(row),
                    "kind": kind,
                    "fired_at": int(seconds),
                    "reason": reason,
                    "figures": {figure: round(float(value), 2)},
                }
            )

    for threshold in rules.spend_thresholds:
        first_crossing(
            "threshold", orders["spend"] >= threshold, policy.spend_reason(threshold), "spend"
        )
    for threshold in rules.order_thresholds:
        first_crossing(
            "threshold", orders["orders"] >= threshold, policy.orders_reason(threshold), "orders"
        )
    thank = pd.Series(rules.thank_you(orders["spend"], orders["orders"]), index=orders.index)
    first_crossing("thank_you", thank, policy.THANK_YOU_REASON, "spend")
    levels = rules.levels

    # Tier after each order, by spend in the trailing window ending at that order.
    window = int(rules.window_days * 86400)
    key = combined_keys(orders["row"].to_numpy(), 1 << 40, orders["seconds"].to_numpy())
    start = np.searchsorted(key, key - window, side="right")
    del key
    running = np.concatenate([[0.0], orders["amount"].to_numpy().cumsum()])
    window_spend = running[1:] - running[start]
    del running, start
    tiers = tier_indices(levels, window_spend).astype(np.int8)
    previous = np.zeros_like(tiers)
    previous[1:] = tiers[:-1]
    previous[run_starts(orders["row"].to_numpy())] = 0
    upgraded = tiers > previous  # a few orders: filtered before the columns are added
    upgrades = orders[upgraded].assign(
        tier=tiers[upgraded], before=previous[upgraded], window_spend=window_spend[upgraded]
    )
    last_upgrades = upgrades.groupby("row").tail(1)
    for row, seconds, before, after, spend in zip(
        *(last_upgrades[c].tolist() for c in ("row", "seconds", "before", "tier", "window_spend")),
        strict=True,
    ):
        old, new = levels[int(before)].name, levels[int(after)].name
        records.append(
            {
                "row": int(row),
                "kind": "tier_up",
                "fired_at": int(seconds),
                "reason": policy.tier_up_reason(old, new),
                "figures": {"window_spend": round(float(spend), 2), "from": old, "to": new},
            }
        )
    return records


@dataclass(frozen=True)
class Crm:
    """Tier and signal arrays for the bundle, and the tier policy for its manifest."""

    arrays: dict[str, NDArray[Any]]
    policy: TierPolicy


def build_crm(
    lines: CustomerLines,
    customers: int,
    item_ids: NDArray[np.str_],
    prices: NDArray[np.float64],
    as_of: pd.Timestamp | None,
    config: TierConfig,
    population: Population | None = None,
) -> Crm:
    """Tiers, signals and triggers of ``customers`` customers (``lines``: theirs, see
    ``CustomerLines.of``), and which items are premium or reserved for a tier.
    ``population``: that of a larger history these customers are a range of (default:
    theirs); the triggers' rows are then positions in the range."""
    signals = customer_signals(lines, customers, as_of, config, population)
    levels = signals.population.levels
    known_prices = prices[np.isfinite(prices)]
    premium_price = (
        float(np.percentile(known_prices, config.premium_price_percentile))
        if len(known_prices)
        else float("inf")
    )
    rules = TierPolicy(
        window_days=config.window_days,
        method=config.method,
        levels=levels,
        price_affinity=config.price_affinity,
        premium_price=premium_price if np.isfinite(premium_price) else None,
        lapsing_factor=config.lapsing_factor,
        min_orders_for_interval=config.min_orders_for_interval,
        spend_thresholds=tuple(config.spend_thresholds),
        order_thresholds=tuple(config.order_thresholds),
        thank_you_spend=config.thank_you_spend,
        thank_you_orders=config.thank_you_orders,
        min_opens_for_timing=config.min_opens_for_timing,
        disengaged_opens=config.disengaged_opens,
        as_of=None if as_of is None else as_of.isoformat(),
        population_best_hour=signals.population.hour,
        population_best_weekday=signals.population.weekday,
        customers_per_tier={
            level.name: int(count)
            for level, count in zip(
                levels,
                np.bincount(tier_indices(levels, signals.window_spend), minlength=len(levels)),
                strict=True,
            )
        },
    )
    triggers = training_triggers(lines, signals, rules, as_of)
    figures = json.JSONEncoder(sort_keys=True)  # json.dumps builds one per call
    arrays: dict[str, NDArray[Any]] = {
        "window_spend": signals.window_spend,
        "first_purchase": signals.first_purchase,
        "last_purchase": signals.last_purchase,
        "median_interval_days": signals.median_interval_days,
        "best_hour": signals.best_hour,
        "best_weekday": signals.best_weekday,
        "timing_own": signals.timing_own,
        "price_low": signals.price_low,
        "price_high": signals.price_high,
        "item_min_tier": _exclusive_tiers(config, item_ids, levels),
        "item_premium": np.nan_to_num(prices, nan=0.0) >= premium_price,
        "item_categories": np.zeros(len(item_ids), np.int64),  # set by the pipeline
        "trigger_rows": triggers["row"].to_numpy(dtype=np.int32),
        "trigger_kinds": triggers["kind"].to_numpy().astype(np.str_),
        "trigger_at": triggers["fired_at"].to_numpy(dtype=np.int64),
        "trigger_reasons": triggers["reason"].to_numpy().astype(np.str_),
        "trigger_figures": np.array(
            [figures.encode(f) for f in triggers["figures"]], dtype=np.str_
        ),
    }
    return Crm(arrays, rules)


def empty_crm(n_customers: int, n_items: int) -> dict[str, NDArray[Any]]:
    """Neutral tier and signal arrays, for models scored without them (baselines, tuning)."""
    return {
        "window_spend": np.zeros(n_customers),
        "first_purchase": np.zeros(n_customers, np.int64),
        "last_purchase": np.zeros(n_customers, np.int64),
        "median_interval_days": np.full(n_customers, np.nan, np.float32),
        "best_hour": np.full(n_customers, -1, np.int8),
        "best_weekday": np.full(n_customers, -1, np.int8),
        "timing_own": np.zeros(n_customers, bool),
        "price_low": np.full(n_customers, np.nan, np.float32),
        "price_high": np.full(n_customers, np.nan, np.float32),
        "item_min_tier": np.zeros(n_items, np.int8),
        "item_premium": np.zeros(n_items, bool),
        "item_categories": np.zeros(n_items, np.int64),
        "trigger_rows": np.zeros(0, np.int32),
        "trigger_kinds": np.zeros(0, np.str_),
        "trigger_at": np.zeros(0, np.int64),
        "trigger_reasons": np.zeros(0, np.str_),
        "trigger_figures": np.zeros(0, np.str_),
    }


def _exclusive_tiers(
    config: TierConfig, item_ids: NDArray[np.str_], levels: tuple[policy.TierLevel, ...]
) -> NDArray[np.int8]:
    """Per item, the lowest tier allowed to see it (0: everyone), from the exclusives file."""
    minimum = np.zeros(len(item_ids), dtype=np.int8)
    if config.exclusive_items is None:
        return minimum
    names = [level.name for level in levels]
    index = pd.Index(item_ids)
    with open(config.exclusive_items, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            item, tier = (row.get("item_id") or "").strip().upper(), (row.get("tier") or "").strip()
            if tier not in names:
                raise ConfigError(f"{config.exclusive_items}, line {number}: unknown tier {tier!r}")
            position = index.get_indexer(pd.Index([item]))[0]
            if position >= 0:
                minimum[position] = names.index(tier)
    return minimum
