"""A customer's email engagement, from the email events the store keeps (for
``RECSVC_EVENT_RETENTION_DAYS``, stitched sessions' included): opens and clicks, the sends
they engaged with, their habitual open time, the sends opened since their last click, and
whether they unsubscribed. Pure functions of the events; no I/O.

Times are the events' own (``timestamp``, UTC), so a webhook that delivers opens late still
places them when they happened. Nothing re-subscribes a customer: the store keeps their first
``unsubscribe`` past the event retention, until they are erased.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from recsvc.policy import TierPolicy
from recsvc.store import UNSUBSCRIBE, StoredEvent

OPEN, CLICK = "email_open", "email_click"
EMAIL_KINDS = frozenset({OPEN, CLICK, UNSUBSCRIBE})


@dataclass(frozen=True, slots=True)
class Engagement:
    opens: int = 0  # email_open events
    clicks: int = 0  # email_click events
    sends_opened: int = 0  # distinct sends opened or clicked (a click is an open whose
    # tracking pixel was blocked)
    sends_clicked: int = 0
    last_open: datetime | None = None
    sends_opened_since_click: int = 0  # distinct sends opened after their latest click
    open_hour: int | None = None  # the most common hour of their opens (UTC); ties: earlier
    open_weekday: int | None = None  # likewise, 0 = Monday
    unsubscribed_at: datetime | None = None  # their first unsubscribe kept

    @property
    def click_rate(self) -> float | None:
        """Sends clicked per send opened (None: no send opened)."""
        return self.sends_clicked / self.sends_opened if self.sends_opened else None

    @property
    def unsubscribed(self) -> bool:
        return self.unsubscribed_at is not None

    def disengaged(self, rules: TierPolicy) -> bool:
        """``disengaged_opens`` sends opened in a row without a click (and still subscribed:
        nobody is left to win back by email otherwise)."""
        return not self.unsubscribed and self.sends_opened_since_click >= rules.disengaged_opens

    def best_contact(self, rules: TierPolicy) -> tuple[int, int] | None:
        """Their habitual open hour and weekday, once they have ``min_opens_for_timing``
        opens (None before)."""
        if self.opens < rules.min_opens_for_timing or self.open_hour is None:
            return None
        assert self.open_weekday is not None
        return self.open_hour, self.open_weekday


NONE = Engagement()


def of(events: Iterable[StoredEvent]) -> Engagement:
    """The engagement the email events among ``events`` show."""
    email = _in_order(events)
    if not email:
        return NONE
    opens: list[datetime] = []
    clicks = 0
    opened: set[str] = set()
    clicked: set[str] = set()
    since_click: set[str] = set()
    unsubscribed_at = None
    for moment, event in email:
        send = event.send_id or ""
        if event.kind == OPEN:
            opens.append(moment)
            opened.add(send)
            since_click.add(send)
        elif event.kind == CLICK:
            clicks += 1
            opened.add(send)
            clicked.add(send)
            since_click.clear()
        elif unsubscribed_at is None:
            unsubscribed_at = moment
    hours = Counter(moment.hour for moment in opens)
    weekdays = Counter(moment.weekday() for moment in opens)
    return Engagement(
        opens=len(opens),
        clicks=clicks,
        sends_opened=len(opened),
        sends_clicked=len(clicked),
        last_open=max(opens, default=None),
        sends_opened_since_click=len(since_click),
        open_hour=_most_common(hours),
        open_weekday=_most_common(weekdays),
        unsubscribed_at=unsubscribed_at,
    )


def disengaging_opens(events: Iterable[StoredEvent], rules: TierPolicy) -> set[str]:
    """The opens (event ids) that each made the customer disengaged: the open of the
    ``disengaged_opens``-th send in a row without a click, while still subscribed."""
    found = set()
    since_click: set[str] = set()
    unsubscribed = False
    for _, event in _in_order(events):
        if event.kind == OPEN:
            before = len(since_click)
            since_click.add(event.send_id or "")
            if not unsubscribed and before < rules.disengaged_opens <= len(since_click):
                found.add(event.event_id)
        elif event.kind == CLICK:
            since_click.clear()
        else:
            unsubscribed = True
    return found


def _in_order(events: Iterable[StoredEvent]) -> list[tuple[datetime, StoredEvent]]:
    """The email events among ``events``, in the order they happened (then received)."""
    email = [(_moment(e.timestamp), e.received_at, e) for e in events if e.kind in EMAIL_KINDS]
    email.sort(key=lambda entry: entry[:2])
    return [(moment, event) for moment, _, event in email]


def _most_common(counts: Counter[int]) -> int | None:
    """The value seen most often; of those seen as often, the smallest (None: none seen)."""
    return min(counts, key=lambda value: (-counts[value], value)) if counts else None


def _moment(timestamp: str) -> datetime:
    """An event's ISO 8601 time, in UTC (a time without an offset is UTC already)."""
    moment = datetime.fromisoformat(timestamp)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
