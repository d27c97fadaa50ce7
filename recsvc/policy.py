"""Tier and CRM policy, the one definition both sides use: the trainer computes tiers, signals
and triggers with it, the service applies it to spend that keeps growing as events arrive.

The resolved policy travels in the bundle's manifest as its ``tiers`` section
(``TierPolicy``): level thresholds in spend, the signal settings and the trigger rules.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import msgspec
import numpy as np
from numpy.typing import NDArray

# The trigger kinds, sorted, so that a kind's code orders as its name does.
# Sorted: the triggers feed orders by a kind's position in it.
TriggerKind = Literal["disengaged", "lapsing", "thank_you", "threshold", "tier_up"]
TRIGGER_KINDS: tuple[str, ...] = get_args(TriggerKind)
WINDOW_DAYS = 365.0  # tiers rank by spend over this trailing window
LAPSING_FACTOR = 2.0  # lapsing: more than this many median intervals since the last order
MIN_ORDERS_FOR_INTERVAL = 3  # fewer orders: no median interval, so never lapsing
THANK_YOU_REASON = "a loyal customer: thank them"
# Email engagement (recsvc.engagement): the best contact time comes from the customer's own
# opens from this many opens; disengaged after this many sends opened in a row without a click.
MIN_OPENS_FOR_TIMING = 5
DISENGAGED_OPENS = 5


class TierLevel(msgspec.Struct, frozen=True, kw_only=True):
    """One tier as served: customers whose window spend reaches ``min_spend``."""

    name: str
    min_spend: float
    perks: tuple[str, ...] = ()
    premium_boost: float = 0.0  # added to premium items' scores for this tier


DEFAULT_LEVELS = (TierLevel(name="standard", min_spend=0.0),)


class TierPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The manifest's ``tiers`` section: the tier table as the trainer resolved it, the signal
    settings and trigger rules, and figures of the training data (``as_of``, population best
    contact time, customers per tier). A bundle without it serves one tier, no triggers."""

    window_days: float = WINDOW_DAYS
    method: str = "thresholds"  # how the trainer resolved the levels (spend or percentiles)
    levels: tuple[TierLevel, ...] = DEFAULT_LEVELS  # ascending min_spend
    price_affinity: float = 0.0
    premium_price: float | None = None
    lapsing_factor: float = LAPSING_FACTOR
    min_orders_for_interval: int = MIN_ORDERS_FOR_INTERVAL
    spend_thresholds: tuple[float, ...] = ()
    order_thresholds: tuple[int, ...] = ()
    thank_you_spend: float | None = None
    thank_you_orders: int | None = None
    min_opens_for_timing: int = MIN_OPENS_FOR_TIMING
    disengaged_opens: int = DISENGAGED_OPENS
    as_of: str | None = None  # ISO 8601: the training data's last event
    population_best_hour: int = -1
    population_best_weekday: int = -1
    customers_per_tier: dict[str, int] = {}

    def is_lapsing(self, overdue_ratio: float | None) -> bool:
        """Lapsing: more than ``lapsing_factor`` median intervals since the last order."""
        return overdue_ratio is not None and overdue_ratio > self.lapsing_factor

    def thresholds_crossed(self, spend: float, orders: int) -> list[str]:
        """The spend and order thresholds a lifetime ``spend`` and ``orders`` have reached."""
        crossed = [f"spend>={t:g}" for t in self.spend_thresholds if spend >= t]
        return crossed + [f"orders>={t}" for t in self.order_thresholds if orders >= t]

    def thank_you(self, spend: Any, orders: Any) -> Any:
        """Whether a customer is owed a thank-you: lifetime spend or orders reach the rule's.
        Scalars give a bool, arrays (one entry per order, in training) a boolean array."""
        owed = np.zeros(np.shape(spend), dtype=bool)
        if self.thank_you_spend is not None:
            owed |= np.asarray(spend) >= self.thank_you_spend
        if self.thank_you_orders is not None:
            owed |= np.asarray(orders) >= self.thank_you_orders
        return bool(owed) if owed.ndim == 0 else owed


def crossed(before: float, after: float, threshold: float | None) -> bool:
    """A figure that went from ``before`` to ``after`` crossed ``threshold`` (reached it now,
    not before). The trainer's triggers fire at the first order for which this holds."""
    return threshold is not None and before < threshold <= after


def spend_reason(threshold: float) -> str:
    return f"lifetime spend reached {threshold:g}"


def orders_reason(threshold: int) -> str:
    return f"order count reached {threshold}"


def tier_up_reason(old: str, new: str) -> str:
    return f"moved up from {old} to {new}"


def disengaged_reason(opens: int) -> str:
    return f"opened {opens} emails in a row without a click"


def tier_indices(levels: tuple[TierLevel, ...], spend: NDArray[np.float64]) -> NDArray[np.intp]:
    """The tier of each spend: the last level whose min_spend it reaches."""
    thresholds = np.array([level.min_spend for level in levels])
    indices: NDArray[np.intp] = (np.searchsorted(thresholds, spend, side="right") - 1).clip(0)
    return indices


@dataclass(frozen=True)
class TierTable:
    """The tier levels, ready to look up spend in."""

    window_days: float
    levels: tuple[TierLevel, ...]  # ascending min_spend
    price_affinity: float = 0.0
    thresholds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        minimums = tuple(level.min_spend for level in self.levels)
        object.__setattr__(self, "thresholds", minimums)

    @classmethod
    def of(cls, policy: TierPolicy | None) -> TierTable:
        policy = policy or TierPolicy()
        return cls(policy.window_days, policy.levels, policy.price_affinity)

    @property
    def names(self) -> list[str]:
        return [level.name for level in self.levels]

    def index(self, spend: float) -> int:
        """The tier of ``spend``: the last level whose min_spend it reaches."""
        return max(bisect_right(self.thresholds, spend) - 1, 0)

    def indices(self, spend: NDArray[np.float64]) -> NDArray[np.intp]:
        return tier_indices(self.levels, spend)

    def describe(self, spend: float) -> dict[str, Any]:
        """The ``tier`` object of every customer response."""
        position = self.index(spend)
        level = self.levels[position]
        following = self.levels[position + 1] if position + 1 < len(self.levels) else None
        return {
            "name": level.name,
            "spend": round(spend, 2),
            "window_days": self.window_days,
            "perks": list(level.perks),
            "next": None
            if following is None
            else {
                "name": following.name,
                "gap": round(max(self.thresholds[position + 1] - spend, 0.0), 2),
            },
        }
