"""Similar items and carts measured offline by "the other items of the same order".

A basket is one order (a customer's lines with one order id) of distinct catalog items the
model knows. In the test window each basket with at least two such items is asked two ways:

- **similar**: each item in turn is the query, the basket's other items are the relevant set,
  and the list is ``Ranker.similar`` of the query, excluding what the service excludes on a
  product page without a customer (the item, its editions, items reserved for a tier above
  the first);
- **cart**: each item in turn is held out, the others are the cart (when the service would
  take it: at most ``MAX_CART_ITEMS``), the held-out item is the one relevant item, and the
  list is ``Ranker.complements`` of the cart, excluding the cart, its editions and reserved
  items.

The baseline answers both through the same ranker code with other neighbours: the counts of
co-purchase in the same training order (``cooccurrence_neighbours``). The lists are the
model's neighbours alone, without the service's best-seller top-up, which is the same for
both and would only blur the comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.defaults import MAX_CART_ITEMS
from recsvc.ranker import Ranker
from training.dataset import outcome_is, positions
from training.metrics import mean_metrics, metrics_at_k

# Test baskets beyond this many are sampled (seeded): both protocols rank once per item of
# every basket, twice over (model and baseline), and evaluate should stay within a minute.
MAX_BASKETS = 3_000

Basket = NDArray[np.int32]  # distinct item indices, ascending


def order_baskets(events: pd.DataFrame, item_ids: NDArray[np.str_]) -> list[Basket]:
    """Each (customer, order)'s purchased items among ``item_ids``, in (customer, order)
    order. Anonymous, cancelled and duplicate lines have another outcome: left out."""
    items = positions(events["item_id"], pd.Index(item_ids))
    keep = outcome_is(events, "used") & (events["quantity"].to_numpy() > 0) & (items >= 0)
    lines = pd.DataFrame(
        {
            "customer": events["customer_id"].cat.codes.to_numpy()[keep],
            "order": events["order"].to_numpy()[keep],
            "item": items[keep],
        }
    ).drop_duplicates()
    lines = lines.sort_values(["customer", "order", "item"], kind="stable")
    keys = lines[["customer", "order"]].to_numpy()
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    basket_items = lines["item"].to_numpy().astype(np.int32)
    return [basket for basket in np.split(basket_items, starts[1:]) if len(basket)]


def cooccurrence_neighbours(
    baskets: list[Basket], n_items: int, k: int
) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.float32]]:
    """Each item's ``k`` items most often in the same basket (count first, then index), as
    the CSR arrays of ``BundleArrays.neighbour_*``; never the item itself."""
    lengths = np.array([len(basket) for basket in baskets], dtype=np.int64)
    columns = np.concatenate([np.zeros(0, np.int32), *baskets])
    rows = np.repeat(np.arange(len(baskets)), lengths)
    membership = sp.csr_matrix(
        (np.ones(len(columns), np.float32), (rows, columns)), shape=(len(baskets), n_items)
    )
    counts = (membership.T @ membership).tocoo()
    off_diagonal = counts.row != counts.col
    item, other = counts.row[off_diagonal], counts.col[off_diagonal]
    count = counts.data[off_diagonal]
    order = np.lexsort((other, -count, item))
    item, other, count = item[order], other[order], count[order]
    rank = np.arange(len(item)) - np.searchsorted(item, item, side="left")
    kept = rank < k
    indptr = np.concatenate([[0], np.cumsum(np.bincount(item[kept], minlength=n_items))])
    return indptr.astype(np.int64), other[kept].astype(np.int32), count[kept].astype(np.float32)


def with_cooccurrence(ranker: Ranker, baskets: list[Basket], k: int) -> Ranker:
    """``ranker`` with co-purchase counts in ``baskets`` as the item-item neighbours."""
    indptr, items, scores = cooccurrence_neighbours(baskets, len(ranker.arrays.item_ids), k)
    arrays = dataclasses.replace(
        ranker.arrays, neighbour_indptr=indptr, neighbour_items=items, neighbour_scores=scores
    )
    return Ranker(arrays, tiers=ranker.tiers)


def window_baskets(
    events: pd.DataFrame, item_ids: NDArray[np.str_], seed: int
) -> tuple[int, list[Basket]]:
    """The number of test-window baskets with two items or more, and those evaluated: all
    of them, or ``MAX_BASKETS`` drawn with ``seed``."""
    baskets = [basket for basket in order_baskets(events, item_ids) if len(basket) >= 2]
    if len(baskets) <= MAX_BASKETS:
        return len(baskets), baskets
    chosen = np.random.default_rng(seed).choice(len(baskets), MAX_BASKETS, replace=False)
    return len(baskets), [baskets[i] for i in np.sort(chosen).tolist()]


def similar_metrics(ranker: Ranker, baskets: Iterable[Basket], k: int) -> dict[str, Any]:
    """Mean hit rate and NDCG at ``k`` over (basket, query item); an edition of the query
    cannot be listed, so it is not counted relevant."""
    hidden = ranker.hidden(0)
    scored: list[dict[str, float]] = []
    listed = 0
    for basket in baskets:
        for item in basket.tolist():
            editions = ranker.with_groups(np.array([item], np.int32))
            relevant = set(basket.tolist()) - set(editions.tolist())
            if not relevant:
                continue
            excluded = np.union1d(editions, hidden).astype(np.int32)
            found = [entry.index for entry in ranker.similar(item, k, excluded)]
            listed += len(found)
            scored.append(_hit_and_ndcg(found, relevant, k))
    return _summary(scored, listed)


def cart_metrics(ranker: Ranker, baskets: Iterable[Basket], k: int) -> dict[str, Any]:
    """Mean hit rate and NDCG at ``k`` over (basket, held-out item), the other items the
    cart; baskets larger than a cart the service takes, and held-out items that are an
    edition of a cart item, are left out."""
    hidden = ranker.hidden(0)
    scored: list[dict[str, float]] = []
    listed = 0
    for basket in baskets:
        if len(basket) - 1 > MAX_CART_ITEMS:
            continue
        for position, item in enumerate(basket.tolist()):
            cart = np.delete(basket, position)
            excluded = np.union1d(ranker.with_groups(cart), hidden).astype(np.int32)
            if item in excluded:
                continue
            found = [entry.index for entry in ranker.complements(cart, k, excluded)[0]]
            listed += len(found)
            scored.append(_hit_and_ndcg(found, {item}, k))
    return _summary(scored, listed)


PROTOCOLS: dict[str, Callable[[Ranker, Iterable[Basket], int], dict[str, Any]]] = {
    "similar": similar_metrics,
    "cart": cart_metrics,
}


def basket_report(
    model: Ranker, train: pd.DataFrame, test: pd.DataFrame, k: int, seed: int
) -> dict[str, Any]:
    """Both protocols for the served model's ranker (``model``) and the co-occurrence
    baseline fitted on the ``train`` events' orders, on the ``test`` events' orders."""
    item_ids = model.arrays.item_ids
    neighbours = int(np.diff(model.arrays.neighbour_indptr).max(initial=0))
    baseline = with_cooccurrence(model, order_baskets(train, item_ids), max(neighbours, k))
    total, baskets = window_baskets(test, item_ids, seed)
    report: dict[str, Any] = {"test_baskets": total, "evaluated_baskets": len(baskets)}
    for name, protocol in PROTOCOLS.items():
        report[name] = {
            "recsvc": protocol(model, baskets, k),
            "cooccurrence": protocol(baseline, baskets, k),
        }
    return report


def _hit_and_ndcg(found: list[int], relevant: set[int], k: int) -> dict[str, float]:
    metrics = metrics_at_k(found, relevant, k)
    return {f"hit_rate@{k}": metrics[f"hit_rate@{k}"], f"ndcg@{k}": metrics[f"ndcg@{k}"]}


def _summary(scored: list[dict[str, float]], listed: int) -> dict[str, Any]:
    """The means, the number of queries and the mean length of the lists (short when the
    item or cart has few neighbours outside the excluded items)."""
    return {
        **mean_metrics(scored),
        "queries": len(scored),
        "mean_listed": listed / len(scored) if scored else 0.0,
    }
