"""Value tiers as the service applies them: the table the trainer resolved into the bundle's
manifest, applied to spend that keeps growing as events arrive."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_LEVELS = [{"name": "standard", "min_spend": 0.0, "perks": [], "premium_boost": 0.0}]


def tier_indices(levels: list[dict[str, Any]], spend: NDArray[np.float64]) -> NDArray[np.intp]:
    """The tier of each spend: the last level whose min_spend it reaches."""
    thresholds = np.array([float(level["min_spend"]) for level in levels])
    indices: NDArray[np.intp] = (np.searchsorted(thresholds, spend, side="right") - 1).clip(0)
    return indices


@dataclass(frozen=True)
class TierTable:
    window_days: float
    levels: list[dict[str, Any]]  # ascending: name, min_spend, perks, premium_boost
    price_affinity: float = 0.0
    thresholds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        minimums = tuple(float(level["min_spend"]) for level in self.levels)
        object.__setattr__(self, "thresholds", minimums)

    @classmethod
    def from_manifest(cls, tiers: dict[str, Any] | None) -> TierTable:
        if not tiers:
            return cls(365.0, DEFAULT_LEVELS)
        return cls(
            float(tiers["window_days"]),
            list(tiers["levels"]),
            float(tiers.get("price_affinity") or 0.0),
        )

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
            "name": level["name"],
            "spend": round(spend, 2),
            "window_days": self.window_days,
            "perks": list(level["perks"]),
            "next": None
            if following is None
            else {
                "name": following["name"],
                "gap": round(max(self.thresholds[position + 1] - spend, 0.0), 2),
            },
        }
