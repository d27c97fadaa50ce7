"""The interaction matrix, tiers, signals, triggers and best sellers per segment built by
Spark's executors (``[engine] kind = "spark"``), a task per range of customers, from the
merged rows the merge leaves on the executors (``MergedRows``).

A customer's part of the dataset depends on their own rows and the item side (which items
were sold, at what price, how popular), never on another customer's rows
(``training.dataset.build_dataset`` with ``items``). So the item side is summed from a
partial per task (``ItemSales``, item-sized) and broadcast, and each task builds its range
of customers with the single-host code and writes that range's arrays as ``.npy`` part
files. Their tiers, signals and triggers depend on their own purchase lines and on the
population (``training.tiers.Population``: the tier table's percentiles of everyone's
spend, by Spark, and the usual order hour); a second task per range builds them with
``build_crm(..., population=)`` and counts its best sellers per segment (summed here,
segment-sized); Spark sorts the triggers. The driver joins each array's parts by copying
bytes (a matrix's row counts become its ``indptr`` on the way) and memory-maps the result.
"""

from __future__ import annotations

import json
import pickle
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.bundle import CUSTOMER_FIGURES, TRIGGER_ARRAYS
from recsvc.identity import AliasDigests, IdentityKey
from recsvc.manifest import Contribution
from recsvc.policy import tier_indices
from training.config import EngineConfig, ModelParams
from training.dataset import ItemSales, Settlement, TrainingData, build_dataset, group_codes
from training.engine import parts_directory, quiet, spark_session
from training.errors import TrainingError
from training.interactions import accounting_of, outcome_counts
from training.segments import Sales, SegmentSales, sales_of
from training.spark_als import Ratings
from training.spark_candidates import (
    customer_side,
    join_parts,
    owned_lists,
    part_name,
    save_part,
    write_sorted_parts,
)
from training.spark_events import RECORD_SCHEMA, records_of
from training.spark_identity import alias_digests_on_executors
from training.tiers import (
    Crm,
    CustomerLines,
    Population,
    TierConfig,
    build_crm,
    order_slots,
    tier_levels,
    window_spend,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

NOTHING_TO_TRAIN = "nothing to train on: no source has a purchase that can be used"
# About how many merged rows one task builds at once: it holds them, their matrix and their
# lines together, as the single host holds the whole history's.
ROWS_PER_RANGE = 2_000_000

# The merged rows as the executors hold them: the merge's kept rows (``training.merge``),
# ``outcome`` a position in OUTCOMES, ``customer_id`` the canonical id ("" anonymous), the
# text columns codes into ``RowVocabulary``, ``stamp`` µs since the epoch (NULL undated).
ROW_SCHEMA = (
    "row_id long, outcome int, customer_id string, source_position int, trust float, "
    "quantity double, unit_price double, stamp long, order int, item_id int, "
    "description int, country int"
)
# A matrix of the dataset as its parts are written: per customer row, its entries' count.
MATRICES = ("interactions", "held", "owned", "feedback")
# A range's CustomerLines's and Sales's arrays, as its parts (its customers' rows numbered
# within the range).
LINES = (
    "row",
    "timestamp",
    "charged_at",
    "unit_price",
    "amount",
    "purchase",
    "order",
    "order_rows",
)
SALES = ("items", "rows", "countries", "weights")
# The folders of the ranges' Parquet parts: their customers' spend in the tier window, their
# owned items (``owned_lists``), and their triggers.
WINDOW_SPEND, OWNED_ITEMS, TRIGGERS = "window_spend", "owned_items", "triggers"


@dataclass(frozen=True)
class RowVocabulary:
    """What the merged rows' codes stand for (item-sized: broadcast to every task)."""

    source_names: list[str]
    item_ids: list[str]
    descriptions: list[str]
    countries: list[str]
    outcomes: list[str]  # training.merge.OUTCOMES

    def events(self, rows: pa.Table, customers: pd.Index | None = None) -> pd.DataFrame:
        """``rows`` (ROW_SCHEMA) as the merged events (``MergedHistory.events``), in row
        order; the customers' categories are ``customers`` (default: this table's own)."""
        rows = rows.sort_by("row_id")
        stamps = rows.column("stamp").fill_null(np.iinfo(np.int64).min).to_numpy()
        ids = rows.column("customer_id").to_numpy(zero_copy_only=False).astype(str)
        known = np.unique(np.append(ids, "")) if customers is None else customers
        events = pd.DataFrame(
            {
                "source": self._codes(rows, "source_position", self.source_names),
                "trust": rows.column("trust").to_numpy(),
                "customer_id": pd.Categorical(ids, known),
                "item_id": self._codes(rows, "item_id", self.item_ids),
                "quantity": rows.column("quantity").to_numpy(),
                "unit_price": rows.column("unit_price").to_numpy(),
                "timestamp": stamps.view("datetime64[us]"),
                "order": rows.column("order").to_numpy(),
                "description": self._codes(rows, "description", self.descriptions),
                "country": self._codes(rows, "country", self.countries),
                "outcome": self._codes(rows, "outcome", self.outcomes),
            }
        )
        return events

    @staticmethod
    def _codes(rows: pa.Table, column: str, values: list[str]) -> pd.Categorical:
        codes = rows.column(column).to_numpy().astype(np.int32)
        return pd.Categorical.from_codes(codes, pd.Index(values, dtype="str"))


@dataclass(frozen=True)
class MergedRows:
    """The merged rows (ROW_SCHEMA) as the merge leaves them on Spark's executors, held
    until ``release``d, and what their codes stand for."""

    frame: DataFrame
    vocabulary: RowVocabulary

    @classmethod
    def held(cls, frame: DataFrame, vocabulary: RowVocabulary) -> MergedRows:
        """``frame``'s rows computed now and held on the executors (in memory, spilled to
        their disks), so that they outlive what they were computed from."""
        from pyspark.sql import functions as F

        fields = _row_struct().fields
        typed = frame.select(*(F.col(f.name).cast(f.dataType) for f in fields)).persist()
        typed.count()
        return cls(typed, vocabulary)

    def collected(self, customers: pd.Index) -> pd.DataFrame:
        """Every row brought to the driver as the merged events (``MergedHistory.events``,
        ``customers`` the categories of their customer ids): for a history that fits in
        the driver's memory."""
        with quiet():
            return self.vocabulary.events(self.frame.toArrow(), customers)

    def release(self) -> None:
        self.frame.unpersist()


def built_on_executors(
    merged: MergedRows,
    aliases: DataFrame,
    records: DataFrame | None,
    item_groups: dict[str, str],
    params: ModelParams,
    tiers: TierConfig,
    engine: EngineConfig,
    key: IdentityKey,
    row_count: int,
) -> SparkDataset:
    """The dataset, tiers, signals, triggers and segments of the merged rows (``row_count``
    of them) and interaction ``records`` (``training.spark_events.RECORD_SCHEMA``; None:
    no event log), built by the executors a range of customers at a
    time: the dataset and each range's purchase lines and sales first
    (``dataset_on_executors``), then the population every range's tiers depend on (the
    tier table's percentiles by Spark), then each range's tiers, signals, triggers and
    best sellers (``crm_on_executors``). Then the bundle's alias table of ``aliases``
    (alias, customer), each digested with ``key`` and given its customer's row in the dataset."""
    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    half_life, trend_half_life = params.half_life_days, params.trend_half_life_days
    items = item_sales_on_executors(merged.frame, merged.vocabulary, half_life, trend_half_life)
    ranges = max(session.sparkContext.defaultParallelism, -(-row_count // ROWS_PER_RANGE))
    directory = parts_directory(engine)
    feedback_directory, customer_side_directory = parts_directory(engine), parts_directory(engine)
    try:
        data, written, interactions = dataset_on_executors(
            session,
            merged,
            records,
            items,
            params,
            item_groups,
            tiers.window_days,
            directory,
            feedback_directory,
            ranges,
            row_count,
        )
        population = population_of(session, directory, written, tiers)
        crm, segments = crm_on_executors(
            session,
            directory,
            customer_side_directory,
            written,
            items,
            merged.vocabulary,
            tiers,
            population,
        )
        digests = alias_digests_on_executors(aliases, directory / "customer_ids.npy", key, engine)
        # Last: persisted until the fits are done, released by ``SparkDataset.release``.
        ratings = ratings_on_executors(
            session, feedback_directory, written, params, len(items.item_ids)
        )
    except BaseException:
        shutil.rmtree(feedback_directory, ignore_errors=True)
        shutil.rmtree(customer_side_directory, ignore_errors=True)
        raise
    finally:
        # The joined files stay readable through their memory maps until these are dropped.
        shutil.rmtree(directory, ignore_errors=True)
    return SparkDataset(
        data,
        crm,
        segments,
        digests,
        interactions,
        ratings,
        feedback_directory,
        customer_side_directory,
    )


def ratings_on_executors(
    session: SparkSession,
    feedback_directory: Path,
    written: pa.Table,
    params: ModelParams,
    items: int,
) -> Ratings:
    """``training.fit.confidences`` of the ranges' feedback parts under
    ``feedback_directory`` (BM25, as implicit's ``bm25_weight`` computes it), by Spark: the
    customers numbered among all of them, held on the executors."""
    from pyspark.sql import functions as F

    firsts = pa.table({"part": written.column("part"), "first": _first_rows(written)})
    customers = int(pa.compute.sum(written.column("customers")).as_py() or 0)
    with quiet():
        offsets = session.createDataFrame(firsts)
    entries = (
        session.read.parquet(str(feedback_directory))
        .join(F.broadcast(offsets), "part")
        .select(
            (F.col("first") + F.col("row")).cast("int").alias("customer"),
            "item",
            F.col("value").cast("double").alias("value"),
        )
    )
    per_item = entries.groupBy("item").agg(F.count("*").alias("holders"))
    per_customer = entries.groupBy("customer").agg(F.sum("value").alias("length"))
    total = entries.agg(F.sum("value")).first()
    average = (0.0 if total is None or total[0] is None else float(total[0])) / max(customers, 1)
    k1, b = params.bm25_k1, params.bm25_b
    norm = (1.0 - b) + b * F.col("length") / F.lit(average)
    idf = F.log(F.lit(float(customers))) - F.log1p(F.col("holders"))
    confidence = F.col("value") * (k1 + 1.0) / (k1 * norm + F.col("value")) * idf
    frame = (
        entries.join(per_item, "item")
        .join(per_customer, "customer")
        .select("customer", "item", confidence.cast("float").alias("confidence"))
        .persist()
    )
    positive = frame.where(F.col("confidence") > 0).count()
    return Ratings(frame, customers, items, positive)


def contributions_on_executors(merged: MergedRows) -> dict[str, Contribution]:
    """``training.pipeline._contributions`` of the merged rows, by Spark."""
    from pyspark.sql import functions as F

    outcome = F.col("outcome")
    used = merged.vocabulary.outcomes.index("used")
    personal = outcome.isin(used, merged.vocabulary.outcomes.index("cancellation"))
    counts = (
        merged.frame.groupBy("source_position")
        .agg(
            F.sum(F.when(outcome == used, 1).otherwise(0)).alias("purchases"),
            F.countDistinct(F.when(personal, F.col("customer_id"))).alias("customers"),
            F.countDistinct("item_id").alias("items"),
        )
        .collect()
    )
    return {
        merged.vocabulary.source_names[row["source_position"]]: Contribution(
            purchases=int(row["purchases"]),
            customers=int(row["customers"]),
            items=int(row["items"]),
        )
        for row in counts
    }


@dataclass(frozen=True)
class SparkDataset:
    """What the executors build of the merged rows, joined and memory-mapped: the
    dataset, the tiers and signals (``training.tiers.build_crm``'s), the best sellers per
    segment (``training.segments.SegmentSales.arrays``), the alias table; and, left on the
    executors, the confidences ALS learns and what the ranking reads of each customer."""

    data: TrainingData
    crm: Crm
    segments: dict[str, NDArray[Any]]
    alias_digests: AliasDigests
    # Per event log, per interaction kind: read and each outcome (training.interactions).
    interactions: dict[str, dict[str, dict[str, int]]]
    # What Spark's ALS learns from, held on the executors until ``release``d (its feedback
    # parts, which the item-item fit reads too, are kept until then, under
    # ``feedback_directory``).
    ratings: Ratings
    feedback_directory: Path
    # Each range's ``training.spark_candidates.customer_side`` as a Parquet part, kept until
    # ``release``d.
    customer_side_directory: Path

    def release(self) -> None:
        # The parts first: they hold customers' data, and unpersisting fails where the
        # Spark context has died.
        shutil.rmtree(self.feedback_directory, ignore_errors=True)
        shutil.rmtree(self.customer_side_directory, ignore_errors=True)
        self.ratings.frame.unpersist()


def item_sales_on_executors(
    rows: DataFrame, vocabulary: RowVocabulary, half_life_days: float, trend_half_life: float
) -> ItemSales:
    """The item side of every merged row: each task's ``ItemSales`` of its rows, summed
    here (each is item-sized); ``as_of`` the rows' latest time, by Spark."""
    from pyspark.sql import functions as F

    latest = rows.agg(F.max("stamp")).first()
    as_of = None if latest is None or latest[0] is None else pd.Timestamp(latest[0], unit="us")

    def partials(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)
        if not received:
            return
        table = pa.Table.from_batches(received)
        events = vocabulary.events(table)
        row_ids = np.sort(table.column("row_id").to_numpy())
        part = ItemSales.of(events, as_of, half_life_days, trend_half_life, rows=row_ids)
        yield pa.RecordBatch.from_pydict({"part": [pickle.dumps(part)]})

    with quiet():
        found = rows.mapInArrow(partials, "part binary").toArrow()
    parts = [pickle.loads(blob) for blob in found.column("part").to_pylist()]
    combined = ItemSales.combined(parts) if parts else None
    if combined is None or not len(combined.item_ids):
        raise TrainingError(NOTHING_TO_TRAIN)
    return combined


def dataset_on_executors(
    session: SparkSession,
    merged: MergedRows,
    records: DataFrame | None,
    items: ItemSales,
    params: ModelParams,
    item_groups: dict[str, str],
    window_days: float,
    directory: Path,
    feedback_directory: Path,
    ranges: int,
    row_count: int,
) -> tuple[TrainingData, pa.Table, dict[str, dict[str, dict[str, int]]]]:
    """``build_dataset`` of every merged row and interaction record, with the item side
    ``items`` (``item_sales_on_executors``): a task per range of customers (``ranges`` of
    them, of about as many of the ``row_count`` rows each) writes that range's arrays
    under ``directory``; they are joined there and returned memory-mapped. Each range's
    purchase lines and sales are left there as parts (``LINES``, ``SALES``), with its
    customers' spend in the tier window (``window_days``) as a Parquet part, and its
    ``feedback`` entries as a Parquet part under ``feedback_directory``; the second value is
    what each range's task reported (``_WRITTEN_SCHEMA``), by range; the third the
    interaction records' accounting (``training.interactions.accounting``), counted by the
    ranges, which decide them."""
    from pyspark.sql import functions as F

    bounds = _range_bounds(merged.frame, ranges, row_count)
    # Anonymous rows (no customer's; they count in the sales) are spread over the ranges.
    anonymous = F.pmod(F.col("row_id"), F.lit(len(bounds) + 1)).cast("int")
    customer = F.col("customer_id")
    part = F.when(customer == "", anonymous).otherwise(_part(customer, bounds))
    grouped_rows = merged.frame.withColumn("part", part)
    if records is None:
        records = session.createDataFrame([], RECORD_SCHEMA)
    record_count = records.count()
    grouped_records = records.withColumn("part", _part(F.col("customer_id"), bounds))
    (directory / WINDOW_SPEND).mkdir()
    (directory / OWNED_ITEMS).mkdir()
    setup = _RangeSetup(
        merged.vocabulary,
        items,
        params,
        item_groups,
        window_days,
        str(directory),
        str(feedback_directory),
    )
    shared = session.sparkContext.broadcast(setup)

    def build(key: tuple[Any, ...], mine: pa.Table, logged: pa.Table) -> pa.Table:
        return _build_range(int(key[0].as_py()), mine, logged, shared.value)

    with quiet():
        written = (
            grouped_rows.groupBy("part")
            .cogroup(grouped_records.groupBy("part"))
            .applyInArrow(build, _WRITTEN_SCHEMA)
            .toArrow()
            .sort_by("part")
        )
    shared.unpersist()
    data = _joined(written, directory, items, merged.vocabulary, item_groups)
    counts = [
        (source, kind, int(code), int(count))
        for part in written.column("interactions").to_pylist()
        for source, kind, code, count in json.loads(part)
    ]
    if sum(count for *_, count in counts) != record_count:
        raise TrainingError("the executors' dataset parts do not decide every record once")
    return data, written, accounting_of(counts)


@dataclass(frozen=True)
class _RangeSetup:
    """What every range's task needs besides its rows (broadcast once)."""

    vocabulary: RowVocabulary
    items: ItemSales
    params: ModelParams
    item_groups: dict[str, str]
    window_days: float
    directory: str
    feedback_directory: str  # where each range's feedback goes, as a Parquet part


_WRITTEN_SCHEMA = (
    "part int, customers long, "
    + ", ".join(f"{name}_entries long" for name in MATRICES)
    + ", settlement string, customer_id_width int, "
    "interactions string, hours array<long>, weekdays array<long>"
)


def row_arrow_schema() -> pa.Schema:
    """ROW_SCHEMA as Arrow types it."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(_row_struct())


def _row_struct() -> StructType:
    from pyspark.sql.types import StructType, _parse_datatype_string

    schema = _parse_datatype_string(ROW_SCHEMA)
    assert isinstance(schema, StructType)
    return schema


def _range_bounds(rows: DataFrame, ranges: int, row_count: int) -> list[str]:
    """Customer ids splitting the merged rows (``row_count`` of them) into ``ranges``
    ranges of customers with about as many rows each: quantiles of a sample of about 1,000
    rows per range (the only rows brought here)."""
    from pyspark.sql import functions as F

    if ranges <= 1 or row_count <= 0:
        return []
    fraction = min(1.0, 1_000 * ranges / row_count)
    known = rows.where(F.col("customer_id") != "").select("customer_id")
    with quiet():
        drawn = known.sample(fraction=fraction, seed=0).toArrow().column("customer_id")
    sample = np.sort(drawn.to_numpy(zero_copy_only=False).astype(str))
    if not len(sample):
        return []
    cuts = (np.arange(1, ranges) * len(sample)) // ranges
    return sorted(set(sample[cuts].tolist()))


def _part(customer: Any, bounds: list[str]) -> Any:
    """The range of ``customer`` (a Column): how many bounds are below it ("", no
    customer: the first)."""
    from pyspark.sql import functions as F

    part = F.lit(0)
    for bound in bounds:
        part = part + F.when(customer > F.lit(bound), 1).otherwise(0)
    return part


def _build_range(part: int, mine: pa.Table, logged: pa.Table, setup: _RangeSetup) -> pa.Table:
    """One range's dataset, written as its part files; what the driver needs to join them."""
    records = records_of(logged)
    events = setup.vocabulary.events(mine)
    params, items = setup.params, setup.items
    data = build_dataset(
        events,
        params.half_life_days,
        params.trend_half_life_days,
        setup.item_groups,
        records,
        params.weights,
        items=items,
    )
    folder = Path(setup.directory)
    for name in MATRICES:
        matrix: sp.csr_matrix = getattr(data, name)
        save_part(folder, f"{name}_counts", part, np.diff(matrix.indptr).astype(np.int64))
        save_part(folder, f"{name}_indices", part, matrix.indices.astype(np.int32))
        save_part(folder, f"{name}_data", part, matrix.data.astype(np.float32))
    save_part(folder, "held_source", part, data.held_source)
    # The owned items (the held matrix's) with their decayed weights (the interactions',
    # entry for entry): what the ranking reads of them, completed by the tiers task.
    _write_parquet(
        owned_lists(data.held.indptr, data.held.indices, data.interactions.data),
        folder / OWNED_ITEMS,
        part,
    )
    feedback = data.feedback.tocoo()
    _write_parquet(
        pa.table(
            {
                "part": pa.array(np.full(feedback.nnz, part, np.int32)),
                "row": pa.array(feedback.row.astype(np.int32)),
                "item": pa.array(feedback.col.astype(np.int32)),
                "value": pa.array(feedback.data.astype(np.float32)),
            }
        ),
        Path(setup.feedback_directory),
        part,
    )
    del feedback
    width = max((len(customer) for customer in data.customer_ids), default=1)
    save_part(folder, "customer_ids", part, data.customer_ids.astype(f"<U{width}"))
    save_part(folder, "spend", part, data.spend)
    save_part(folder, "orders", part, data.orders)
    lines = CustomerLines.of(events, data.customer_ids, data.settlement)
    for name in LINES:
        save_part(folder, f"line_{name}", part, getattr(lines, name))
    sales = sales_of(events, items.item_ids, data.customer_ids, items.as_of, params.half_life_days)
    for name in SALES:
        save_part(folder, f"sale_{name}", part, getattr(sales, name))
    customers = len(data.customer_ids)
    spend = window_spend(lines, customers, items.as_of, setup.window_days)
    _write_parquet(pa.table({"spend": spend}), folder / WINDOW_SPEND, part)
    hours, weekdays = order_slots(lines)
    return pa.table(
        {
            "part": pa.array([part], pa.int32()),
            "customers": pa.array([customers], pa.int64()),
            **{
                f"{name}_entries": pa.array([getattr(data, name).nnz], pa.int64())
                for name in MATRICES
            },
            "settlement": pa.array([json.dumps(data.settlement.report)]),
            "customer_id_width": pa.array([width], pa.int32()),
            "interactions": pa.array(
                [json.dumps(outcome_counts(records, data.interaction_outcome))]
            ),
            "hours": pa.array([hours], pa.list_(pa.int64())),
            "weekdays": pa.array([weekdays], pa.list_(pa.int64())),
        }
    )


def _parquet_name(part: int) -> str:
    return f"{part:012d}.parquet"


def _write_parquet(table: pa.Table, folder: Path, part: int) -> None:
    """Range ``part``'s Parquet part in ``folder``, written under a hidden name (which
    Spark's reader skips) and renamed whole: a task Spark runs twice, or again, never leaves
    a file half written where a reader of the folder finds it."""
    target = folder / _parquet_name(part)
    staged = folder / f".{target.name}.{uuid.uuid4().hex}"
    pq.write_table(table, staged)
    staged.replace(target)


def _joined(
    written: pa.Table,
    directory: Path,
    items: ItemSales,
    vocabulary: RowVocabulary,
    item_groups: dict[str, str],
) -> TrainingData:
    parts = written.column("part").to_pylist()

    def total(column: str) -> int:
        return int(pa.compute.sum(written.column(column)).as_py() or 0)

    def joined(name: str, count: int) -> NDArray[Any]:
        return join_parts(directory, name, parts, count)

    customers = total("customers")
    shape = (customers, len(items.item_ids))
    matrices = {}
    for name in MATRICES:
        entries = total(f"{name}_entries")
        counts = joined(f"{name}_counts", customers)
        indptr = np.lib.format.open_memmap(
            directory / f"{name}_indptr.npy", "w+", np.int64, (customers + 1,)
        )
        indptr[0] = 0
        np.cumsum(counts, out=indptr[1:])
        indptr.flush()
        matrices[name] = sp.csr_matrix(
            (joined(f"{name}_data", entries), joined(f"{name}_indices", entries), indptr),
            shape=shape,
            copy=False,
        )
    width = max(written.column("customer_id_width").to_pylist(), default=1)
    _widen(directory, "customer_ids", parts, width)
    report: dict[str, float] = {}
    for figures in written.column("settlement").to_pylist():
        for figure, value in json.loads(figures).items():
            report[figure] = report.get(figure, 0) + value
    report["clamped_quantity"] = round(report["clamped_quantity"], 4)  # as settle_returns
    return TrainingData(
        customer_ids=joined("customer_ids", customers),
        item_ids=items.item_ids,
        interactions=matrices["interactions"],
        held=matrices["held"],
        held_source=joined("held_source", int(matrices["held"].nnz)),
        source_names=np.array(vocabulary.source_names, dtype=str),
        owned=matrices["owned"],
        item_group=group_codes(items.item_ids, item_groups),
        spend=joined("spend", customers),
        orders=joined("orders", customers),
        titles=items.titles(),
        prices=items.prices(),
        popularity=items.popularity,
        trending=items.trending,
        as_of=items.as_of,
        # The report alone: each range settled its own returns, where its lines were made.
        settlement=Settlement(
            np.zeros(0, np.intp), np.zeros(0), np.zeros(0, "datetime64[us]"), report
        ),
        feedback=matrices["feedback"],
        # Decided and counted by the ranges (``dataset_on_executors``), not gathered here.
        interaction_outcome=np.zeros(0, np.int8),
    )


def _first_rows(written: pa.Table) -> NDArray[np.int64]:
    """Each range's first customer row among all customers (``written`` by range)."""
    counts = written.column("customers").to_numpy()
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _widen(directory: Path, name: str, parts: list[int], width: int) -> None:
    """Each part of string array ``name`` rewritten at the widest part's string width, so
    that the parts join byte for byte (a part is a range's, so rewriting it is range-sized)."""
    for part in parts:
        path = directory / part_name(name, part)
        values = np.load(path)
        if values.dtype.itemsize != np.dtype(f"<U{width}").itemsize:
            np.save(path, values.astype(f"<U{width}"))


def population_of(
    session: SparkSession, directory: Path, written: pa.Table, tiers: TierConfig
) -> Population:
    """What every range's tiers depend on: the tier table, whose percentiles Spark takes
    of the ranges' window spend parts (exact, interpolated as ``np.percentile``), and the
    usual order hour and weekday from the ranges' ``order_slots``."""
    from pyspark.sql import functions as F

    wanted = sorted(
        {
            level.min_percentile
            for level in tiers.levels
            if tiers.method == "percentiles"
            and level.min_percentile is not None
            and level.min_percentile > 0
        }
    )
    found: dict[float, float | None] = {}
    if wanted:
        spenders = session.read.parquet(str(directory / WINDOW_SPEND)).where("spend > 0")
        row = spenders.agg(
            *(F.percentile("spend", q / 100).alias(f"p{i}") for i, q in enumerate(wanted))
        ).first()
        assert row is not None
        found = {q: None if row[i] is None else float(row[i]) for i, q in enumerate(wanted)}
    hours = np.sum(written.column("hours").to_pylist(), axis=0)
    weekdays = np.sum(written.column("weekdays").to_pylist(), axis=0)
    return Population.with_slots(tier_levels(tiers, found.get), hours, weekdays)


def crm_on_executors(
    session: SparkSession,
    directory: Path,
    customer_side_directory: Path,
    written: pa.Table,
    items: ItemSales,
    vocabulary: RowVocabulary,
    tiers: TierConfig,
    population: Population,
) -> tuple[Crm, dict[str, NDArray[Any]]]:
    """``build_crm`` and the best sellers per segment of every range, from the purchase
    lines and sales ``dataset_on_executors`` left under ``directory``, a task per range;
    the per-customer arrays joined and memory-mapped, the triggers sorted by Spark as one
    history's are (time, customer row, kind). Each range's ``customer_side`` (what the
    ranking reads of its customers) is written as a Parquet part under
    ``customer_side_directory``."""
    parts = written.column("part").to_pylist()
    counts = written.column("customers").to_numpy()
    (directory / TRIGGERS).mkdir()
    setup = _CrmSetup(
        items.item_ids,
        items.prices(),
        items.as_of,
        np.array(vocabulary.countries, dtype=str),
        tiers,
        population,
        str(directory),
        str(customer_side_directory),
    )
    shared = session.sparkContext.broadcast(setup)

    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ranges = batch.to_pydict()
            for part, customers, first in zip(
                ranges["part"], ranges["customers"], ranges["first"], strict=True
            ):
                yield _crm_range(part, customers, first, shared.value)

    ranges = pa.table(
        {
            "part": pa.array(parts, pa.int32()),
            "customers": pa.array(counts, pa.int64()),
            "first": pa.array(_first_rows(written)),
        }
    )
    with quiet():
        frame = session.createDataFrame(ranges).repartition(len(parts))
        done = frame.mapInArrow(build, _CRM_SCHEMA).toArrow().sort_by("part")
    shared.unpersist()
    total = int(counts.sum())
    base = build_crm(_no_lines(), 0, items.item_ids, items.prices(), items.as_of, tiers, population)
    arrays = dict(base.arrays)
    for name in _customer_figures(base):
        arrays[name] = join_parts(directory, name, parts, total)
    arrays |= _sorted_triggers(session, directory)
    per_tier = np.sum(done.column("customers_per_tier").to_pylist(), axis=0)
    policy = msgspec.structs.replace(
        base.policy,
        customers_per_tier={
            level.name: int(count) for level, count in zip(population.levels, per_tier, strict=True)
        },
    )
    segments = SegmentSales.combined(
        [pickle.loads(blob) for blob in done.column("segments").to_pylist()]
    )
    return Crm(arrays, policy), segments.arrays()


_CRM_SCHEMA = "part int, customers_per_tier array<long>, segments binary"
_TRIGGER_TEXT = ("trigger_kinds", "trigger_reasons", "trigger_figures")


@dataclass(frozen=True)
class _CrmSetup:
    """What every range's tiers task needs besides its lines and sales (broadcast once)."""

    item_ids: NDArray[np.str_]
    prices: NDArray[np.float64]
    as_of: pd.Timestamp | None
    country_names: NDArray[np.str_]
    tiers: TierConfig
    population: Population
    directory: str
    customer_side_directory: str


def _crm_range(part: int, customers: int, first: int, setup: _CrmSetup) -> pa.RecordBatch:
    """One range's tiers, signals and best sellers, from its lines and sales parts: the
    per-customer arrays written as parts, the triggers and the ``customer_side`` as
    Parquet parts (rows numbered among all customers: the range's first is ``first``)."""
    folder = Path(setup.directory)

    def load(name: str) -> NDArray[Any]:
        # Left in place (the driver removes the folder): a task Spark runs again reads them.
        values: NDArray[Any] = np.load(folder / part_name(name, part))
        return values

    lines = CustomerLines(**{name: load(f"line_{name}") for name in LINES})
    crm = build_crm(
        lines,
        customers,
        setup.item_ids,
        setup.prices,
        setup.as_of,
        setup.tiers,
        setup.population,
    )
    for name in _customer_figures(crm):
        save_part(folder, name, part, crm.arrays[name])
    owned = pq.read_table(folder / OWNED_ITEMS / _parquet_name(part))
    if owned.num_rows != customers:
        raise TrainingError(f"range {part}'s owned items are not its customers'")
    side = customer_side(
        first,
        owned,
        crm.arrays["window_spend"],
        crm.arrays["price_low"],
        crm.arrays["price_high"],
    )
    _write_parquet(side, Path(setup.customer_side_directory), part)
    rows = crm.arrays["trigger_rows"]
    triggers = pa.table(
        {
            "row": pa.array(rows.astype(np.int64) + first),
            "position": pa.array(np.arange(len(rows), dtype=np.int64)),
            **{name: pa.array(crm.arrays[name]) for name in TRIGGER_ARRAYS},
        }
    )
    _write_parquet(triggers, folder / TRIGGERS, part)
    sales = Sales(
        **{name: load(f"sale_{name}") for name in SALES}, country_names=setup.country_names
    )
    levels = setup.population.levels
    tiers = tier_indices(levels, crm.arrays["window_spend"])
    segments = SegmentSales.of(sales, len(setup.item_ids), tiers, [level.name for level in levels])
    return pa.RecordBatch.from_pydict(
        {
            "part": pa.array([part], pa.int32()),
            "customers_per_tier": pa.array(
                [np.bincount(tiers, minlength=len(levels))], pa.list_(pa.int64())
            ),
            "segments": pa.array([pickle.dumps(segments)], pa.binary()),
        }
    )


def _customer_figures(crm: Crm) -> list[str]:
    """The bundle's per-customer figures ``build_crm`` makes (the others are per item, or
    triggers)."""
    return [name for name in CUSTOMER_FIGURES if name in crm.arrays]


def _no_lines() -> CustomerLines:
    """No customer's lines: what ``build_crm`` makes of them is the item side alone."""
    return CustomerLines(
        row=np.zeros(0, np.int32),
        timestamp=np.zeros(0, "datetime64[us]"),
        charged_at=np.zeros(0, "datetime64[us]"),
        unit_price=np.zeros(0),
        amount=np.zeros(0),
        purchase=np.zeros(0, bool),
        order=np.zeros(0, np.int32),
        order_rows=np.zeros(0, np.int64),
    )


def _sorted_triggers(session: SparkSession, directory: Path) -> dict[str, NDArray[Any]]:
    """Every range's triggers in the order one history's are (time, customer row, kind;
    then the order its customer's came in), sorted by Spark; each sorted partition's
    written as parts by its task and joined here in partition order ({}: there are none)."""
    triggers = session.read.parquet(str(directory / TRIGGERS))
    ordered = triggers.orderBy("trigger_at", "row", "trigger_kinds", "position")

    def arrays(table: pa.Table) -> dict[str, NDArray[Any]]:
        found = {}
        for name in TRIGGER_ARRAYS:
            values = table.column(name).to_numpy(zero_copy_only=False)
            found[name] = values.astype(str) if name in _TRIGGER_TEXT else values
        found["trigger_rows"] = table.column("row").to_numpy().astype(np.int32)
        return found

    parts, total = write_sorted_parts(ordered, directory, arrays)
    if not parts:
        return {}
    for name in _TRIGGER_TEXT:
        widths = [np.load(directory / part_name(name, part), mmap_mode="r").dtype for part in parts]
        _widen(directory, name, parts, max(1, *(width.itemsize // 4 for width in widths)))
    return {
        name: join_parts(directory, name, parts, total)
        for name in ("trigger_rows", *TRIGGER_ARRAYS)
    }
