"""From a merged history to what a model trains on and the service needs: index maps,
decayed interaction weights, owned items, catalog metadata and popularity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.bundle import OWNED_QUANTITY
from training.interactions import InteractionWeights, records_frame, weigh

_LATEST_LINES = 1 << 20  # see _latest


@dataclass(frozen=True)
class TrainingData:
    customer_ids: NDArray[np.str_]
    item_ids: NDArray[np.str_]
    # customers x items: summed time-decayed, trust-weighted purchase lines of every item
    # the customer holds (see ``build_dataset``); lines up with ``held``.
    interactions: sp.csr_matrix
    # customers x items: the net quantity of every item the customer holds.
    held: sp.csr_matrix
    # Along ``held.data``: the source (a code of ``source_names``) of the customer's latest
    # purchase of the item, -1 when no purchase line of it is dated or used.
    held_source: NDArray[np.int16]
    source_names: NDArray[np.str_]
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
    settlement: Settlement  # returns bounded by the purchases they return
    # customers x items: what ALS and the item-item model learn from: ``interactions`` plus
    # the weighted views, carts and clicks (``training.interactions``); ``interactions``
    # itself when none is used. Never what is owned.
    feedback: sp.csr_matrix
    # Along the merged interaction records: each one's outcome (training.interactions.OUTCOMES).
    # Empty where Spark's ranges built the dataset: they count the outcomes themselves
    # (``training.spark_dataset.SparkDataset.interactions``).
    interaction_outcome: NDArray[np.int8]


def build_dataset(
    events: pd.DataFrame,
    half_life_days: float,
    trend_half_life_days: float,
    item_groups: dict[str, str] | None = None,
    interaction_records: pd.DataFrame | None = None,
    weights: InteractionWeights | None = None,
    items: ItemSales | None = None,
) -> TrainingData:
    """``events`` are merged rows (see ``training.merge.MergedHistory``), and
    ``interaction_records`` its interactions, added to ``feedback`` with ``weights`` (none:
    all 0). ``items``: the item side of a larger history that ``events`` and
    ``interaction_records`` are a part of (every row of some customers): the customers'
    rows come out as in that history's (default: the item side of ``events``).

    A customer holds an item when its net quantity is at least ``OWNED_QUANTITY`` in the
    merged history *or* in any one source's own records (returns bounded, see
    ``settle_returns``). Sources can disagree: a purchase made in one system and
    cancelled in another nets to zero when merged, yet the first system still lists it.
    Ownership wins: a missed suggestion costs less than offering what the customer may own.
    ``item_groups`` (catalog item -> group) extends ownership to every item of a held group.
    """
    if items is None:
        latest = events["timestamp"].max()
        as_of = None if pd.isna(latest) else pd.Timestamp(latest)
        items = ItemSales.of(events, as_of, half_life_days, trend_half_life_days)
    as_of = items.as_of
    item_ids = items.item_ids
    item_index = pd.Index(item_ids)
    item = positions(events["item_id"], item_index)
    quantity = events["quantity"].to_numpy()

    settlement = settle_returns(events)
    quantity = settlement.quantities(quantity)
    # Duplicates are decided before anonymity, so anonymous copies keep that outcome too.
    personal = np.flatnonzero(
        outcome_is(events, "used", "cancellation", "duplicate")
        & (item >= 0)
        & ~value_is(events["customer_id"], "")
    )
    held = _held(events, personal, item, quantity, as_of, half_life_days, len(item_ids))
    del personal
    known = events["customer_id"].cat.categories
    customer_ids = np.sort(known[present(held.customer, len(known))].to_numpy()).astype(str)
    rows = pd.Index(customer_ids).get_indexer(known).astype(np.int32)[held.customer]
    shape = (len(customer_ids), len(item_ids))
    interactions = sp.csr_matrix((held.weight.astype(np.float32), (rows, held.item)), shape)
    interactions.sort_indices()
    held_quantity = sp.csr_matrix((held.quantity.astype(np.float32), (rows, held.item)), shape)
    held_quantity.sort_indices()
    # Entries are in (row, item) order, as in both matrices: they line up one to one.
    order = np.lexsort((held.item, rows))
    assert len(order) == held_quantity.nnz == interactions.nnz
    held_source = held.source[order]
    del order
    item_group = group_codes(item_ids, item_groups or {})
    owned = _owned(rows, held.item, item_group, shape)
    del held, rows
    spend, orders = _customer_totals(events, quantity, pd.Index(customer_ids))
    del quantity, item
    logged = records_frame([]) if interaction_records is None else interaction_records
    weighed = weigh(
        logged,
        pd.Index(customer_ids),
        item_index,
        weights or InteractionWeights(),
        decay_weights(logged["timestamp"].to_numpy(), as_of, half_life_days),
    )
    feedback = interactions if weighed.cells is None else (interactions + weighed.cells)
    feedback.sort_indices()
    return TrainingData(
        customer_ids=customer_ids,
        item_ids=item_ids,
        interactions=interactions,
        held=held_quantity,
        held_source=held_source,
        source_names=events["source"].cat.categories.to_numpy().astype(str),
        owned=owned,
        item_group=item_group,
        spend=spend,
        orders=orders,
        titles=items.titles(),
        prices=items.prices(),
        popularity=items.popularity,
        trending=items.trending,
        as_of=as_of,
        settlement=settlement,
        feedback=feedback,
        interaction_outcome=weighed.outcome,
    )


@dataclass(frozen=True)
class Settlement:
    """Each customer's returns bounded by what they returned. Along time, per (customer,
    item), a return takes the net quantity down to zero at most (the rest is clamped), and is
    charged to the date of the latest earlier purchase of the item (the tier window of what
    it returns); a return with no earlier purchase is unmatched and counts nothing. Only the
    rows of (customer, item) pairs with a return change: ``rows`` (positions in the events)
    with their bounded ``quantity`` and ``charged_at``."""

    rows: NDArray[np.intp]
    quantity: NDArray[np.float64]
    charged_at: NDArray[np.datetime64]
    report: dict[str, float]

    def quantities(self, quantity: NDArray[np.float64]) -> NDArray[np.float64]:
        """The events' quantities with returns bounded."""
        if not len(self.rows):
            return quantity
        bounded = quantity.copy()
        bounded[self.rows] = self.quantity
        return bounded

    def along(self, lines: NDArray[np.intp]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The rows with a return among ``lines`` (ascending positions in the events): where
        each is in ``lines``, and in ``rows``."""
        if not len(lines):
            return np.zeros(0, np.intp), np.zeros(0, np.intp)
        at = np.searchsorted(lines, self.rows).clip(max=len(lines) - 1)
        found = np.flatnonzero(lines[at] == self.rows)
        return at[found], found


def settle_returns(events: pd.DataFrame) -> Settlement:
    """The customers' purchase (used) and return (cancellation) lines, settled; see
    ``Settlement``. Only the pairs with a return are sorted, so the cost follows the returns.

    The running net quantity floored at zero is ``C - min(0, running min of C)``, with ``C``
    the plain running sum: each line's bounded quantity is the step of that."""
    lines = outcome_is(events, "used", "cancellation") & ~value_is(events["customer_id"], "")
    quantity = events["quantity"].to_numpy()
    is_return = lines & (quantity < 0)
    empty = np.zeros(0, dtype=np.intp)
    report: dict[str, float] = {"returns": int(is_return.sum()), "charged_to_purchase_date": 0}
    report |= {"unmatched": 0, "clamped": 0, "clamped_quantity": 0.0}
    if not is_return.any():
        return Settlement(empty, np.zeros(0), np.zeros(0, "datetime64[us]"), report)
    items = events["item_id"].cat.codes.to_numpy().astype(np.int64)
    customers = events["customer_id"].cat.codes.to_numpy().astype(np.int64)
    pair = customers * (int(items.max()) + 1) + items
    rows = np.flatnonzero(lines & np.isin(pair, pair[is_return]))
    when = events["timestamp"].to_numpy()[rows].astype("datetime64[us]")
    # Per pair, in time order (no timestamp first), a purchase before a return at one time.
    order = np.lexsort((rows, is_return[rows], when.view(np.int64), pair[rows]))
    rows, when = rows[order], when[order]
    group = np.cumsum(run_starts(pair[rows])) - 1
    raw = quantity[rows]
    running = pd.Series(raw).groupby(group).cumsum().to_numpy()
    floor = np.minimum(pd.Series(running).groupby(group).cummin().to_numpy(), 0.0)
    net = running - floor
    previous = np.concatenate([[0.0], net[:-1]])
    previous[run_starts(group)] = 0.0
    bounded = net - previous
    returned = is_return[rows]
    bounded[~returned] = raw[~returned]  # a purchase is what it was
    # The latest purchase at or before each line, within its pair.
    position = np.arange(len(rows))
    latest = np.maximum.accumulate(np.where(returned, -1, position))
    start = np.maximum.accumulate(np.where(run_starts(group), position, 0))
    matched = returned & (latest >= start)
    charged_at = when.copy()
    charged_at[matched] = when[latest[matched]]
    clamped = returned & (bounded > raw + 1e-9)
    report["charged_to_purchase_date"] = int(matched.sum())
    report["unmatched"] = int((returned & ~matched).sum())
    report["clamped"] = int(clamped.sum())
    report["clamped_quantity"] = round(float((bounded - raw)[clamped].sum()), 4)
    return Settlement(rows, bounded, charged_at, report)


def outcome_is(events: pd.DataFrame, *outcomes: str) -> NDArray[np.bool_]:
    """Rows whose outcome is one of ``outcomes``."""
    return value_is(events["outcome"], *outcomes)


def value_is(column: pd.Series, *values: str) -> NDArray[np.bool_]:
    """Rows of a categorical column equal to one of ``values``, compared by code."""
    codes = column.cat.categories.get_indexer(pd.Index(values))
    return np.isin(column.cat.codes.to_numpy(), codes[codes >= 0])


def positions(column: pd.Series, index: pd.Index) -> NDArray[np.int32]:
    """Each row's position in ``index`` (-1 where absent) for a categorical column, looked
    up once per category instead of once per row."""
    lookup = np.append(index.get_indexer(column.cat.categories), -1)  # code -1 is a NaN
    found: NDArray[np.int32] = lookup.astype(np.int32)[column.cat.codes.to_numpy()]
    return found


@dataclass(frozen=True)
class _Held:
    """One entry per (customer, item) the customer holds, in (customer, item) order;
    ``customer`` is a code of the events' ``customer_id``."""

    customer: NDArray[np.int32]
    item: NDArray[np.int32]
    weight: NDArray[np.float64]  # summed decayed weight of the purchases
    quantity: NDArray[np.float64]
    source: NDArray[np.int16]  # of the latest purchase line (-1: none)


def _held(
    events: pd.DataFrame,
    lines: NDArray[np.intp],
    item: NDArray[np.int32],
    quantity: NDArray[np.float64],
    as_of: pd.Timestamp | None,
    half_life_days: float,
    n_items: int,
) -> _Held:
    """What each customer holds, from their purchase, cancellation and duplicate ``lines``
    (positions in ``events``; ``item`` and ``quantity`` are along the events), with the
    purchases' weights decayed to ``as_of``.

    Memory, not speed, bounds this at 20 M purchases: the lines are sorted by (customer,
    item) once, each per-line column is taken in that order when it is needed and dropped
    after, and the sums run in the order the lines were read, as before the sort."""
    key = combined_keys(events["customer_id"].cat.codes.to_numpy()[lines], n_items, item[lines])
    order = stable_order(key, len(events["customer_id"].cat.categories) * n_items)
    key = key[order]
    lines = lines[order]
    del order
    first = run_starts(key)
    pairs = key[first]
    del key
    pair = np.cumsum(first) - 1  # each line's (customer, item), ascending
    del first
    count = len(pairs)
    line_quantity = quantity[lines]
    duplicate = outcome_is(events, "duplicate")[lines]
    merged = np.bincount(pair, np.where(duplicate, 0.0, line_quantity), count)
    del duplicate
    # The most any one source lists (a source with no line for the pair does not count).
    source = events["source"].cat.codes.to_numpy()[lines]
    best_source = np.full(count, -np.inf)
    for code in np.unique(source):
        mine = source == code
        listed = np.bincount(pair[mine], minlength=count) > 0
        total = np.bincount(pair[mine], line_quantity[mine], minlength=count)
        best_source[listed] = np.maximum(best_source[listed], total[listed])
        del mine, listed, total
    held = (merged >= OWNED_QUANTITY) | (best_source >= OWNED_QUANTITY)
    held_quantity = np.maximum(merged, best_source)[held]
    del merged, best_source
    used = outcome_is(events, "used")[lines]
    line_weight = decay_weights(events["timestamp"].to_numpy()[lines], as_of, half_life_days)
    line_weight *= events["trust"].to_numpy()[lines]
    line_weight[~used] = 0.0
    held_weight = np.bincount(pair, line_weight, count)[held].astype(np.float64, copy=False)
    del line_weight
    # The source of each pair's latest purchase: the last of its dated purchase lines (the
    # latest time, then the last read; an undated line is earlier than any dated one).
    bought = used & (line_quantity > 0)
    del used, line_quantity
    latest = _latest(pair, lines, bought, events["timestamp"].to_numpy(), source, count)
    del pair, bought
    pairs = pairs[held]
    return _Held(
        customer=(pairs // n_items).astype(np.int32),
        item=(pairs % n_items).astype(np.int32),
        weight=held_weight,
        quantity=held_quantity,
        source=latest[held],
    )


def _latest(
    pair: NDArray[np.intp],
    lines: NDArray[np.intp],
    bought: NDArray[np.bool_],
    timestamps: NDArray[np.datetime64],
    source: NDArray[np.integer],
    count: int,
) -> NDArray[np.int16]:
    """Per pair (``count`` of them), the ``source`` of its ``bought`` line with the latest
    of ``timestamps``, then the last (-1: none). ``pair``, ``bought`` and ``source`` are
    along ``lines`` (positions in the events), ``pair`` ascending. Whole pairs about
    ``_LATEST_LINES`` lines at a time: at 20 M purchases the temporaries over every line
    were the matrix step's peak."""
    latest = np.full(count, -1, dtype=np.int16)
    begin = 0
    while begin < len(pair):
        end = min(begin + _LATEST_LINES, len(pair))
        if end < len(pair):  # whole pairs: back to the start of the pair at ``end``...
            start_of_pair = int(np.searchsorted(pair, pair[end]))
            # ...or on to its end where it began at ``begin``
            right = int(np.searchsorted(pair, pair[end], side="right"))
            end = start_of_pair if start_of_pair > begin else right
        chosen = begin + np.flatnonzero(bought[begin:end])
        begin = end
        if not len(chosen):
            continue
        part = pair[chosen]
        when = timestamps[lines[chosen]].view(np.int64)  # NaT: the smallest
        starts = np.flatnonzero(run_starts(part))
        sizes = np.diff(np.append(starts, len(part)))
        # 0 at each pair's latest lines (an undated line under a dated latest wraps around,
        # never to 0); the last of them is the one.
        when -= np.repeat(np.maximum.reduceat(when, starts), sizes)
        at_latest = np.flatnonzero(when == 0)
        pairs = part[at_latest]
        last = chosen[at_latest[np.append(pairs[1:] != pairs[:-1], True)]]
        latest[pair[last]] = source[last]
    return latest


def _customer_totals(
    events: pd.DataFrame, quantity: NDArray[np.float64], customers: pd.Index
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Spend (purchases minus bounded returns, never below zero; unknown prices count 0) and
    distinct orders."""
    rows = positions(events["customer_id"], customers)
    known = (rows >= 0) & outcome_is(events, "used", "cancellation")
    price = events["unit_price"].to_numpy()[known]
    amount = quantity[known]
    amount *= np.where(np.isnan(price), 0.0, price)
    del price
    # A return refunded at more than the purchase price cannot make the spend negative.
    spend = np.maximum(np.bincount(rows[known], amount, len(customers)), 0.0)
    del amount
    bought = known & outcome_is(events, "used")
    del known
    orders = events["order"].to_numpy()
    span = int(orders.max(initial=0)) + 1
    distinct = distinct_sorted(combined_keys(rows[bought], span, orders[bought]))
    order_counts = np.bincount(distinct // span, minlength=len(customers)).astype(np.int32)
    return spend.astype(np.float64), order_counts


def group_codes(item_ids: NDArray[np.str_], item_groups: dict[str, str]) -> NDArray[np.int32]:
    """One code per work: grouped items share their group's code, others get their own."""
    labels = [
        f"group:{item_groups[item]}" if item in item_groups else f"item:{item}"
        for item in item_ids.tolist()
    ]
    codes, _ = pd.factorize(pd.Index(labels))
    return codes.astype(np.int32)


def _owned(
    rows: NDArray[np.int32],
    items: NDArray[np.int32],
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
    timestamps: NDArray[np.datetime64], as_of: pd.Timestamp | None, half_life_days: float
) -> NDArray[np.float64]:
    """0.5 ** (age / half-life); rows without a timestamp weigh 1."""
    if as_of is None:
        return np.ones(len(timestamps))
    moments = timestamps.astype("datetime64[us]", copy=False)
    undated = np.isnat(moments)
    age = as_of.to_datetime64().astype("datetime64[us]") - moments
    # In place: one array per line at a time (at 20 M purchases each is 160 MB).
    weights: NDArray[np.float64] = age.view(np.int64).astype(np.float64)
    del age
    weights /= 1e6  # as pandas's total_seconds, then days
    weights /= 86400.0
    np.clip(weights, 0.0, None, out=weights)
    weights /= half_life_days
    np.power(0.5, weights, out=weights)
    weights[undated] = 1.0
    return weights


@dataclass(frozen=True)
class ItemSales:
    """Per item sold, what its catalog entry and popularity are made from. Made from any
    part of the merged rows (``of``, with the whole history's ``as_of``), and parts add up
    (``combined``) to what the whole makes, up to the order of float sums: the item side
    does not need every row in one place."""

    as_of: pd.Timestamp | None  # what the sales are decayed to: the history's latest time
    item_ids: NDArray[np.str_]  # every item with a sale, ascending
    popularity: NDArray[np.float64]  # sales decayed with the model's half-life
    trending: NDArray[np.float64]  # sales decayed with the (shorter) trend half-life
    # Each (item, description) pair of the sales with a description, and how many: the item
    # as its position in ``item_ids``.
    described_item: NDArray[np.int64]
    description: NDArray[np.str_]
    description_count: NDArray[np.int64]
    # Per item, its latest sale with a positive price: when (µs since the epoch; undated
    # counts as the latest), its row in the merged rows (-1: no such sale), the price.
    priced_at: NDArray[np.int64]
    priced_row: NDArray[np.int64]
    price: NDArray[np.float64]

    @classmethod
    def of(
        cls,
        events: pd.DataFrame,
        as_of: pd.Timestamp | None,
        half_life_days: float,
        trend_half_life_days: float,
        rows: NDArray[np.int64] | None = None,
    ) -> ItemSales:
        """``events``: merged rows (``training.merge.MergedHistory``), ``rows`` their
        positions among all the merged rows (default: they are all of them)."""
        quantity = events["quantity"].to_numpy()
        is_sale = (quantity > 0) & outcome_is(events, "used", "anonymous")
        items = events["item_id"]
        codes = items.cat.codes.to_numpy()
        item_ids = np.sort(items.cat.categories[present(codes[is_sale], len(items.cat.categories))])
        item_ids = item_ids.astype(str)
        item = positions(items, pd.Index(item_ids))
        sold = item[is_sale]
        sale_times = events["timestamp"].to_numpy()[is_sale]
        count = len(item_ids)
        popularity = np.bincount(sold, decay_weights(sale_times, as_of, half_life_days), count)
        trend_weight = decay_weights(sale_times, as_of, trend_half_life_days)
        trending = np.bincount(sold, trend_weight, count)
        del trend_weight, sale_times

        descriptions = events["description"]
        description = descriptions.cat.codes.to_numpy()[is_sale].astype(np.int64)
        described = ~value_is(descriptions, "")[is_sale]
        span = len(descriptions.cat.categories) + 1
        pairs, counts = np.unique(
            sold[described] * span + description[described], return_counts=True
        )
        del sold, description, described

        unit_price = events["unit_price"].to_numpy()
        priced = np.flatnonzero(is_sale & (unit_price > 0))
        del is_sale
        price = unit_price[priced]
        times = events["timestamp"].to_numpy()[priced]
        when = times.astype("datetime64[us]").view(np.int64)
        when = np.where(np.isnat(times), np.iinfo(np.int64).max, when)
        del times
        priced_item = item[priced]
        del item
        if rows is not None:
            priced = rows[priced]  # positions among all the merged rows
        priced_at, priced_row, item_price = _latest_prices(priced_item, when, priced, price, count)
        return cls(
            as_of=as_of,
            item_ids=item_ids,
            popularity=popularity.astype(np.float64),
            trending=trending.astype(np.float64),
            described_item=(pairs // span).astype(np.int64),
            description=descriptions.cat.categories.to_numpy()[pairs % span].astype(str),
            description_count=counts.astype(np.int64),
            priced_at=priced_at,
            priced_row=priced_row,
            price=item_price,
        )

    @classmethod
    def combined(cls, parts: list[ItemSales]) -> ItemSales:
        """What ``of`` makes of the parts' rows together (each part made with their
        ``as_of``)."""
        (as_of,) = {part.as_of for part in parts}
        item_ids = np.unique(np.concatenate([part.item_ids for part in parts]).astype(str))
        count = len(item_ids)
        popularity, trending = np.zeros(count), np.zeros(count)
        described: list[NDArray[np.int64]] = []
        for part in parts:
            at = np.searchsorted(item_ids, part.item_ids)
            popularity[at] += part.popularity
            trending[at] += part.trending
            described.append(at[part.described_item])
        totals = (
            pd.DataFrame(
                {
                    "item": np.concatenate(described),
                    "description": np.concatenate([part.description for part in parts]),
                    "count": np.concatenate([part.description_count for part in parts]),
                }
            )
            .groupby(["item", "description"], sort=True)["count"]
            .sum()
        )
        at = np.concatenate([np.searchsorted(item_ids, part.item_ids) for part in parts])
        when = np.concatenate([part.priced_at for part in parts])
        row = np.concatenate([part.priced_row for part in parts])
        price = np.concatenate([part.price for part in parts])
        found = np.flatnonzero(row >= 0)
        priced_at, priced_row, item_price = _latest_prices(
            at[found], when[found], row[found], price[found], count
        )
        return cls(
            as_of=as_of,
            item_ids=item_ids,
            popularity=popularity,
            trending=trending,
            described_item=totals.index.get_level_values("item").to_numpy().astype(np.int64),
            description=totals.index.get_level_values("description").to_numpy().astype(str),
            description_count=totals.to_numpy().astype(np.int64),
            priced_at=priced_at,
            priced_row=priced_row,
            price=item_price,
        )

    def titles(self) -> NDArray[np.str_]:
        """Each item's most frequent description (ties: the first in sort order); its id
        where none of its sales has one."""
        item, count = self.described_item, self.description_count
        best = np.lexsort((self.description, -count, item))
        first = best[run_starts(item[best])]
        titles = self.item_ids.astype(object)
        titles[item[first]] = self.description[first]
        return titles.astype(np.str_)

    def prices(self) -> NDArray[np.float64]:
        """Each item's price: that of its latest sale with a positive price (the latest
        time, an undated sale counting as the latest, then the last row); NaN where none."""
        return self.price


def _latest_prices(
    item: NDArray[np.integer[Any]],
    when: NDArray[np.int64],
    row: NDArray[np.int64],
    price: NDArray[np.float64],
    count: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Per item (``count`` of them), the ``when``, ``row`` and ``price`` of its latest priced
    line (the largest ``when``, then the largest ``row``; rows are distinct) among the lines
    these describe: ``ItemSales``'s ``priced_at``, ``priced_row`` and ``price``."""
    latest_when = np.full(count, np.iinfo(np.int64).min)
    np.maximum.at(latest_when, item, when)
    at_latest = np.flatnonzero(when == latest_when[item])
    last_row = np.full(count, -1, dtype=np.int64)
    np.maximum.at(last_row, item[at_latest], row[at_latest])
    chosen = at_latest[row[at_latest] == last_row[item[at_latest]]]
    item_price = np.full(count, np.nan)
    item_price[item[chosen]] = price[chosen]
    return latest_when, last_row, item_price


def combined_keys(
    high: NDArray[np.integer[Any]], span: int, low: NDArray[np.integer[Any]]
) -> NDArray[np.int64]:
    """``high * span + low`` as int64 (``low`` below ``span``), computed in place: one
    array per line at a time rather than three (each is 160 MB at 20 M purchases)."""
    keys = high.astype(np.int64)
    keys *= span
    keys += low
    return keys


def present(codes: NDArray[np.integer[Any]], count: int) -> NDArray[np.intp]:
    """The distinct ``codes`` (each in ``[0, count)``), ascending, from a count of each
    rather than np.unique's hash table or sort (at 20 M purchases, 1.3 s a column)."""
    return np.flatnonzero(np.bincount(codes, minlength=count))


def stable_order(keys: NDArray[np.int64], bound: int) -> NDArray[np.intp]:
    """np.argsort(keys, kind="stable") for ``keys`` in ``[0, bound)``. Where a key and a
    position fit in 63 bits, one np.sort of the two packed in an int64 (numpy's vectorised
    sort: at 20 M lines 0.2 s rather than 3.5 s)."""
    position_bits = max(len(keys) - 1, 1).bit_length()
    if bound > (1 << (63 - position_bits)):
        return np.argsort(keys, kind="stable")
    packed = keys << position_bits  # a copy, sorted in place
    packed |= np.arange(len(keys))
    packed.sort()
    packed &= (1 << position_bits) - 1
    return packed


def factorized(keys: NDArray[np.int64]) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """pd.factorize(keys, sort=True): each key's position among the distinct ``keys``, and
    those ascending, from one unstable argsort (numpy's vectorised one: at 20 M lines 1.6 s,
    pandas's hash table and the sort of its keys 6.9 s)."""
    order = np.argsort(keys)
    ordered = keys[order]
    first = run_starts(ordered)
    codes = np.empty(len(keys), dtype=np.int32)
    codes[order] = np.cumsum(first) - 1
    return codes, ordered[first]


def distinct_sorted(keys: NDArray[np.int64]) -> NDArray[np.int64]:
    """The distinct ``keys``, ascending, as np.unique without its copies: ``keys`` is
    sorted in place."""
    keys.sort()
    return keys[run_starts(keys)]


def run_starts(values: NDArray[np.integer[Any]]) -> NDArray[np.bool_]:
    """Where each run of equal values begins."""
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts
