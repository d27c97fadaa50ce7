"""The item-item model: for each item, the items bought with it and how strongly.

Two ways to fit it, chosen by catalog size (``ModelParams.item_item``, "auto"):

- **EASE^R** (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): the
  closed-form ridge regression of every item on all the others, ``B = -P / diag(P)`` with
  ``P = (XᵀX + λI)⁻¹`` and a zero diagonal, on the time-decayed purchase matrix ``X``. It holds
  the items x items Gram matrix and its inverse in memory (float32, 4 bytes x items² each):
  up to ``EASE_MAX_ITEMS`` items, about 0.6 GB per matrix and some 20 s of single-threaded
  Cholesky inversion there (the reference catalog's 4,758 items: about 2.3 s in all).
- **Item-kNN** past that line: implicit's BM25 item-item similarities, which never form a
  dense items x items matrix.

Either way the bundle keeps each item's ``neighbours`` strongest positive weights, best
first (``Neighbours``). The service scores with them (a customer's item-item score for an
item sums, over their purchases, the purchase's decayed weight times the item's weight
among its neighbours), lists them as similar items, sums them over a cart, and names the
purchase that contributes most as a recommendation's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from training.config import ModelParams
from training.errors import TrainingError
from training.fit import fit_item_knn

EASE_MAX_ITEMS = 12_000
_ROW_BLOCK = 1024  # rows of the dense weights ranked at a time (bounds the index arrays)
_MIRROR_BLOCK = 256  # rows of EASE^R's weights mirrored at a time


@dataclass(frozen=True)
class Neighbours:
    """A CSR list over items: item ``i``'s neighbours, best first, are
    ``items[indptr[i]:indptr[i + 1]]`` with positive ``scores``; never ``i`` itself."""

    kind: Literal["ease", "knn"]
    indptr: NDArray[np.int64]
    items: NDArray[np.int32]
    scores: NDArray[np.float32]


def item_item_kind(params: ModelParams, n_items: int) -> Literal["ease", "knn"]:
    if params.item_item == "auto":
        return "ease" if n_items <= EASE_MAX_ITEMS else "knn"
    return params.item_item


def fit_neighbours(interactions: sp.csr_matrix, params: ModelParams) -> Neighbours:
    """The item-item model on customers x items ``interactions``, ``params.neighbours`` kept
    per item."""
    kind = item_item_kind(params, interactions.shape[1])
    if kind == "ease":
        return ease_neighbours(gram_of(interactions), params)
    similarity = fit_item_knn(interactions, params.neighbours + 1)  # +1: itself, dropped
    return knn_neighbours(similarity, params)


def ease_neighbours(gram: NDArray[np.float32], params: ModelParams) -> Neighbours:
    """EASE^R's ``params.neighbours`` strongest weights per item, from the purchases' items x
    items Gram matrix ``gram`` (``gram_of``; overwritten)."""
    weights = ease_weights(gram, params.ease_regularization)
    return _strongest_dense(weights, params.neighbours)


def knn_neighbours(similarity: sp.csr_matrix, params: ModelParams) -> Neighbours:
    """The ``params.neighbours`` strongest of items x items ``similarity`` per item, itself
    left out: ``fit_item_knn``'s with ``params.neighbours + 1`` kept per item (or at least
    those)."""
    return _strongest_sparse(similarity, params.neighbours)


def gram_of(interactions: sp.csr_matrix) -> NDArray[np.float32]:
    """XᵀX of customers x items ``interactions`` X, dense, summed in float32 (Fortran order,
    as ``ease_weights`` factors it)."""
    matrix = interactions.astype(np.float32)
    gram: NDArray[np.float32] = (matrix.T @ matrix).toarray(order="F")
    return gram


def fit_ease(interactions: sp.csr_matrix, regularization: float) -> NDArray[np.float32]:
    """EASE^R's items x items weights (row: the item bought, column: the item predicted)."""
    return ease_weights(gram_of(interactions), regularization)


