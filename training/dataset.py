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
    # customers x items: summed time-decayed, trust-weighted purchase lines of every item
    # the customer holds (see ``build_dataset``).
    interactions: sp.csr_matrix
    # customers x items: the net quantity of every item the customer holds.
    held: sp.csr_matrix
    # customers x items: what the customer holds, plus every item grouped with one of those
    # (editions of one work); never recommended to them.
    owned: sp.csr_matrix
    item_group: NDArray[np.int32]  # items with the same value are one work
    spend: NDArray[np.float64]  # per customer, in the shop currency, after cancellations
    orders: NDArray[np.int32]  # per customer, distinct orders with a purchase
    titles: NDArray[np.str_]
    prices: NDArray[np.float64]
    popularity: NDArray[np.float64]  # sales decayed with the model's half-life
    trending: NDArray[np.float64]  # sales decayed with the (shorter) trend half-life
    as_of: pd.Timestamp | None


def build_dataset(
    events: pd.DataFrame,
    half_life_days: float,
    trend_half_life_days: float,
    item_groups: dict[str, str] | None = None,
) -> TrainingData:
    """``events`` are merged rows (see ``training.merge.MergedHistory``).

    A customer holds an item when its net quantity is above zero in the merged history *or*
    in any one source's own records. Sources can disagree: a purchase made in one system and
    cancelled in another nets to zero when merged, yet the first system still lists it.
    Ownership wins: a missed suggestion costs less than offering what the customer may own.
    ``item_groups`` (catalog item -> group) extends ownership to every item of a held group.
    """
    sales = events.loc[
        (events["quantity"] > 0) & events["outcome"].isin(["used", "anonymous"]),
        ["item_id", "description", "unit_price", "timestamp"],
    ]
    item_ids = np.sort(sales["item_id"].unique()).astype(str)
    item_index = pd.Index(item_ids)
    as_of = events["timestamp"].max()
    as_of = None if pd.isna(as_of) else pd.Timestamp(as_of)
    weight = pd.Series(decay_weights(events["timestamp"], as_of, half_life_days), events.index)

    held = _held(events, item_index, weight * events["trust"].astype(np.float64))
    known = events["customer_id"].cat.categories
    customer_ids = np.sort(known[np.unique(held["customer"])].to_numpy()).astype(str)
    rows = pd.Index(customer_ids).get_indexer(known)[held["customer"].to_numpy()]
    items = held["item"].to_numpy()
    shape = (len(customer_ids), len(item_ids))
    interactions = sp.csr_matrix((held["weight"].to_numpy(dtype=np.float32), (rows, items)), shape)
    interactions.sort_indices()
    held_quantity = sp.csr_matrix(
        (held["quantity"].to_numpy(dtype=np.float32), (rows, items)), shape
    )
    held_quantity.sort_indices()
    item_group = _group_codes(item_ids, item_groups or {})
    owned = _owned(rows, items, item_group, shape)
    spend, orders = _customer_totals(events, pd.Index(customer_ids))

    sold = item_index.get_indexer(pd.Index(sales["item_id"]))
    popularity = np.bincount(sold, weight.loc[sales.index].to_numpy(), len(item_ids))
    trend_weight = decay_weights(sales["timestamp"], as_of, trend_half_life_days)
    trending = np.bincount(sold, trend_weight, len(item_ids))
    titles, prices = _catalog(sales, item_index)
    return TrainingData(
        customer_ids=customer_ids,
        item_ids=item_ids,
        interactions=interactions,
        held=held_quantity,
        owned=owned,
        item_group=item_group,
        spend=spend,
        orders=orders,
        titles=titles,
        prices=prices,
        popularity=popularity.astype(np.float64),
        trending=trending.astype(np.float64),
        as_of=as_of,
    )


