"""What a list endpoint's caller may narrow the items to: a category and a price band.

Exact: with a price bound, an item whose price is unknown is left out, since nobody can say
it lies in the band. The bounds are checked here, so every caller (a view, ``export-picks``)
gets the same InvalidParameter for a band that cannot hold anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recsvc import channels
from recsvc.catalog import ServedCatalog
from recsvc.errors import InvalidParameter
from recsvc.registry import ServedModel


@dataclass(frozen=True, slots=True)
class ItemFilter:
    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def __post_init__(self) -> None:
        for name, bound in (("min_price", self.min_price), ("max_price", self.max_price)):
            if bound is not None and not (math.isfinite(bound) and bound >= 0):
                raise InvalidParameter(name, f"must be a number from 0 up, got {bound!r}")
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and low > high:
            raise InvalidParameter("min_price", f"must not exceed max_price ({low} > {high})")

    @property
    def priced(self) -> bool:
        return self.min_price is not None or self.max_price is not None

    def mask(
        self, model: ServedModel, catalog: ServedCatalog | None = None
    ) -> NDArray[np.bool_] | None:
        """The items the filter lets through, at ``catalog``'s prices (None: the bundle's);
        None when it lets every item through. UnknownCategory for a category the catalog
        does not have."""
        mask = None if self.category is None else channels.category_mask(model, self.category)
        if not self.priced:
            return mask
        # NaN where unknown: every comparison is False
        prices = model.ranker.arrays.prices if catalog is None else catalog.price_values
        in_band = np.isfinite(prices)
        if self.min_price is not None:
            in_band &= prices >= self.min_price
        if self.max_price is not None:
            in_band &= prices <= self.max_price
        return in_band if mask is None else mask & in_band

    def key(self) -> str:
        """The filter as text (empty for none), for keys of answers kept per filter."""
        if self == NO_FILTER:
            return ""
        category = (self.category or "").strip().lower()
        return f"{category}\0{self.min_price}\0{self.max_price}"


NO_FILTER = ItemFilter()
