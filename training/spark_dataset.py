"""The interaction matrix built by Spark's executors (``[engine] kind = "spark"``), a task
per range of customers, from the merged rows left on the executors.

A customer's part of the dataset depends on their own rows and the item side (which items
were sold, at what price, how popular), never on another customer's rows
(``training.dataset.build_dataset`` with ``items``). So the item side is summed from a
partial per task (``ItemSales``, item-sized), broadcast, and each task builds its range of
customers with the single-host code and writes that range's arrays as ``.npy`` part files.
The driver joins each array's parts by copying bytes (a matrix's row counts become its
``indptr`` on the way) and memory-maps the result: its memory does not grow with the rows.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from training.dataset import ItemSales, Settlement, TrainingData, build_dataset, group_codes
from training.engine import quiet
from training.errors import TrainingError
from training.interactions import InteractionWeights, records_frame
from training.segments import Sales, sales_of
from training.spark_candidates import join_parts, part_name
from training.tiers import CustomerLines

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The merged rows as the executors hold them: the merge's kept rows (``training.merge``),
# ``outcome`` a position in OUTCOMES, ``customer_id`` the canonical id ("" anonymous), the
# text columns codes into ``RowVocabulary``, ``stamp`` µs since the epoch (NULL undated).
ROW_SCHEMA = (
    "row_id long, outcome int, customer_id string, source_position int, trust float, "
    "quantity double, unit_price double, stamp long, order int, item_id int, "
    "description int, country int"
)
# The event logs' interaction records (``training.interactions.COLUMNS``) as sent to the
# executors, with their position among the records.
RECORD_SCHEMA = (
    "record long, source string, kind string, customer_id string, item_id string, "
    "stamp long, trust float, outcome byte"
)
# A matrix of the dataset as its parts are written: per customer row, its entries' count.
MATRICES = ("interactions", "held", "owned", "feedback")
# CustomerLines's arrays (a part's numbered within it: its ``row``s, ``order``s and
# ``order_rows`` are shifted when joined) and Sales's.
LINES = ("row", "timestamp", "charged_at", "unit_price", "amount", "purchase", "order")
SALES = ("items", "rows", "countries", "weights")
_SETTLEMENT_FIGURES = (
    "returns",
    "charged_to_purchase_date",
    "unmatched",
    "clamped",
    "clamped_quantity",
)


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
        known = np.unique(["", *ids]) if customers is None else customers
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
        from pyspark.sql.types import StructType, _parse_datatype_string

        schema = _parse_datatype_string(ROW_SCHEMA)
        assert isinstance(schema, StructType)
        typed = frame.select(*(F.col(f.name).cast(f.dataType) for f in schema.fields)).persist()
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


@dataclass(frozen=True)
class SparkDataset:
    """What the executors build of the merged rows, joined and memory-mapped: the
    dataset, the customers' purchase lines (for their tiers and signals) and the sales
    (for the best sellers per segment)."""

    data: TrainingData
    lines: CustomerLines
    sales: Sales


def item_sales_on_executors(
    rows: DataFrame, vocabulary: RowVocabulary, half_life_days: float, trend_half_life: float
) -> ItemSales:
    """The item side of every merged row: each task's ``ItemSales`` of its rows, summed
    here (each is item-sized); ``as_of`` the rows' latest time, by Spark."""
    from pyspark.sql import functions as F

    latest = rows.agg(F.max("stamp")).first()
    as_of = None if latest is None or latest[0] is None else pd.Timestamp(latest[0], unit="us")
    schema = row_arrow_schema()

    def partials(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches), schema=schema)
        if not table.num_rows:
            return
        events = vocabulary.events(table)
        row_ids = np.sort(table.column("row_id").to_numpy())
        part = ItemSales.of(events, as_of, half_life_days, trend_half_life, rows=row_ids)
        yield pa.RecordBatch.from_pydict({"part": [pickle.dumps(part)]})

    with quiet():
        found = rows.mapInArrow(partials, "part binary").toArrow()
    parts = [pickle.loads(blob) for blob in found.column("part").to_pylist()]
    if not parts:
        raise TrainingError("nothing to train on: no merged rows")
    return ItemSales.combined(parts)


def dataset_on_executors(
    session: SparkSession,
    rows: DataFrame,
    records: pd.DataFrame,
    vocabulary: RowVocabulary,
    items: ItemSales,
    half_life_days: float,
    trend_half_life: float,
    item_groups: dict[str, str],
    weights: InteractionWeights,
    directory: Path,
    ranges: int,
) -> SparkDataset:
    """``build_dataset`` of every merged row (``rows``, ROW_SCHEMA) and interaction record,
    with the item side ``items`` (``item_sales_on_executors``): a task per range of
    customers (``ranges`` of them, split by customer id) writes that range's arrays under
    ``directory``; they are joined there and returned memory-mapped."""
    from pyspark.sql import functions as F

    bounds = _range_bounds(rows, ranges)
    part_of_rows = _part(F.col("customer_id"), bounds)
    grouped_rows = rows.withColumn("part", part_of_rows).groupBy("part")
    record_rows = _records_table(records)
    with quiet():
        sent = session.createDataFrame(record_rows, schema=RECORD_SCHEMA)
    grouped_records = sent.withColumn("part", _part(F.col("customer_id"), bounds)).groupBy("part")
    shared = session.sparkContext.broadcast(
        (vocabulary, items, half_life_days, trend_half_life, item_groups, weights, str(directory))
    )

    def build(key: tuple[Any, ...], mine: pa.Table, logged: pa.Table) -> pa.Table:
        return _build_range(int(key[0].as_py()), mine, logged, *shared.value)

    with quiet():
        written = (
            grouped_rows.cogroup(grouped_records).applyInArrow(build, _WRITTEN_SCHEMA).toArrow()
        )
    shared.unpersist()
    return _joined(written, directory, items, vocabulary, item_groups, len(records))


_WRITTEN_SCHEMA = (
    "part int, customers long, lines long, orders long, sales long, "
    + ", ".join(f"{name}_entries long" for name in MATRICES)
    + ", settlement string, customer_id_width int, record array<long>, "
    "record_outcome array<byte>"
)


def row_arrow_schema() -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType, _parse_datatype_string

    schema = _parse_datatype_string(ROW_SCHEMA)
    assert isinstance(schema, StructType)
    return to_arrow_schema(schema)


def _range_bounds(rows: DataFrame, ranges: int) -> list[str]:
    """Customer ids splitting the customers into ``ranges`` ranges of about equal size
    (Spark's approximate quantiles of the distinct ids' positions)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if ranges <= 1:
        return []
    customers = rows.where(F.col("customer_id") != "").select("customer_id").distinct()
    numbered = customers.withColumn("position", F.row_number().over(Window.orderBy("customer_id")))
    total = customers.count()
    cuts = sorted({max(1, total * k // ranges) for k in range(1, ranges)})
    found = numbered.where(F.col("position").isin(cuts)).orderBy("position").collect()
    return [str(row["customer_id"]) for row in found]


def _part(customer: Any, bounds: list[str]) -> Any:
    """The range of ``customer`` (a Column): how many bounds are below it; anonymous rows
    ("") fall in the first."""
    from pyspark.sql import functions as F

    part = F.lit(0)
    for bound in bounds:
        part = part + F.when(customer > F.lit(bound), 1).otherwise(0)
    return part


def _records_table(records: pd.DataFrame) -> pa.Table:
    stamps = records["timestamp"].to_numpy().astype("datetime64[us]")
    return pa.table(
        {
            "record": pa.array(np.arange(len(records), dtype=np.int64)),
            **{
                column: pa.array(records[column].astype("str").to_numpy(), pa.string())
                for column in ("source", "kind", "customer_id", "item_id")
            },
            "stamp": pa.array(stamps.view(np.int64), mask=np.isnat(stamps)),
            "trust": pa.array(records["trust"].to_numpy(np.float32)),
            "outcome": pa.array(records["outcome"].to_numpy(np.int8)),
        }
    )


def _records_frame(logged: pa.Table) -> pd.DataFrame:
    stamps = logged.column("stamp").fill_null(np.iinfo(np.int64).min).to_numpy()
    frame = pd.DataFrame(
        {
            **{
                column: logged.column(column).to_numpy(zero_copy_only=False).astype(str)
                for column in ("source", "kind", "customer_id", "item_id")
            },
            "timestamp": stamps.view("datetime64[us]"),
            "trust": logged.column("trust").to_numpy().astype(np.float32),
            "outcome": logged.column("outcome").to_numpy().astype(np.int8),
        }
    )
    return records_frame([frame])


def _build_range(
    part: int,
    mine: pa.Table,
    logged: pa.Table,
    vocabulary: RowVocabulary,
    items: ItemSales,
    half_life_days: float,
    trend_half_life: float,
    item_groups: dict[str, str],
    weights: InteractionWeights,
    directory: str,
) -> pa.Table:
    """One range's dataset, written as its part files; what the driver needs to join them."""
    logged = logged.sort_by("record")
    events = vocabulary.events(mine)
    data = build_dataset(
        events,
        half_life_days,
        trend_half_life,
        item_groups,
        _records_frame(logged),
        weights,
        items=items,
    )
    folder = Path(directory)
    for name in MATRICES:
        matrix: sp.csr_matrix = getattr(data, name)
        _save(folder, f"{name}_counts", part, np.diff(matrix.indptr).astype(np.int64))
        _save(folder, f"{name}_indices", part, matrix.indices.astype(np.int32))
        _save(folder, f"{name}_data", part, matrix.data.astype(np.float32))
    _save(folder, "held_source", part, data.held_source)
    width = max((len(customer) for customer in data.customer_ids), default=1)
    _save(folder, "customer_ids", part, data.customer_ids.astype(f"<U{width}"))
    _save(folder, "spend", part, data.spend)
    _save(folder, "orders", part, data.orders)
    lines = CustomerLines.of(events, data.customer_ids, data.settlement)
    for name in LINES:
        _save(folder, f"line_{name}", part, getattr(lines, name))
    _save(folder, "line_order_rows", part, lines.order_rows)
    sales = sales_of(events, items.item_ids, data.customer_ids, items.as_of, half_life_days)
    for name in SALES:
        _save(folder, f"sale_{name}", part, getattr(sales, name))
    return pa.table(
        {
            "part": pa.array([part], pa.int32()),
            "customers": pa.array([len(data.customer_ids)], pa.int64()),
            "lines": pa.array([len(lines.row)], pa.int64()),
            "orders": pa.array([len(lines.order_rows)], pa.int64()),
            "sales": pa.array([len(sales.items)], pa.int64()),
            **{
                f"{name}_entries": pa.array([getattr(data, name).nnz], pa.int64())
                for name in MATRICES
            },
            "settlement": pa.array([json.dumps(data.settlement.report)]),
            "customer_id_width": pa.array([width], pa.int32()),
            "record": pa.array([logged.column("record").to_numpy()], pa.list_(pa.int64())),
            "record_outcome": pa.array([data.interaction_outcome], pa.list_(pa.int8())),
        }
    )


