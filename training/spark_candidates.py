"""The bundle's per-customer model arrays computed and written by Spark's executors
(``[engine] kind = "spark"``): each customer's factors and candidate lists.

The customer factors stay a Spark DataFrame (ALS's ``userFactors``), joined with what the
ranking reads of each customer (``customer_side``: the Parquet parts the executors wrote
while building the tiers); the item side (factors, prior, catalog, the item-item model) fits
in memory and is broadcast. Each executor task ranks a contiguous range of customer rows
with ``recsvc.ranker.Ranker.candidate_lists`` (the single-host code: every customer's list
depends on that customer and the item side only, so the lists are the same) and writes the
range's arrays as ``.npy`` part files. The driver then joins the parts of each array into
one ``.npy`` file by copying bytes, and memory-maps it, so its memory does not grow with
customers.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from recsvc.bundle import CANDIDATES, BundleArrays
from recsvc.identity import AliasDigests
from recsvc.policy import TierTable
from recsvc.ranker import Ranker
from training.config import EngineConfig, ModelParams
from training.dataset import TrainingData
from training.engine import parts_directory, quiet, spark_session
from training.errors import TrainingError
from training.fit import Factors, trend_prior
from training.itemitem import Neighbours
from training.progress import Progress
from training.spark_als import SparkFactors
from training.tiers import Crm

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

# The arrays the executors write, one row per customer.
CUSTOMER_PARTS = ("user_factors", *CANDIDATES)
# The item-side arrays the executors rank with (everything else in BundleArrays is per customer
# or not used for ranking).
ITEM_SIDE = (
    "item_ids",
    "item_factors",
    "item_prior",
    "prices",
    "item_group",
    "item_min_tier",
    "item_premium",
    "item_categories",
    "neighbour_indptr",
    "neighbour_items",
    "neighbour_scores",
    "segment_names",
    "segment_indptr",
    "segment_items",
    "segment_scores",
)


@dataclass(frozen=True)
class RankingSetup:
    """What every task needs besides its customers (broadcast once)."""

    items: dict[str, NDArray[Any]]
    tiers: TierTable
    item_item_weight: float
    candidates: int
    rank: int
    directory: str


def spark_served_arrays(
    data: TrainingData,
    factors: SparkFactors,
    neighbours: Neighbours | None,
    params: ModelParams,
    digests: AliasDigests,
    crm: Crm,
    customer_side_directory: Path,
    engine: EngineConfig,
    progress: Progress | None = None,
) -> BundleArrays:
    """``training.pipeline.served_arrays`` with the per-customer model arrays (factors and
    candidate lists) from the executors, memory-mapped; ``digests``: the customers' alias
    table (``training.pipeline.alias_digests``); ``customer_side_directory``: the folder of
    the customers' ``customer_side`` Parquet parts."""
    from training.pipeline import bundle_arrays

    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    prior = trend_prior(data.trending, params.trend_weight)
    no_customers = np.zeros((0, params.factors), np.float32)
    arrays = bundle_arrays(
        data,
        Factors(user_factors=no_customers, item_factors=factors.item_factors),
        prior,
        digests,
        crm.arrays,
        neighbours=neighbours,
    )
    directory = parts_directory(engine)
    try:
        with (progress or Progress.silent()).step("candidate lists (Spark executors)"):
            parts = rank_on_executors(
                session,
                factors.user_factors,
                session.read.parquet(str(customer_side_directory)),
                {name: getattr(arrays, name) for name in ITEM_SIDE},
                TierTable.of(crm.policy),
                params.item_item_weight,
                params.candidates,
                params.factors,
                directory,
            )
    finally:
        # The joined files stay readable through their memory maps until these are dropped.
        shutil.rmtree(directory, ignore_errors=True)
    if len(parts["user_factors"]) != len(data.customer_ids):
        raise TrainingError("the customer side the executors ranked is not every customer's")
    return dataclasses.replace(arrays, **parts)


def owned_lists(
    indptr: NDArray[np.int64], items: NDArray[np.int32], weight: NDArray[np.float32]
) -> pa.Table:
    """Each customer row's owned items and their decayed weights (a CSR list's entries,
    rows numbered from 0) as the list columns of ``customer_side``'s table."""
    offsets = pa.array(np.asarray(indptr).astype(np.int32))
    return pa.table(
        {
            "owned_items": pa.ListArray.from_arrays(offsets, pa.array(items, pa.int32())),
            "owned_weight": pa.ListArray.from_arrays(offsets, pa.array(weight, pa.float32())),
        }
    )


