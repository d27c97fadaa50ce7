"""Best sellers per segment (country, tier), for customers the model does not know.

A segment's list ranks the items sold in it by sales decayed with the model's half-life, as
the overall list does. A segment with fewer than ``MIN_CUSTOMERS`` customers gets no list:
its best sellers would tell what one or two people bought. Three is the floor, not a
quality bar: the sample's second-largest country (Germany) has six customers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.bundle import SEGMENTS
from training.dataset import decay_weights, outcome_is, positions

MIN_CUSTOMERS = 3


@dataclass(frozen=True)
class Sales:
    """Every counted sale: its item (column), customer (row; -1 anonymous), country (a
    position in ``country_names``; -1 unknown) and decayed weight. Counted while the merged
    rows, the matrix and each customer's lines are all held (the trainer's peak at 20 M
    purchases), so in the narrowest integers: the countries' codes as the merge keeps them."""

    items: NDArray[np.int32]
    rows: NDArray[np.int32]
    countries: NDArray[np.integer]
    weights: NDArray[np.float64]
    country_names: NDArray[np.str_]


def sales_of(
    events: pd.DataFrame,
    item_ids: NDArray[np.str_],
    customer_ids: NDArray[np.str_],
    as_of: pd.Timestamp | None,
    half_life_days: float,
) -> Sales:
    """The sales of merged ``events`` (see ``training.merge``) that popularity counts."""
    is_sale = (events["quantity"].to_numpy() > 0) & outcome_is(events, "used", "anonymous")
    items = positions(events["item_id"], pd.Index(item_ids))
    is_sale &= items >= 0
    sales = np.flatnonzero(is_sale)
    del is_sale
    # The weights first, while little else is held: their temporaries are the largest.
    weights = decay_weights(events["timestamp"].to_numpy()[sales], as_of, half_life_days)
    items = items[sales]
    # An anonymous sale's customer ("") is none of ``customer_ids``: -1.
    rows = positions(events["customer_id"], pd.Index(customer_ids))[sales]
    country = events["country"]
    names = country.cat.categories.astype(str).to_numpy()
    countries = country.cat.codes.to_numpy()[sales]
    return Sales(items, rows, countries, weights, names)


def segment_arrays(
    sales: Sales, n_items: int, customer_tiers: NDArray[np.intp], tier_names: list[str]
) -> dict[str, NDArray[Any]]:
    """The bundle's segment arrays (``recsvc.bundle.SEGMENTS``): a list per country with
    sales, then per tier (customers by their tier at training)."""
    return SegmentSales.of(sales, n_items, customer_tiers, tier_names).arrays()


@dataclass(frozen=True)
class SegmentSales:
    """Per segment (each country, then each tier), how many customers bought in it and each
    item's decayed sales in it. Made from the sales of any range of customers (anonymous
    sales in any range) and summed over the ranges (``combined``) to what all the sales
    make."""

    names: list[str]  # "country:<name>" ascending, then "tier:<name>" in tier order
    customers: NDArray[np.int64]
    popularity: sp.csr_matrix  # segments x items: the items sold in each

    @classmethod
    def of(
        cls,
        sales: Sales,
        n_items: int,
        customer_tiers: NDArray[np.intp],
        tier_names: list[str],
    ) -> SegmentSales:
        """``customer_tiers``: the tier of each customer ``sales.rows`` counts."""
        known = sales.rows >= 0
        tiers = np.full(len(sales.rows), -1, dtype=np.int16)
        tiers[known] = customer_tiers.astype(np.int16)[sales.rows[known]]
        countries = sales.country_names.tolist()
        # One segment's mask at a time: each is a byte per sale.
        segments: Iterator[tuple[str, NDArray[np.bool_]]] = itertools.chain(
            (
                (f"country:{countries[code]}", sales.countries == code)
                for code in sorted(range(len(countries)), key=countries.__getitem__)
                if countries[code]
            ),
            ((f"tier:{name}", tiers == index) for index, name in enumerate(tier_names)),
        )
        names: list[str] = []
        customers: list[int] = []
        indptr, items, scores = [0], [np.zeros(0, np.intp)], [np.zeros(0)]
        for name, chosen in segments:
            names.append(name)
            customers.append(int(np.count_nonzero(np.bincount(sales.rows[chosen & known]))))
            popularity = np.bincount(sales.items[chosen], sales.weights[chosen], n_items)
            sold = np.flatnonzero(popularity > 0)
            items.append(sold)
            scores.append(popularity[sold].astype(np.float64, copy=False))
            indptr.append(indptr[-1] + len(sold))
        matrix = sp.csr_matrix(
            (np.concatenate(scores), np.concatenate(items), np.array(indptr, dtype=np.int64)),
            shape=(len(names), n_items),
        )
        return cls(names, np.array(customers, dtype=np.int64), matrix)

    @classmethod
    def combined(cls, parts: list[SegmentSales]) -> SegmentSales:
        """What ``of`` makes of the parts' sales together (each part's tiers the same)."""
        tiers = [name for name in parts[0].names if name.startswith("tier:")]
        countries = {name for part in parts for name in part.names if name.startswith("country:")}
        names = [*sorted(countries), *tiers]
        at = {name: position for position, name in enumerate(names)}
        customers = np.zeros(len(names), dtype=np.int64)
        popularity = sp.csr_matrix((len(names), parts[0].popularity.shape[1]))
        for part in parts:
            rows = np.array([at[name] for name in part.names], dtype=np.intp)
            customers[rows] += part.customers
            placed = part.popularity.tocoo()
            popularity = popularity + sp.csr_matrix(
                (placed.data, (rows[placed.row], placed.col)), shape=popularity.shape
            )
        return cls(names, customers, popularity)

    def arrays(self) -> dict[str, NDArray[Any]]:
        """The bundle's segment arrays: a list for each segment with ``MIN_CUSTOMERS``."""
        names: list[str] = []
        indptr = [0]
        items: list[NDArray[np.intp]] = []
        scores: list[NDArray[np.float64]] = []
        matrix = self.popularity
        for row, (name, customers) in enumerate(zip(self.names, self.customers, strict=True)):
            if customers < MIN_CUSTOMERS:
                continue
            start, end = matrix.indptr[row], matrix.indptr[row + 1]
            sold, popularity = matrix.indices[start:end], matrix.data[start:end]
            order = np.lexsort((sold, -popularity))
            names.append(name)
            items.append(sold[order])
            scores.append(popularity[order])
            indptr.append(indptr[-1] + len(order))
        arrays: dict[str, NDArray[Any]] = {
            "segment_names": np.array(names, dtype=str),
            "segment_indptr": np.array(indptr, dtype=np.int64),
            "segment_items": np.concatenate([np.zeros(0, np.intp), *items]).astype(np.int32),
            "segment_scores": np.concatenate([np.zeros(0), *scores]).astype(np.float32),
        }
        assert tuple(arrays) == SEGMENTS
        return arrays
