"""What each dashboard page shows, assembled from the service core (``recsvc.service``) as
plain values for the templates. No web framework here: the views parse the request, call
these and render.

Nothing here scans every customer per request: per-customer pages read one customer, lists
are pages, and the figures over all customers come from the bundle's manifest or are
computed once per bundle (``Service.tier_figures``, ``Service.tier_movements``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from recsvc import defaults
from recsvc.bundle import QUARANTINE_FILE
from recsvc.dashboard import charts, formats
from recsvc.dashboard.evaluation import EvaluationReport
from recsvc.dashboard.history import ExperimentHistory
from recsvc.dashboard.quarantine import QuarantinePage, read_page
from recsvc.dashboard.telemetry import Telemetry
from recsvc.errors import InvalidParameter, Unsubscribed
from recsvc.identity import mask_key
from recsvc.registry import ServedModel
from recsvc.schemas import FigureInterval
from recsvc.service import Service
from recsvc.store import StoredEvent
from recsvc.text import spreadsheet_safe
from recsvc.triggers import KINDS, Key

# The outcomes of a source's rows, in the order the overview stacks them.
OUTCOMES = ("used", "duplicate", "cancellation", "anonymous", "adjustment", "erased", "quarantined")
RECOMMENDATIONS_N = 10
EMAIL_N = defaults.EMAIL_DEFAULT_N
EVENTS_PAGE = 20
TRIGGER_PAGE_SIZES = (10, 25, 50, 100, 250)
TRIGGER_COLUMNS = ("fired_at", "kind", "customer_id", "reason", "figures")
EXPORT_PAGE = 1000


def currency(model: ServedModel) -> str:
    return model.bundle.manifest.channels.currency_symbol


# Overview


def overview(
    service: Service, model: ServedModel, telemetry: Telemetry, evaluation: EvaluationReport
) -> dict[str, Any]:
    manifest = model.bundle.manifest
    registry = service.registry
    sources = []
    stacked = []
    for summary_name, accounting in manifest.accounting.items():
        quarantined = sum(accounting.quarantined.values())
        parts = {
            "used": accounting.used,
            "duplicate": accounting.duplicate,
            "cancellation": accounting.cancellation,
            "anonymous": accounting.anonymous,
            "adjustment": accounting.adjustment,
            "erased": accounting.erased,
            "quarantined": quarantined,
        }
        read = accounting.rows_read
        summary = next((s for s in manifest.sources if s.name == summary_name), None)
        sources.append(
            {
                "name": summary_name,
                "summary": summary,
                "rows_read": read,
                "parts": parts,
                "quarantined": quarantined,
                "quarantined_share": formats.share(quarantined, read),
                "reasons": sorted(accounting.quarantined.items(), key=lambda kv: -kv[1]),
                "max_share": manifest.quarantine.max_share.get(summary_name),
                "over_limit": summary_name in manifest.quarantine.over_limit,
            }
        )
        stacked.append(
            (
                summary_name,
                [
                    (
                        outcome,
                        float(count),
                        f"{outcome}: {formats.number(count)} "
                        f"({formats.percent(formats.share(count, read))})",
                    )
                    for outcome, count in parts.items()
                ],
            )
        )
    reading = telemetry.read(registry, service.store)
    evaluated = evaluation.state()
    evaluation_chart = None
    if evaluated.evaluation is not None:
        scored = evaluated.evaluation
        evaluation_chart = charts.bar_chart(
            f"NDCG@{scored.k} by model",
            [
                (
                    m.name,
                    m.scores["ndcg"] or 0.0,
                    formats.number(m.scores["ndcg"], 4),
                    "main" if m.served else "base",
                )
                for m in scored.models
            ],
        )
    route_chart = charts.bar_chart(
        "Requests by route since the service started",
        [
            (figures.route, figures.requests, formats.number(figures.requests), "main")
            for figures in reading.routes[:12]
        ],
        label_width=300,
    )
    return {
        "model": model,
        "manifest": manifest,
        "age": max(time.time() - model.created, 0.0),
        "loaded_at": model.loaded_at,
        "last_error": registry.last_error,
        "fallback_from": registry.fallback_from,
        "sources": sources,
        "accounting_chart": charts.stacked_chart("Rows by outcome", stacked, OUTCOMES),
        "has_quarantine_file": (model.bundle.path / QUARANTINE_FILE).is_file(),
        "reading": reading,
        "route_chart": route_chart,
        "evaluation": evaluated,
        "evaluation_chart": evaluation_chart,
    }


# Customers


@dataclass(frozen=True)
class EventLine:
    kind: str
    item_id: str
    title: str | None
    quantity: float
    price: float
    timestamp: str
    source: str
    send_id: str | None
    surface: str | None


def customer(
    service: Service,
    model: ServedModel,
    key: str,
    unmasked: bool,
    owned_page: int = 1,
    events_page: int = 1,
    slot: str | None = None,
) -> dict[str, Any]:
    """Everything the customer page shows for the customer ``key`` names."""
    resolved = service.resolve(model, key)
    shown_key = key if unmasked else mask_key(key, model.ranker.aliases.rules)
    slots = list(model.bundle.manifest.channels.slots)
    slot = slot if slot in slots else (slots[0] if slots else None)
    page: dict[str, Any] = {
        "key": key,
        "shown_key": shown_key,
        "erased": resolved.erased,
        "customer_id": resolved.customer_id,
        "known": resolved.row is not None,
        "slots": slots,
        "slot": slot,
    }
    if resolved.erased:
        return page
    view = service.customer(model, key)
    catalog = service.catalog(model)
    profile = service.profile(model, key)
    held = service.holdings(model, view)
    flat = [holding for items in held.values() for holding in items]
    page_size = defaults.DASHBOARD_PAGE
    owned_pages = max((len(flat) + page_size - 1) // page_size, 1)
    owned_page = min(owned_page, owned_pages)
    shown_holdings = flat[(owned_page - 1) * page_size : owned_page * page_size]
    lines = sorted(view.events + view.interactions, key=lambda e: e.received_at, reverse=True)
    events_pages = max((len(lines) + EVENTS_PAGE - 1) // EVENTS_PAGE, 1)
    events_page = min(events_page, events_pages)
    shown_lines = lines[(events_page - 1) * EVENTS_PAGE : events_page * EVENTS_PAGE]
    history = service.spend_history(model, view)
    symbol = currency(model)
    spend_chart = (
        charts.line_chart(
            "Lifetime spend over time",
            [
                (
                    point.at,
                    point.spend,
                    f"{formats.when(point.at)}: {formats.money(point.spend, symbol)}"
                    f" ({point.label})",
                )
                for point in history
            ],
            x_label=lambda value: formats.when(value)[:10],
            y_label=lambda value: formats.money(value, symbol),
            step=True,
        )
        if history
        else None
    )
    # What they would get now: from their experiment arm's bundle, as a preview that records
    # no impression (looking must not count in an experiment's figures).
    answering, assignment = service.serving(key)
    try:
        email: Any = service.email_preview(answering, key, EMAIL_N)
        unsubscribed = None
    except Unsubscribed as error:
        email, unsubscribed = None, str(error)
    page |= {
        "profile": profile,
        "degraded": view.degraded,
        "aliases": service.alias_count(model, view),
        "sources_bought_in": list(held),
        "holdings": shown_holdings,
        "holdings_total": len(flat),
        "owned_page": owned_page,
        "owned_pages": owned_pages,
        "events": [_event_line(event, model, catalog.titles) for event in shown_lines],
        "events_total": len(lines),
        "events_page": events_page,
        "events_pages": events_pages,
        "spend_chart": spend_chart,
        "arm": None if assignment is None else assignment.arm,
        "answering_version": answering.version,
        "recommendations": service.recommendations(
            answering, key, RECOMMENDATIONS_N, assignment=assignment, preview=True
        ),
        "block": None
        if slot is None
        else service.block(answering, key, slot, assignment=assignment, preview=True),
        "email": email,
        "unsubscribed": unsubscribed,
    }
    return page


def _event_line(event: StoredEvent, model: ServedModel, titles: list[str]) -> EventLine:
    index = model.item_index.get(event.item_id)
    return EventLine(
        kind=event.kind,
        item_id=event.item_id,
        title=titles[index] if index is not None else None,
        quantity=event.quantity,
        price=event.price,
        timestamp=event.timestamp,
        source=event.source,
        send_id=event.send_id,
        surface=event.surface,
    )


def top_customers(service: Service, model: ServedModel, count: int = 8) -> list[Any]:
    """A few of the highest spenders of the top tier that has any, to start from."""
    figures = service.tier_figures(model)
    for tier in range(len(figures.rows) - 1, -1, -1):
        if figures.rows[tier].customers:
            return figures.members(tier, 0, count)
    return []


# Tiers


def tiers(service: Service, model: ServedModel, tier_name: str | None, page: int) -> dict[str, Any]:
    figures = service.tier_figures(model)
    names = [row.name for row in figures.rows]
    if tier_name is None:
        tier_name = next((row.name for row in reversed(figures.rows) if row.customers), names[0])
    if tier_name not in names:
        raise InvalidParameter("tier", f"must be one of {', '.join(names)}")
    tier = names.index(tier_name)
    size = defaults.DASHBOARD_PAGE
    pages = max((figures.rows[tier].customers + size - 1) // size, 1)
    if page > pages:
        raise InvalidParameter("page", f"{tier_name} has {pages} pages")
    symbol = currency(model)
    chart = charts.bar_chart(
        "Customers per tier",
        [
            (
                row.name,
                float(row.customers),
                f"{formats.number(row.customers)} "
                f"({formats.percent(formats.share(row.customers, figures.customers))})",
                "main",
            )
            for row in reversed(figures.rows)
        ],
        width=540,
        label_width=110,
    )
    spend_chart = charts.bar_chart(
        "Spend in the tier window per tier",
        [
            (row.name, row.window_spend, formats.money(row.window_spend, symbol), "base")
            for row in reversed(figures.rows)
        ],
        width=540,
        label_width=110,
    )
    return {
        "figures": figures,
        "chart": chart,
        "spend_chart": spend_chart,
        "movements": service.tier_movements(model),
        "tier": tier_name,
        "members": figures.members(tier, (page - 1) * size, size),
        "page": page,
        "pages": pages,
        "window_days": model.ranker.tiers.window_days,
        "as_of": model.bundle.manifest.data_as_of,
    }


# Triggers


@dataclass(frozen=True)
class TriggerFilter:
    kinds: tuple[str, ...]  # all of KINDS when none was chosen
    start: date | None  # from this day on (UTC)
    end: date | None  # up to and including this day

    @property
    def since(self) -> float:
        """The feed's ``since``: just before the first day's first second."""
        if self.start is None:
            return 0.0
        return datetime.combine(self.start, datetime.min.time(), UTC).timestamp() - 0.5

    @property
    def until(self) -> float | None:
        if self.end is None:
            return None
        return datetime.combine(self.end + timedelta(days=1), datetime.min.time(), UTC).timestamp()


def recent_periods(model: ServedModel) -> list[tuple[str, date, date]]:
    """Quick filters: the last week and month of the bundle's data (its data's end, not the
    wall clock: a bundle of an old history still has a "this week")."""
    as_of = model.bundle.manifest.data_as_of
    if not as_of:
        return []
    end = datetime.fromisoformat(as_of).date()
    return [
        ("last 7 days of data", end - timedelta(days=6), end),
        ("last 30 days of data", end - timedelta(days=29), end),
    ]


def trigger_filter(kinds: list[str], start: str | None, end: str | None) -> TriggerFilter:
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidParameter("kind", f"must be some of {', '.join(KINDS)}")
    first, last = _day("from", start), _day("to", end)
    if first is not None and last is not None and first > last:
        raise InvalidParameter("to", "is before from")
    return TriggerFilter(tuple(k for k in KINDS if k in kinds) or KINDS, first, last)


def _day(name: str, raw: str | None) -> date | None:
    if raw is None or not raw.strip():
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidParameter(name, "must be a date, YYYY-MM-DD") from None


def triggers_page(
    service: Service, model: ServedModel, chosen: TriggerFilter, after: Key | None, limit: int
) -> tuple[list[dict[str, Any]], Key | None, bool]:
    """One page of the feed within the filter: its triggers, the cursor of the next page
    (None: the last) and whether the store did not answer."""
    found = service.triggers_page(model, set(chosen.kinds), chosen.since, after, limit)
    until = chosen.until
    kept = found.triggers if until is None else [t for t in found.triggers if _fired(t) < until]
    last = found.last if len(kept) == len(found.triggers) else None
    return kept, last, found.degraded


def shown_triggers(
    service: Service, model: ServedModel, triggers: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Triggers as the page lists them: their figures as plain values, and whether the
    customer is one the bundle knows (one it does not is named by an opaque store key)."""
    return [
        {
            **trigger,
            "figures": orjson.loads(orjson.dumps(trigger["figures"])),
            "in_bundle": service.resolve(model, trigger["customer_id"]).row is not None,
        }
        for trigger in triggers
    ]


