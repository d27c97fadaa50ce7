"""The item-item model: EASE^R against its closed form, item-kNN, the neighbour lists the
bundle keeps, the choice by catalog size, and the source each held item was bought in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.config import ModelParams
from training.dataset import build_dataset
from training.itemitem import EASE_MAX_ITEMS, fit_ease, fit_neighbours, item_item_kind


def baskets() -> sp.csr_matrix:
    """Items 0-1-2 are bought together, 3-4 together, 5 with anything."""
    rows = [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1],
        [0, 1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
    ]
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


@pytest.mark.parametrize("items", [6, 601])  # 601: several blocks mirrored, a ragged last
def test_ease_is_the_closed_form(items: int) -> None:
    if items == 6:
        matrix = baskets()
    else:
        matrix = sp.random(3000, items, density=0.02, format="csr", random_state=5)
    dense = matrix.toarray().astype(np.float64)
    gram = dense.T @ dense + 2.0 * np.eye(dense.shape[1])
    inverse = np.linalg.inv(gram)
    expected = -inverse / np.diag(inverse)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(fit_ease(matrix, 2.0), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["ease", "knn"])
def test_neighbours_are_the_items_bought_together(kind: str) -> None:
    params = ModelParams(item_item=kind, neighbours=2, ease_regularization=1.0)
    found = fit_neighbours(baskets(), params)
    assert found.kind == kind
    for item in range(6):
        start, end = found.indptr[item], found.indptr[item + 1]
        items, scores = found.items[start:end], found.scores[start:end]
        assert end - start <= 2 and item not in items.tolist()
        assert (scores > 0).all() and (np.diff(scores) <= 0).all()  # best first
    assert set(found.items[found.indptr[0] : found.indptr[1]].tolist()) == {1, 2}
    assert found.items[found.indptr[3] : found.indptr[4]].tolist()[0] == 4


def test_auto_picks_ease_up_to_the_line() -> None:
    params = ModelParams()
    assert item_item_kind(params, EASE_MAX_ITEMS) == "ease"
    assert item_item_kind(params, EASE_MAX_ITEMS + 1) == "knn"
    assert item_item_kind(ModelParams(item_item="knn"), 10) == "knn"


def test_each_held_item_names_the_source_of_the_latest_purchase() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["c1", "c1", "c1", "c2"],
            "item_id": ["A", "A", "B", "A"],
            "source": ["legacy", "shop", "legacy", "shop"],
            "quantity": [1.0, 1.0, 2.0, 1.0],
            "timestamp": pd.to_datetime(["2011-01-01", "2011-06-01", "2011-03-01", "2011-02-01"]),
            "outcome": ["used"] * 4,
            "trust": [1.0] * 4,
            "unit_price": [1.0] * 4,
            "description": ["a", "a", "b", "a"],
            "order": [1, 2, 3, 4],
            "country": ["UK"] * 4,
        }
    )
    for column in ("customer_id", "item_id", "source", "outcome", "description", "country"):
        events[column] = events[column].astype("category")
    data = build_dataset(events, 30.0, 14.0)
    names = data.source_names.tolist()
    held = {
        (str(data.customer_ids[row]), str(data.item_ids[item])): names[source]
        for row in range(len(data.customer_ids))
        for item, source in zip(
            data.held.indices[data.held.indptr[row] : data.held.indptr[row + 1]].tolist(),
            data.held_source[data.held.indptr[row] : data.held.indptr[row + 1]].tolist(),
            strict=True,
        )
    }
    assert held == {("c1", "A"): "shop", ("c1", "B"): "legacy", ("c2", "A"): "shop"}
    # The weights the bundle keeps line up with the held items.
    assert data.interactions.nnz == data.held.nnz
    np.testing.assert_array_equal(data.interactions.indices, data.held.indices)
