"""The item-item model (``training.itemitem``) fitted by Spark's executors from the feedback
parts they wrote (``training.spark_dataset``), so that the driver holds nothing that grows
with customers or purchases.

Both kinds rest on an items x items product of the customers x items feedback X, a sum over
customers, so over ranges of customers: EASE^R's Gram matrix XᵀX, item-kNN's BM25
similarities WᵀW (W: X weighted as implicit's ``BM25Recommender`` weighs it). What runs where:

- executors, a task per range of customers: its X_r from its (row, item, value) entries,
  and its contribution X_rᵀX_r (or W_rᵀW_r), in float64, cut into blocks of
  ``ITEMS_PER_BLOCK`` items' rows. A customer's BM25 idf needs their own row only; the
  items' BM25 lengths are global, summed by Spark first (item-sized, broadcast).
- executors, a task per block of ``ITEMS_PER_BLOCK`` items: the ranges' rows of its items
  summed, as they arrive (its memory bounded by the block's items x items, not by the
  ranges). For kNN it keeps each item's K + 1 strongest similarities (itself among them),
  as implicit's ``all_pairs_knn`` in ``training.fit.fit_item_knn`` does.
- driver: EASE^R reads the summed blocks, written by their tasks as dense float32 parts, into
  the lower triangle of the dense Gram matrix it inverts (items², the single host's too)
  and ``training.itemitem.ease_neighbours`` does the rest;
  kNN collects the K + 1 per item and ``training.itemitem.knn_neighbours`` ranks them.

The blocks are summed by numpy, not by a Spark ``groupBy`` of item pairs: as 7 million
item-pair rows, the reference data's took Spark's aggregation 30 s on ``local[2]`` and its
window of the best per item 80 s; as blocks, the whole fit takes 7 s (EASE^R, 2.3 s of it
the inversion) and 6.5 s (kNN).

Precision: the tasks sum in float64 where the single host sums EASE^R's Gram matrix in
float32 (implicit sums its BM25 similarities in float64 too); the summed Gram matrix is
rounded to float32 before its inversion, as the single host's is. On the reference data
the scores agree to 1.3e-5 relative (EASE^R: the single host's float32 sums' rounding) and
3e-6 (kNN), and items whose scores tie that closely may swap places. A block's parts are
summed in the order they arrive, which is not fixed: two runs can differ in those last
bits too (summing in range order would hold every range's part of a block at once).
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from training.config import EngineConfig, ModelParams
from training.engine import parts_directory, quiet, spark_session
from training.fit import item_knn_model
from training.itemitem import Neighbours, ease_neighbours, item_item_kind, knn_neighbours
from training.spark_candidates import part_name, save_part

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Items summed by one task: the ranges' rows of a block arrive one range at a time and are
# added up into at most ITEMS_PER_BLOCK x items entries (float64 and int32: 12 bytes each).
ITEMS_PER_BLOCK = 256
# A block of rows of an items x items matrix, rows ``block * ITEMS_PER_BLOCK`` on: a pickled
# ITEMS_PER_BLOCK x items ``scipy.sparse.csr_matrix`` (opaque bytes to Spark, which only
# moves them: millions of entries as rows cost it seconds); EASE^R's summed blocks are
# written as dense float32 ``.npy`` parts instead, and their rows carry no matrix.
BLOCK_SCHEMA = "block int, matrix binary"


def neighbours_on_executors(
    engine: EngineConfig, feedback_directory: Path, params: ModelParams, items: int
) -> Neighbours:
    """``training.itemitem.fit_neighbours`` of the feedback whose ranges' entries are the
    Parquet parts under ``feedback_directory`` (part, row, item, value: ``row`` within
    range ``part``), of ``items`` items."""
    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    entries = session.read.parquet(str(feedback_directory))
    if item_item_kind(params, items) == "ease":
        directory = parts_directory(engine)
        try:
            setup = _Setup("ease", items, directory=str(directory))
            return ease_neighbours(_gram(session, entries, setup), params)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    model = item_knn_model(params.neighbours + 1)  # +1: itself, dropped
    setup = _Setup("knn", items, model.K, model.K1, model.B, _length_norm(entries, items, model.B))
    found = _summed_blocks(session, entries, setup)
    blocks = {
        int(block): pickle.loads(matrix)
        for block, matrix in zip(
            found.column("block").to_pylist(), found.column("matrix").to_pylist(), strict=True
        )
    }
    empty = sp.csr_matrix((ITEMS_PER_BLOCK, items))
    stacked = [blocks.get(block, empty) for block in range(-(-items // ITEMS_PER_BLOCK))]
    similarity = sp.vstack(stacked, format="csr")[:items]
    return knn_neighbours(similarity, params)


def _gram(session: SparkSession, entries: DataFrame, setup: _Setup) -> NDArray[np.float32]:
    """The summed Gram matrix's lower triangle (all that ``ease_weights`` reads; Fortran
    order), read from the dense float32 block parts the executors wrote: this process holds
    the dense matrix alone, never the sparse sums it is made of (larger, as float64 entries
    with their columns, than the dense matrix on the reference data)."""
    gram = np.zeros((setup.items, setup.items), dtype=np.float32, order="F")
    lower = gram.T  # C order: a row of it is a column of the lower triangle
    for block in _summed_blocks(session, entries, setup).column("block").to_pylist():
        first = block * ITEMS_PER_BLOCK
        rows = lower[first : first + ITEMS_PER_BLOCK]
        rows[:] = np.load(Path(setup.directory) / part_name("gram", block), mmap_mode="r")[
            : len(rows)
        ]
    return gram


@dataclass(frozen=True)
class _Setup:
    """What every task needs (broadcast once): for kNN, how many similarities to keep per
    item, implicit's BM25 K1 and B, and each item's BM25 length norm (item-sized); for
    EASE^R, where the summed blocks are written."""

    kind: Literal["ease", "knn"]
    items: int
    keep: int = 0
    k1: float = 0.0
    b: float = 0.0
    length_norm: NDArray[np.float64] | None = None
    directory: str = ""


def _length_norm(entries: DataFrame, items: int, b: float) -> NDArray[np.float64]:
    """Each item's BM25 length norm as implicit's ``bm25_weight`` computes it on the items
    x customers matrix: ``(1 - B) + B * length / mean length``, an item's length the sum of
    its feedback, the mean over every item (sold or not). Summed by Spark: item-sized."""
    from pyspark.sql import functions as F

    with quiet():
        sums = entries.groupBy("item").agg(F.sum(F.col("value").cast("double")).alias("length"))
        table = sums.toArrow()
    lengths = np.zeros(items)
    lengths[table.column("item").to_numpy()] = table.column("length").to_numpy()
    norm: NDArray[np.float64] = (1.0 - b) + b * lengths / lengths.mean()
    return norm


def _summed_blocks(session: SparkSession, entries: DataFrame, setup: _Setup) -> pa.Table:
    """The items x items product's blocks of rows with an entry (EASE^R: its upper
    triangle; kNN: each item's kept similarities), a task per range making its contribution
    (``_range_blocks``) and a task per block summing them (``_block_sum``): ``BLOCK_SCHEMA``
    rows, by block (for EASE^R the matrices are the parts the tasks wrote, not these)."""
    shared = session.sparkContext.broadcast(setup)

    def contribution(mine: pa.Table) -> pa.Table:
        return _range_blocks(mine, shared.value)

    def summed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from _block_sum(batches, shared.value)

    try:
        with quiet():
            return (
                entries.groupBy("part")
                .applyInArrow(contribution, BLOCK_SCHEMA)
                .groupBy("block")
                .applyInArrow(summed, BLOCK_SCHEMA)
                .toArrow()
                .sort_by("block")
            )
    finally:
        shared.unpersist()


def _range_blocks(mine: pa.Table, setup: _Setup) -> pa.Table:
    """One range's X_rᵀX_r (EASE^R: its upper triangle) or W_rᵀW_r (kNN), in float64, as
    blocks (``BLOCK_SCHEMA``); its customers are the rows of its entries ``mine``."""
    rows = mine.column("row").to_numpy()
    items = mine.column("item").to_numpy()
    values = mine.column("value").to_numpy().astype(np.float64)
    customers = int(rows.max()) + 1 if len(rows) else 0
    if setup.kind == "knn":
        values = _bm25(rows, items, values, customers, setup)
    matrix = sp.csr_matrix((values, (rows, items)), shape=(customers, setup.items))
    by_item = matrix.tocsc()
    blocks, matrices = [], []
    # A block of the product's rows at a time: the task holds the range's blocks as bytes,
    # never the whole product beside them.
    for block in range(-(-setup.items // ITEMS_PER_BLOCK)):
        first = block * ITEMS_PER_BLOCK
        product = (by_item[:, first : first + ITEMS_PER_BLOCK].T @ matrix).tocsr()
        if setup.kind == "ease":  # the upper triangle: item first + r's columns from it on
            product = sp.triu(product, k=first, format="csr")
        rows_of_block = _padded(product, setup.items)
        if rows_of_block.nnz:
            blocks.append(block)
            matrices.append(pickle.dumps(rows_of_block))
    return pa.table(
        {"block": pa.array(blocks, pa.int32()), "matrix": pa.array(matrices, pa.binary())}
    )


def _padded(rows: sp.csr_matrix, items: int) -> sp.csr_matrix:
    """``rows`` (the last block's may be fewer) as ITEMS_PER_BLOCK x items."""
    if rows.shape[0] == ITEMS_PER_BLOCK:
        return rows
    indptr = np.concatenate(
        [rows.indptr, np.full(ITEMS_PER_BLOCK - rows.shape[0], rows.indptr[-1])]
    )
    return sp.csr_matrix((rows.data, rows.indices, indptr), shape=(ITEMS_PER_BLOCK, items))


def _bm25(
    rows: NDArray[np.int32],
    items: NDArray[np.int32],
    values: NDArray[np.float64],
    customers: int,
    setup: _Setup,
) -> NDArray[np.float64]:
    """``values`` weighted as implicit's ``bm25_weight`` weighs the items x customers matrix
    (``BM25Recommender.fit``): a customer's idf is log(items) - log1p(their entries' count),
    an item's length norm is global (``setup.length_norm``)."""
    assert setup.length_norm is not None
    idf = np.log(float(setup.items)) - np.log1p(np.bincount(rows, minlength=customers))
    weighted: NDArray[np.float64] = (
        values * (setup.k1 + 1.0) / (setup.k1 * setup.length_norm[items] + values) * idf[rows]
    )
    return weighted


def _block_sum(batches: Iterator[pa.RecordBatch], setup: _Setup) -> Iterator[pa.RecordBatch]:
    """One block's rows from every range, summed as they arrive; for kNN each item's
    ``setup.keep`` strongest (ties: the lower item first), returned; for EASE^R written as a
    dense float32 part (rounded as the single host's float32 sums are), nothing returned
    but the block's number."""
    block, total = 0, None
    for batch in batches:
        for key, matrix in zip(
            batch.column("block").to_pylist(), batch.column("matrix").to_pylist(), strict=True
        ):
            part: sp.csr_matrix = pickle.loads(matrix)
            block, total = key, part if total is None else total + part
    if total is None:
        return
    kept = b""
    if setup.kind == "knn":
        kept = pickle.dumps(_strongest(total, setup.keep))
    else:
        save_part(Path(setup.directory), "gram", block, total.toarray().astype(np.float32))
    yield pa.RecordBatch.from_pydict(
        {
            "block": pa.array([block], pa.int32()),
            "matrix": pa.array([kept], pa.binary()),
        }
    )


def _strongest(similarity: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row's ``keep`` largest values (of those equal to the last kept: the lower
    columns). Row by row: a block's rows are few, a sort of all its entries slower."""
    similarity.sort_indices()
    kept = np.zeros(similarity.nnz, dtype=bool)
    for row in range(similarity.shape[0]):
        start, end = similarity.indptr[row], similarity.indptr[row + 1]
        if end - start <= keep:
            kept[start:end] = True
            continue
        values = similarity.data[start:end]
        least = np.partition(values, len(values) - keep)[len(values) - keep]
        above = values > least
        tied = np.flatnonzero(values == least)[: keep - int(above.sum())]
        above[tied] = True
        kept[start:end] = above
    rows = np.repeat(np.arange(similarity.shape[0]), np.diff(similarity.indptr))
    return sp.csr_matrix(
        (similarity.data[kept], (rows[kept], similarity.indices[kept])), shape=similarity.shape
    )
