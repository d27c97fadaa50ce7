"""The trainer's vectorised sorts give the answers of the numpy, pandas and Arrow calls they
replace, ties included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import scipy.sparse as sp

from training.dataset import factorized, present, stable_order
from training.itemitem import _neighbours, _strongest_sparse
from training.merge import _sorted_distinct


@pytest.mark.parametrize("bound", [50, 1 << 40, 1 << 62])  # the last: too wide to pack
def test_stable_order_is_a_stable_argsort(bound: int) -> None:
    rng = np.random.default_rng(3)
    keys = rng.choice(rng.integers(0, bound, 40, dtype=np.int64), 100_000)  # many ties
    assert np.array_equal(stable_order(keys.copy(), bound), np.argsort(keys, kind="stable"))
    assert len(stable_order(np.zeros(0, np.int64), bound)) == 0


def test_factorized_is_a_sorted_factorize() -> None:
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 1 << 45, 5_000, dtype=np.int64)[rng.integers(0, 5_000, 80_000)]
    codes, distinct = factorized(keys)
    expected_codes, expected_distinct = pd.factorize(keys, sort=True)
    assert np.array_equal(codes, expected_codes)
    assert np.array_equal(distinct, expected_distinct)


def test_present_is_unique() -> None:
    codes = np.random.default_rng(5).integers(0, 1_000, 10_000).astype(np.int32)
    assert np.array_equal(present(codes[codes % 7 != 0], 1_000), np.unique(codes[codes % 7 != 0]))
    assert len(present(np.zeros(0, np.int32), 10)) == 0


def test_sorted_distinct_orders_strings_as_arrow_does() -> None:
    rng = np.random.default_rng(6)
    alphabet = ["a", "B", "z", "~", "é", "ä", "日", "\x00", " ", "0"]
    words = ["".join(rng.choice(alphabet, rng.integers(0, 5))) for _ in range(3_000)]
    values = pa.array(words + words[:500], pa.string())  # repeats, as two sources' dictionaries
    distinct, position = _sorted_distinct(values)
    expected = pc.unique(values).take(pc.array_sort_indices(pc.unique(values)))
    assert distinct.to_pylist() == expected.to_pylist()
    assert distinct.take(pa.array(position)).to_pylist() == values.to_pylist()


def test_strongest_sparse_matches_a_lexsort_of_every_row() -> None:
    rng = np.random.default_rng(7)
    n, per_row, k = 300, 40, 25
    rows = np.repeat(np.arange(n), per_row)
    columns = rng.integers(0, n, len(rows))
    values = rng.choice(np.linspace(-0.2, 1.0, 13), len(rows)).astype(np.float32)  # ties
    similarity = sp.csr_matrix((values, (rows, columns)), shape=(n, n))
    coo = similarity.tocoo()
    keep = (coo.row != coo.col) & (coo.data > 0)
    row, column, value = coo.row[keep], coo.col[keep], coo.data[keep].astype(np.float32)
    order = np.lexsort((column, -value, row))
    row, column, value = row[order], column[order], value[order]
    kept = np.arange(len(row)) - np.searchsorted(row, row) < k
    row, column, value = row[kept], column[kept], value[kept]
    again = np.lexsort((column, -value, row))  # the second lexsort the code used to make
    expected = _neighbours("knn", n, row[again], column[again], value[again])
    found = _strongest_sparse(similarity, k)
    assert np.array_equal(found.indptr, expected.indptr)
    assert np.array_equal(found.items, expected.items)
    assert np.array_equal(found.scores, expected.scores)