def ease_weights(gram: NDArray[np.float32], regularization: float) -> NDArray[np.float32]:
    """EASE^R's weights from the items x items Gram matrix XᵀX (float32, symmetric: only its
    lower triangle is read; it is overwritten): ``B = -P / diag(P)``, ``P = (XᵀX + λI)⁻¹``,
    zero diagonal."""
    gram = np.asarray(gram, dtype=np.float32, order="F")
    gram[np.diag_indices_from(gram)] += np.float32(regularization)
    # XᵀX + λI is symmetric positive definite: a Cholesky inverse costs half an LU one. One
    # BLAS thread, as for every fit: the same weights on any machine, and no spinning
    # threads on a busy one (with two, a loaded 2-core machine took 17 s instead of 2.3 s).
    with threadpool_limits(limits=1, user_api="blas"):
        factor, info = lapack.spotrf(gram, lower=True, overwrite_a=True, clean=False)
        if info != 0:
            raise TrainingError(f"EASE^R: the Gram matrix is not positive definite ({info})")
        inverse, info = lapack.spotri(factor, lower=True, overwrite_c=True)
        if info != 0:
            raise TrainingError(f"EASE^R: the Gram matrix cannot be inverted ({info})")
    del gram, factor
    # spotri leaves P in the lower triangle (the other holds the Gram matrix): in the
    # transposed, C-ordered view, the upper. Mirrored and scaled in place, so that only one
    # items x items matrix is held (with copies, three: at 12,000 items 1.7 GB, not 0.6).
    weights: NDArray[np.float32] = inverse.T
    del inverse
    _mirror_upper(weights)
    weights /= -np.diag(weights).copy()  # column j over -P[j, j], in place
    np.fill_diagonal(weights, 0.0)
    return weights


def _mirror_upper(matrix: NDArray[np.float32]) -> None:
    """A square C-ordered ``matrix``'s upper triangle copied into its lower, in place, a
    block of rows at a time (a block's copy the only extra memory)."""
    n = matrix.shape[0]
    for start in range(0, n, _MIRROR_BLOCK):
        end = min(start + _MIRROR_BLOCK, n)
        matrix[start:end, :start] = matrix[:start, start:end].T
        diagonal = matrix[start:end, start:end]
        diagonal[:] = np.triu(diagonal) + np.triu(diagonal, 1).T


def _strongest_dense(weights: NDArray[np.float32], k: int) -> Neighbours:
    n = weights.shape[0]
    k = max(0, min(k, n - 1))
    rows: list[NDArray[np.int64]] = []
    columns: list[NDArray[np.int64]] = []
    values: list[NDArray[np.float32]] = []
    for start in range(0, n, _ROW_BLOCK):
        block = weights[start : start + _ROW_BLOCK]
        if k == 0:
            break
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(block, top, axis=1)
        keep = top_values > 0
        rows.append(np.nonzero(keep)[0] + start)
        columns.append(top[keep])
        values.append(top_values[keep])
    row = np.concatenate([np.zeros(0, np.int64), *rows])
    column = np.concatenate([np.zeros(0, np.int64), *columns])
    value = np.concatenate([np.zeros(0, np.float32), *values])
    order = np.lexsort((column, -value, row))  # each row best first, ties by item
    return _neighbours("ease", n, row[order], column[order], value[order])


def _strongest_sparse(similarity: sp.csr_matrix, k: int) -> Neighbours:
    similarity.sort_indices()
    coo = similarity.tocoo()  # by row, then item
    keep = (coo.row != coo.col) & (coo.data > 0)
    rows, columns, values = coo.row[keep], coo.col[keep], coo.data[keep].astype(np.float32)
    # Each row best first, ties by item: one stable sort on the row and the value, the items
    # already ascending within a row. A positive float32 orders as its bits do. For 100,000
    # items of 101 neighbours: 0.7 s, against 12.8 s for a lexsort on (row, -value, item)
    # here and another after it.
    descending = np.uint64(0xFFFFFFFF) - values.view(np.uint32)
    order = np.argsort((rows.astype(np.uint64) << np.uint64(32)) | descending, kind="stable")
    rows, columns, values = rows[order], columns[order], values[order]
    del order, descending
    # The k best of each row: its rank within the row.
    kept = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left") < k
    return _neighbours("knn", similarity.shape[0], rows[kept], columns[kept], values[kept])


def _neighbours(
    kind: Literal["ease", "knn"],
    n: int,
    rows: NDArray[np.integer],
    columns: NDArray[np.integer],
    values: NDArray[np.float32],
) -> Neighbours:
    """Entries in row order, each row best first, as a CSR list."""
    counts = np.bincount(rows, minlength=n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Neighbours(kind, indptr, columns.astype(np.int32), values.astype(np.float32))
