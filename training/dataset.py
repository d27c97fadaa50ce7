"""From a merged history to what a model trains on and the service needs: index maps,
decayed interaction weights, owned items, catalog metadata and popularity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray


@dataclass(frozen=True)
class TrainingData:
    customer_ids: NDArray[np.str_]
    item_ids: NDArray[np.str_]
    # customers x items, summed time-decayed purchase lines, only where the customer still
    # holds the item; its sparsity pattern is exactly the owned set.
    interactions: sp.csr_matrix
    titles: NDArray[np.str_]
    prices: NDArray[np.float64]
    popularity: NDArray[np.float64]
    as_of: pd.Timestamp | None

    @property
    def owned(self) -> sp.csr_matrix:
        return self.interactions


def build_dataset(events: pd.DataFrame, half_life_days: float) -> TrainingData:
    """``events`` are merged rows with outcome used, cancellation or anonymous."""
    sales = events[events["quantity"] > 0]
    item_ids = np.sort(sales["item_id"].unique()).astype(str)
    item_index = pd.Index(item_ids)
    as_of = events["timestamp"].max()
    as_of = None if pd.isna(as_of) else pd.Timestamp(as_of)
    weight = pd.Series(decay_weights(events["timestamp"], as_of, half_life_days), events.index)

    personal = events[(events["outcome"] != "anonymous") & events["item_id"].isin(item_index)]
    pairs = (
        pd.DataFrame(
            {
                "customer_id": personal["customer_id"].to_numpy(),
                "item": item_index.get_indexer(personal["item_id"]),
                "quantity": personal["quantity"].to_numpy(),
                "weight": np.where(personal["quantity"] > 0, weight.loc[personal.index], 0.0),
            }
        )
        .groupby(["customer_id", "item"], sort=True)
        .agg(quantity=("quantity", "sum"), weight=("weight", "sum"))
    )
    held = pairs[pairs["quantity"] > 1e-9].reset_index()
    customer_ids = np.sort(held["customer_id"].unique()).astype(str)
    rows = pd.Index(customer_ids).get_indexer(held["customer_id"])
    interactions = sp.csr_matrix(
        (held["weight"].to_numpy(dtype=np.float32), (rows, held["item"].to_numpy())),
        shape=(len(customer_ids), len(item_ids)),
    )
    interactions.sort_indices()

    popularity = np.bincount(
        item_index.get_indexer(sales["item_id"]),
        weights=weight.loc[sales.index].to_numpy(),
        minlength=len(item_ids),
    ).astype(np.float64)
    titles, prices = _catalog(sales, item_index)
    return TrainingData(
        customer_ids=customer_ids,
        item_ids=item_ids,
        interactions=interactions,
        titles=titles,
        prices=prices,
        popularity=popularity,
        as_of=as_of,
    )


def decay_weights(
    timestamps: pd.Series, as_of: pd.Timestamp | None, half_life_days: float
) -> NDArray[np.float64]:
    """0.5 ** (age / half-life); rows without a timestamp weigh 1."""
    if as_of is None:
        return np.ones(len(timestamps))
    age_days = (as_of - timestamps).dt.total_seconds().to_numpy() / 86400.0
    weights = np.power(0.5, np.clip(age_days, 0.0, None) / half_life_days)
    return np.where(np.isnan(weights), 1.0, weights)


def _catalog(
    sales: pd.DataFrame, item_index: pd.Index
) -> tuple[NDArray[np.str_], NDArray[np.float64]]:
    """Title: the item's most frequent non-empty description. Price: its latest positive price."""
    described = sales[sales["description"] != ""]
    counts = described.groupby(["item_id", "description"], sort=True).size().reset_index(name="n")
    best = counts.sort_values(["item_id", "n"], ascending=[True, False], kind="stable")
    best = best.drop_duplicates("item_id")
    titles = pd.Series(item_index.to_numpy(), index=item_index, dtype=object)
    titles.loc[best["item_id"].to_numpy()] = best["description"].to_numpy()

    priced = sales[sales["unit_price"] > 0].sort_values("timestamp", kind="stable")
    latest = priced.drop_duplicates("item_id", keep="last")
    prices = pd.Series(np.nan, index=item_index)
    prices.loc[latest["item_id"].to_numpy()] = latest["unit_price"].to_numpy()
    return titles.to_numpy().astype(np.str_), prices.to_numpy().astype(np.float64)