def _fired(trigger: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(trigger["fired_at"]).replace("Z", "+00:00")).timestamp()


def trigger_rows(
    service: Service, model: ServedModel, chosen: TriggerFilter
) -> Iterator[list[object]]:
    """Every trigger within the filter, a row per trigger as the CSV export writes it
    (cells a spreadsheet would run as a formula made safe), read a page at a time."""
    after: Key | None = None
    while True:
        triggers, after, _ = triggers_page(service, model, chosen, after, EXPORT_PAGE)
        for trigger in triggers:
            figures = orjson.dumps(trigger["figures"]).decode()
            row = [trigger["fired_at"], trigger["kind"], trigger["customer_id"], trigger["reason"]]
            yield [spreadsheet_safe(cell) for cell in [*row, figures]]
        if after is None:
            return


# Quarantine


def quarantine(
    model: ServedModel, after: int | None, source: str | None, unmasked: bool
) -> QuarantinePage | None:
    """A page of the bundle's quarantined rows (None: the bundle has no quarantine file)."""
    path = model.bundle.path / QUARANTINE_FILE
    if not path.is_file():
        return None
    sources = sorted(
        name
        for name, accounting in model.bundle.manifest.accounting.items()
        if accounting.quarantined
    )
    if source is not None and source not in model.bundle.manifest.accounting:
        raise InvalidParameter("source", "is not a source of this bundle")
    return read_page(path, after, defaults.DASHBOARD_PAGE, source, unmasked, sources)