def customer_side(
    first: int,
    owned: pa.Table,
    window_spend: NDArray[np.float64],
    price_low: NDArray[np.float32],
    price_high: NDArray[np.float32],
) -> pa.Table:
    """What the ranking reads of each customer besides their factors, one row per customer
    row (numbered from ``first``): ``owned_lists``'s owned items with their weights, the
    tier window's spend, the usual price band. The executors write it a range of customers
    at a time (``training.spark_dataset``); ``rank_on_executors`` reads it."""
    rows = np.arange(first, first + owned.num_rows, dtype=np.int64)
    if len(rows) and rows[-1] > np.iinfo(np.int32).max:
        raise TrainingError("more than 2^31 customers: ALS numbers them as 32-bit integers")
    return pa.table(
        {
            "row": pa.array(rows.astype(np.int32)),
            "owned_items": owned.column("owned_items"),
            "owned_weight": owned.column("owned_weight"),
            "window_spend": pa.array(np.asarray(window_spend, np.float64)),
            "price_low": pa.array(np.asarray(price_low, np.float32)),
            "price_high": pa.array(np.asarray(price_high, np.float32)),
        }
    )


def rank_on_executors(
    session: SparkSession,
    user_factors: DataFrame,
    customers: DataFrame,
    item_side: dict[str, NDArray[Any]],
    tiers: TierTable,
    item_item_weight: float,
    candidates: int,
    rank: int,
    directory: Path,
) -> dict[str, NDArray[Any]]:
    """Every customer's factors and candidate lists, written by the executors as part files
    under ``directory`` and joined there; returns them memory-mapped, by array name.

    ``user_factors``: ALS's (id, features) rows (a customer missing from them has zero
    factors); ``customers``: ``customer_side``'s rows, read from the executors' parts."""
    setup = RankingSetup(item_side, tiers, item_item_weight, candidates, rank, str(directory))
    shared = session.sparkContext.broadcast(setup)
    parallelism = session.sparkContext.defaultParallelism
    factors = user_factors.withColumnRenamed("id", "row")
    joined = (
        customers.join(factors, on="row", how="left")
        .repartitionByRange(parallelism, "row")
        .sortWithinPartitions("row")
    )

    def write_parts(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for batch in batches:
            first = _write_part(shared.value, batch)
            yield pd.DataFrame({"first": [first], "count": [len(batch)]})

    with quiet():
        written = joined.mapInPandas(write_parts, "first long, count long").toArrow()
    shared.unpersist()
    firsts = written.column("first").to_numpy()
    counts = written.column("count").to_numpy()
    order = np.argsort(firsts)
    ends = np.cumsum(counts[order])
    if not np.array_equal(firsts[order], np.concatenate([[0], ends[:-1]])):
        raise TrainingError("the executors' candidate parts do not cover every customer once")
    total = int(ends[-1]) if len(ends) else 0
    return {
        name: join_parts(directory, name, [int(f) for f in firsts[order]], total)
        for name in CUSTOMER_PARTS
    }


def _write_part(setup: RankingSetup, batch: pd.DataFrame) -> int:
    """Rank one contiguous range of customer rows; write its arrays; return its first row."""
    from threadpoolctl import threadpool_limits

    rows = batch["row"].to_numpy()
    first = int(rows[0])
    if not np.array_equal(rows, np.arange(first, first + len(rows))):
        raise TrainingError("a candidate part's customer rows are not contiguous")
    lengths = np.array([len(items) for items in batch["owned_items"]], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    owned_items = _concatenated(batch["owned_items"], np.int32)
    owned_weight = _concatenated(batch["owned_weight"], np.float32)
    user_factors = np.zeros((len(rows), setup.rank), dtype=np.float32)
    fitted = batch["features"].notna().to_numpy()
    if fitted.any():
        user_factors[fitted] = np.stack(list(batch["features"][fitted])).astype(np.float32)
    arrays = _block_arrays(
        setup.items,
        user_factors,
        indptr,
        owned_items,
        owned_weight,
        batch["window_spend"].to_numpy(np.float64),
        batch["price_low"].to_numpy(np.float32),
        batch["price_high"].to_numpy(np.float32),
    )
    ranker = Ranker(arrays, tiers=setup.tiers, item_item_weight=setup.item_item_weight)
    with threadpool_limits(limits=1, user_api="blas"):
        items, scores, reasons = ranker.candidate_lists(setup.candidates)
    directory = Path(setup.directory)
    for name, array in zip(CUSTOMER_PARTS, (user_factors, items, scores, reasons), strict=True):
        save_part(directory, name, first, array)
    return first


def _concatenated(column: pd.Series, dtype: type[np.generic]) -> NDArray[Any]:
    pieces = [np.asarray(values, dtype=dtype) for values in column]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


def _block_arrays(
    items: dict[str, NDArray[Any]],
    user_factors: NDArray[np.float32],
    owned_indptr: NDArray[np.int64],
    owned_items: NDArray[np.int32],
    owned_weight: NDArray[np.float32],
    window_spend: NDArray[np.float64],
    price_low: NDArray[np.float32],
    price_high: NDArray[np.float32],
) -> BundleArrays:
    """A bundle of one block of customers (rows from 0) and the whole item side: enough for
    ``Ranker.candidate_lists``, which reads nothing else of a customer."""
    count = len(window_spend)
    n_owned = len(owned_items)
    return BundleArrays(
        customer_ids=np.zeros(count, dtype=str),
        user_factors=user_factors,
        owned_indptr=owned_indptr,
        owned_indices=owned_items,
        owned_quantity=np.ones(n_owned, np.float32),
        owned_weight=owned_weight,
        owned_source=np.full(n_owned, -1, np.int16),
        source_names=np.zeros(0, dtype=str),
        customer_spend=np.zeros(count),
        customer_orders=np.zeros(count, np.int32),
        window_spend=window_spend,
        first_purchase=np.zeros(count, np.int64),
        last_purchase=np.zeros(count, np.int64),
        median_interval_days=np.full(count, np.nan, np.float32),
        best_hour=np.full(count, -1, np.int8),
        best_weekday=np.full(count, -1, np.int8),
        timing_own=np.zeros(count, bool),
        price_low=price_low,
        price_high=price_high,
        titles=np.zeros(len(items["item_ids"]), dtype=str),
        alias_high=np.zeros(0, np.uint64),
        alias_low=np.zeros(0, np.uint64),
        alias_rows=np.zeros(0, np.int32),
        popular_items=np.zeros(0, np.int32),
        popular_scores=np.zeros(0, np.float32),
        trigger_rows=np.zeros(0, np.int32),
        trigger_kinds=np.zeros(0, dtype=str),
        trigger_at=np.zeros(0, np.int64),
        trigger_reasons=np.zeros(0, dtype=str),
        trigger_figures=np.zeros(0, dtype=str),
        candidate_items=np.zeros((count, 0), np.int32),
        candidate_scores=np.zeros((count, 0), np.float32),
        candidate_reasons=np.zeros((count, 0), np.int32),
        **items,
    )


def part_name(name: str, first: int) -> str:
    """The file of array ``name``'s part that starts at row (or range) ``first``."""
    return f"{name}-{first:012d}.npy"


def save_part(directory: Path, name: str, first: int, array: NDArray[Any]) -> None:
    """Array ``name``'s part that starts at row (or range) ``first``, written under a
    temporary name and renamed whole: a task Spark runs again rewrites the same part."""
    target = directory / part_name(name, first)
    staged = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
    with staged.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
    staged.replace(target)


def write_sorted_parts(
    ordered: DataFrame, directory: Path, arrays: Callable[[pa.Table], dict[str, NDArray[Any]]]
) -> tuple[list[int], int]:
    """Each sorted partition of ``ordered`` written by its task as ``.npy`` parts under
    ``directory`` (``arrays`` of the partition's rows, by name), numbered by the partition;
    the numbers of the parts written, in order (for ``join_parts``), and the rows they hold.
    A sort's partitions hold ascending ranges, so the parts join in the sorted order."""
    from pyspark import TaskContext

    folder = str(directory)

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)
        if not received or not sum(batch.num_rows for batch in received):
            return
        table = pa.Table.from_batches(received)
        context = TaskContext.get()
        assert context is not None
        part = context.partitionId()
        for name, values in arrays(table).items():
            save_part(Path(folder), name, part, values)
        yield pa.RecordBatch.from_pydict(
            {"part": pa.array([part], pa.int32()), "count": pa.array([table.num_rows], pa.int64())}
        )

    with quiet():
        written = ordered.mapInArrow(write, "part int, count long").toArrow().sort_by("part")
    total = int(pa.compute.sum(written.column("count")).as_py() or 0)
    return written.column("part").to_pylist(), total


def join_parts(directory: Path, name: str, firsts: list[int], total: int) -> NDArray[Any]:
    """The parts of array ``name`` (numbered ``firsts``: their first rows, or their
    ranges; in order) as one ``.npy`` file of ``total`` rows, copied a buffer at a time;
    returned memory-mapped, read-only."""
    parts = [directory / part_name(name, first) for first in firsts]
    if not parts:
        raise TrainingError(f"no {name} parts were written")
    with parts[0].open("rb") as handle:
        shape, _, dtype = _read_header(handle)
    target = directory / f"{name}.npy"
    rows = 0
    with target.open("wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(out, header | {"shape": (total, *shape[1:])})
        for part in parts:
            with part.open("rb") as handle:
                part_shape, fortran, part_dtype = _read_header(handle)
                rows += part_shape[0]
                if part_dtype != dtype or part_shape[1:] != shape[1:] or fortran:
                    raise TrainingError(f"the executors' {name} parts differ in shape or type")
                shutil.copyfileobj(handle, out, 1 << 20)
            part.unlink()
    if rows != total:
        raise TrainingError(f"the executors' {name} parts hold {rows} rows, not {total}")
    joined: NDArray[Any] = np.load(target, mmap_mode="r")
    return joined


def _read_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)