def _save(folder: Path, name: str, part: int, array: NDArray[Any]) -> None:
    np.save(folder / part_name(name, part), np.ascontiguousarray(array))


def _joined(
    written: pa.Table,
    directory: Path,
    items: ItemSales,
    vocabulary: RowVocabulary,
    item_groups: dict[str, str],
    record_count: int,
) -> SparkDataset:
    written = written.sort_by("part")
    parts = written.column("part").to_pylist()

    def total(column: str) -> int:
        return int(pa.compute.sum(written.column(column)).as_py() or 0)

    def firsts(column: str) -> list[int]:
        counts = written.column(column).to_numpy()
        return [int(first) for first in np.concatenate([[0], np.cumsum(counts)[:-1]])]

    def joined(name: str, count: int, shifts: list[int] | None = None) -> NDArray[Any]:
        return join_parts(directory, name, parts, count, shifts)

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
    _widen(directory, parts, width)
    report: dict[str, float] = dict.fromkeys(_SETTLEMENT_FIGURES, 0)
    for figures in written.column("settlement").to_pylist():
        for figure, value in json.loads(figures).items():
            report[figure] += value
    report["clamped_quantity"] = round(report["clamped_quantity"], 4)
    outcome = np.full(record_count, -1, np.int8)
    for positions, outcomes in zip(
        written.column("record").to_pylist(),
        written.column("record_outcome").to_pylist(),
        strict=True,
    ):
        outcome[positions] = outcomes
    if (outcome < 0).any():
        raise TrainingError("the executors' dataset parts do not decide every record once")
    data = TrainingData(
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
        settlement=Settlement(
            np.zeros(0, np.intp), np.zeros(0), np.zeros(0, "datetime64[us]"), report
        ),
        feedback=matrices["feedback"],
        interaction_outcome=outcome,
    )
    lines = total("lines")
    first_rows, first_orders = firsts("customers"), firsts("orders")
    order = joined("line_order", lines, first_orders)
    customer_lines = CustomerLines(
        row=joined("line_row", lines, first_rows),
        timestamp=joined("line_timestamp", lines),
        charged_at=joined("line_charged_at", lines),
        unit_price=joined("line_unit_price", lines),
        amount=joined("line_amount", lines),
        purchase=joined("line_purchase", lines),
        order=order,
        order_rows=joined("line_order_rows", total("orders"), first_rows),
    )
    sales = total("sales")
    sold = Sales(
        items=joined("sale_items", sales),
        rows=joined("sale_rows", sales, first_rows),  # -1 (anonymous) stays
        countries=joined("sale_countries", sales),
        weights=joined("sale_weights", sales),
        country_names=np.array(vocabulary.countries, dtype=str),
    )
    return SparkDataset(data, customer_lines, sold)


def _widen(directory: Path, parts: list[int], width: int) -> None:
    """Each range's customer id part rewritten at the widest part's string width, so that
    the parts join byte for byte (each part is a range's, so rewriting it is range-sized)."""
    for part in parts:
        path = directory / part_name("customer_ids", part)
        ids = np.load(path)
        if ids.dtype.itemsize != np.dtype(f"<U{width}").itemsize:
            np.save(path, ids.astype(f"<U{width}"))