# Experiments

METRIC_NAMES = {
    "ctr": "Click-through rate",
    "conversion_rate": "Conversion rate",
    "revenue_per_impression": "Revenue per impression",
}


def experiments(service: Service, history: ExperimentHistory) -> dict[str, Any]:
    """The experiment in force: each arm's figures with 95 % intervals, each arm's
    difference from the first, the figures' history, and every model version's and
    surface's counts."""
    found = service.experiments()
    report = found.experiment
    page: dict[str, Any] = {"experiments": found, "interval_charts": [], "history_charts": []}
    if report is None:
        return page
    history.record(report)
    symbol = currency(service.model())
    for metric, title in METRIC_NAMES.items():
        shown: Callable[[float], str] = (
            _money(symbol) if metric == "revenue_per_impression" else formats.percent
        )
        rows = [
            (
                arm.name,
                getattr(arm, metric).value,
                getattr(arm, metric).low,
                getattr(arm, metric).high,
                _interval_text(getattr(arm, metric), shown),
            )
            for arm in report.arms
        ]
        page["interval_charts"].append(
            charts.interval_chart(f"{title}, 95 % intervals", rows, shown)
        )
    readings = history.readings(report.name)
    for metric in ("ctr", "conversion_rate"):
        series = []
        for arm in report.arms:
            points = []
            for reading in readings:
                figures = next((a for a in reading.arms if a.name == arm.name), None)
                interval = None if figures is None else getattr(figures, metric)
                if interval is None or interval.value is None:
                    continue
                low = interval.low if interval.low is not None else interval.value
                high = interval.high if interval.high is not None else interval.value
                tip = f"{formats.when(reading.at)}: {_interval_text(interval, formats.percent)}"
                points.append((reading.at, interval.value, low, high, tip))
            if points:
                series.append((arm.name, points))
        if series:
            page["history_charts"].append(
                charts.series_chart(
                    f"{METRIC_NAMES[metric]} over time (everything up to each reading)",
                    series,
                    x_label=lambda value: formats.when(value)[:16],
                    y_label=formats.percent,
                )
            )
    page["readings"] = len(readings)
    return page


def _money(symbol: str) -> Callable[[float], str]:
    return lambda value: formats.money(value, symbol)


def _interval_text(interval: FigureInterval, shown: Callable[[float], str]) -> str:
    if interval.value is None:
        return "too little data"
    if interval.low is None or interval.high is None:
        return str(shown(interval.value))
    return f"{shown(interval.value)} ({shown(interval.low)} to {shown(interval.high)})"
