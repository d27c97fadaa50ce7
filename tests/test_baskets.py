"""Similar items, carts and reasons measured offline: known answers on small shops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsvc.ranker import Ranker
from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from tests.test_bundle import tiny_arrays
from training.baskets import MAX_BASKETS, basket_report, cooccurrence_neighbours, window_baskets
from training.config import load_config
from training.evaluate import compared_models, evaluate, reasons_coverage, split_at
from training.pipeline import merged_history
from training.recommenders import History, ServedModel

CUTOFF = pd.Timestamp("2011-06-01")
BLOCKS = {block: [f"{block}{i}" for i in range(4)] for block in "ABC"}


def order_rows(orders: list[tuple[str, list[str]]], first: int, when: str) -> list[list[object]]:
    """One order per (customer, items), numbered from ``first``, in the SHOP_HEADER layout."""
    return [
        [number, item, f"Item {item}", 1, when, 1.5, customer, "United Kingdom"]
        for number, (customer, items) in enumerate(orders, start=first)
        for item in items
    ]


def block_shop(directory: Path) -> Path:
    """Before the cutoff every order is one whole block (A, B or C: four items always bought
    together), and customer z bought A0 alone. After it: two orders within a block, one of
    three unrelated items, and orders of fewer than two items the model knows."""
    before = [(f"{b.lower()}{n:02d}", items) for b, items in BLOCKS.items() for n in range(10)]
    before.append(("z", ["A0"]))
    after = [
        ("a01", ["A0", "A1"]),
        ("b01", ["B1", "B2", "B3"]),
        ("a00", ["A2", "B0", "C3"]),
        ("b00", ["B1", "NEW9"]),  # NEW9 was never sold before the cutoff
        ("z", ["B1"]),
        ("a01", ["C0"]),  # another order of a01's: another basket
    ]
    rows = order_rows(before, 1000, "2011-03-01 10:00:00")
    rows += order_rows(after, 5000, "2011-06-15 10:00:00")
    write_csv(directory / "shop.csv", SHOP_HEADER, rows)
    return write_config(
        directory,
        source_toml("shop", "shop.csv", SHOP_COLUMNS),
        model="ease_regularization = 1.0",
    )


def test_items_bought_together_are_found_and_unrelated_ones_are_not(tmp_path: Path) -> None:
    report = evaluate(load_config(block_shop(tmp_path)), CUTOFF, k=10)
    baskets = report["baskets"]
    assert baskets["test_baskets"] == 3 and baskets["evaluated_baskets"] == 3
    # Similar: 2 + 3 + 3 queries; the five within a block hit, the three unrelated miss.
    # Cart: the held-out item of a block is among its cart's neighbours, never across blocks.
    for protocol in ("similar", "cart"):
        for name in ("recsvc", "cooccurrence"):
            scores = baskets[protocol][name]
            assert scores["queries"] == 8
            assert scores["hit_rate@10"] == pytest.approx(5 / 8), (protocol, name)
            assert 0 < scores["ndcg@10"] <= 5 / 8
    # Co-occurrence counts tie within a block, so ties go by index: A0's list is A1 A2 A3.
    assert baskets["similar"]["cooccurrence"]["mean_listed"] == pytest.approx(3.0)


def test_unrelated_baskets_score_zero(tmp_path: Path) -> None:
    """The protocols alone, on the unrelated order: every list misses."""
    config = load_config(block_shop(tmp_path))
    merged = merged_history(config)
    holdout = split_at(merged.events, CUTOFF, None)
    served = compared_models(config.model)["recsvc"]
    assert isinstance(served, ServedModel)
    served.fit(History.build(holdout.train, config.model, merged.item_groups))
    unrelated = holdout.test[holdout.test["customer_id"] == "a00"]
    report = basket_report(served.ranker, holdout.train, unrelated, 10, seed=1)
    assert report["test_baskets"] == 1
    for protocol in ("similar", "cart"):
        for name in ("recsvc", "cooccurrence"):
            scores = report[protocol][name]
            assert scores["queries"] == 3
            assert scores["hit_rate@10"] == 0.0 and scores["ndcg@10"] == 0.0


def test_cooccurrence_counts_orders_best_first_ties_by_index() -> None:
    baskets = [np.array(b, np.int32) for b in ([0, 1, 2], [0, 1], [3], [1, 2, 3])]
    indptr, items, scores = cooccurrence_neighbours(baskets, 5, k=2)
    lists = [items[indptr[i] : indptr[i + 1]].tolist() for i in range(5)]
    counts = [scores[indptr[i] : indptr[i + 1]].tolist() for i in range(5)]
    assert lists == [[1, 2], [0, 2], [1, 0], [1, 2], []]
    assert counts == [[2.0, 1.0], [2.0, 2.0], [2.0, 1.0], [1.0, 1.0], []]


def test_many_baskets_are_sampled_with_the_seed(tmp_path: Path) -> None:
    orders = [(f"c{n}", ["A0", "A1"]) for n in range(MAX_BASKETS + 5)]
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, order_rows(orders, 1, "2011-03-01 10:00:00"))
    config = load_config(write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS)))
    events = merged_history(config).events
    item_ids = np.array(["A0", "A1"])
    total, chosen = window_baskets(events, item_ids, seed=3)
    assert total == MAX_BASKETS + 5 and len(chosen) == MAX_BASKETS
    again = window_baskets(events, item_ids, seed=3)[1]
    assert all((a == b).all() for a, b in zip(chosen, again, strict=True))


def test_reasons_coverage_matches_a_hand_count() -> None:
    # c1 (row 0) holds i3 (index 2), whose one neighbour is i1 (index 0); c2 holds nothing.
    arrays = dataclasses.replace(
        tiny_arrays(),
        neighbour_indptr=np.array([0, 0, 0, 1], dtype=np.int64),
        neighbour_items=np.array([0], dtype=np.int32),
        neighbour_scores=np.array([0.5], dtype=np.float32),
    )
    ranker = Ranker(arrays)
    assert reasons_coverage(ranker, {0: [0, 1]}) == pytest.approx(1 / 2)
    assert reasons_coverage(ranker, {0: [0, 1], 1: [0, 1, 2]}) == pytest.approx(1 / 5)
    assert reasons_coverage(ranker, {0: [1]}) == 0.0
    assert reasons_coverage(ranker, {}) == 0.0


def test_reasons_coverage_of_the_served_lists(tmp_path: Path) -> None:
    """z holds A0, whose neighbours are A1..A3: z's ten items (of the 11 z does not hold)
    include two or three of them. a00, a01 and b00 (who bought NEW9, unknown to the model)
    hold a whole block, so each gets the eight items of the other two, and nothing across
    blocks is a neighbour: none of those 24 has a bought_with reason."""
    report = evaluate(load_config(block_shop(tmp_path)), CUTOFF, k=10)
    assert report["protocol"]["test_customers"] == 4
    assert report["recsvc"]["reasons_coverage"] in (pytest.approx(2 / 34), pytest.approx(3 / 34))