def _held(events: pd.DataFrame, item_index: pd.Index, weight: pd.Series) -> pd.DataFrame:
    """One row per (customer, item) the customer holds, with its summed decayed weight;
    ``customer`` is the code of ``events["customer_id"]``."""
    # Duplicates are decided before anonymity, so anonymous copies keep that outcome too.
    personal = events.loc[
        events["outcome"].isin(["used", "cancellation", "duplicate"])
        & events["item_id"].isin(item_index)
        & (events["customer_id"] != ""),
        ["customer_id", "item_id", "source", "quantity", "outcome"],
    ]
    customer = personal["customer_id"].cat.codes.to_numpy().astype(np.int64)
    item = item_index.get_indexer(pd.Index(personal["item_id"]))
    quantity = personal["quantity"].to_numpy()
    # One integer per (customer, item); sorted, so the result is in (customer, item) order.
    pair, pairs = pd.factorize(customer * len(item_index) + item, sort=True)
    merged = np.bincount(pair, np.where(personal["outcome"] == "duplicate", 0.0, quantity))
    weights = np.where(personal["outcome"] == "used", weight.loc[personal.index], 0.0)
    # The most any one source lists (a source with no line for the pair does not count).
    best_source = np.full(len(pairs), -np.inf)
    source = personal["source"].cat.codes.to_numpy()
    for code in np.unique(source):
        mine = source == code
        listed = np.bincount(pair[mine], minlength=len(pairs)) > 0
        total = np.bincount(pair[mine], quantity[mine], minlength=len(pairs))
        best_source = np.where(listed, np.maximum(best_source, total), best_source)
    epsilon = 1e-9  # quantities may be fractional; sums of them are not exact
    held = (merged > epsilon) | (best_source > epsilon)
    pairs = pairs[held]
    return pd.DataFrame(
        {
            "customer": pairs // len(item_index),
            "item": pairs % len(item_index),
            "weight": np.bincount(pair, weights, len(held))[held],
            "quantity": np.maximum(merged, best_source)[held],
        }
    )


def _customer_totals(
    events: pd.DataFrame, customers: pd.Index
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Spend (purchases minus cancellations; unknown prices count 0) and distinct orders."""
    personal = events[events["outcome"].isin(["used", "cancellation"])]
    rows = customers.get_indexer(pd.Index(personal["customer_id"]))
    known = rows >= 0
    amount = (personal["quantity"] * personal["unit_price"].fillna(0.0)).to_numpy()
    spend = np.bincount(rows[known], amount[known], len(customers))
    bought = known & (personal["outcome"] == "used").to_numpy()
    orders = pd.DataFrame(
        {"row": rows[bought], "order": personal["order"].to_numpy()[bought]}
    ).drop_duplicates()
    order_counts = np.bincount(orders["row"], minlength=len(customers)).astype(np.int32)
    return spend.astype(np.float64), order_counts


def _group_codes(item_ids: NDArray[np.str_], item_groups: dict[str, str]) -> NDArray[np.int32]:
    """One code per work: grouped items share their group's code, others get their own."""
    labels = [
        f"group:{item_groups[item]}" if item in item_groups else f"item:{item}"
        for item in item_ids.tolist()
    ]
    codes, _ = pd.factorize(pd.Index(labels))
    return codes.astype(np.int32)


def _owned(
    rows: NDArray[np.intp],
    items: NDArray[np.intp],
    item_group: NDArray[np.int32],
    shape: tuple[int, int],
) -> sp.csr_matrix:
    pairs = pd.DataFrame({"row": rows, "item": items})
    group_sizes = np.bincount(item_group)
    if (group_sizes > 1).any():
        grouped = np.flatnonzero(group_sizes[item_group] > 1)
        members = pd.DataFrame({"group": item_group[grouped], "member": grouped})
        expanded = pairs.assign(group=item_group[items]).merge(members, on="group")
        pairs = pd.concat(
            [pairs, expanded[["row", "member"]].rename(columns={"member": "item"})]
        ).drop_duplicates()
    owned = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (pairs["row"], pairs["item"])), shape
    )
    owned.sort_indices()
    return owned


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
    described = sales.loc[sales["description"] != "", ["item_id", "description"]]
    counts = described.groupby(["item_id", "description"], sort=True).size().reset_index(name="n")
    best = counts.sort_values(["item_id", "n"], ascending=[True, False], kind="stable")
    best = best.drop_duplicates("item_id")
    titles = pd.Series(item_index.to_numpy(), index=item_index, dtype=object)
    titles.loc[best["item_id"].to_numpy()] = best["description"].to_numpy()

    priced = sales.loc[sales["unit_price"] > 0, ["item_id", "unit_price", "timestamp"]]
    priced = priced.sort_values("timestamp", kind="stable")
    latest = priced.drop_duplicates("item_id", keep="last")
    prices = pd.Series(np.nan, index=item_index)
    prices.loc[latest["item_id"].to_numpy()] = latest["unit_price"].to_numpy()
    return titles.to_numpy().astype(np.str_), prices.to_numpy().astype(np.float64)
