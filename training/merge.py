"""Merging sources into one purchase history, with every input row accounted for.

Each row gets exactly one outcome, decided in this order:

1. ``quarantined`` (reason ``malformed_row``): a CSV row with more or fewer fields than its
   header; (reason ``missing_item``): no item id.
2. ``adjustment``: the item is not a product (postage, fees, discounts, vouchers; see ItemRules).
3. ``quarantined`` with a reason: unparseable or impossible quantity, price or timestamp
   (zero, negative price, beyond MAX_QUANTITY or MAX_UNIT_PRICE, more than a day in the future).
   Then ``erased``: the row belongs to a customer on the service's erasure list: one alias
   of theirs is listed, and every row linked to it is theirs, in every source. It is not used
   at all, and takes no part in linking the others; quarantined rows of theirs stay counted
   as quarantined, without their values.
4. ``duplicate``: the same order line (order id, item, quantity, timestamp) was already read
   from an earlier source. A line repeated inside one source is kept as many times as it appears
   there; only the copies that another source also holds count once. In the service's event
   log, where ids are unique, a repeated event id is a duplicate.
5. ``anonymous``: no customer id, email or phone that identifies anyone. Sales count for
   popularity, not for anyone's history.
6. ``cancellation``: order id with the source's cancellation prefix, or a negative quantity.
   Applied as a negative quantity: it reduces what the customer holds and what they spent.
7. ``used``: a purchase by a known customer.

Before that, each row's identifiers are linked across sources (``training.identity``) and its
item id is mapped through the item crosswalk; prices are converted to the shop currency and
naive timestamps read in the source's time zone.

Steps 1-3 are decided in Python as each source is parsed, once per distinct value (with
Spark, a file per executor task: ``training.spark_sources``). From
there on, every decision about rows is SQL, written once below and run by the engine the
config names (``training.engine``: DuckDB in this process, or Spark SQL). Linking, a
union-find with order-dependent guards, is ``training.identity.link_nodes``, fed the distinct
combinations of aliases by the engine: in this process with DuckDB; with Spark, run by the
executors on whole components of the alias graph (``training.spark_identity``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.identity import (
    CANONICAL,
    EMAIL,
    PHONE,
    SESSION,
    SESSION_PREFIX,
    IdentityKey,
    IdentityRules,
    normalise_email,
    normalise_phone,
)
from recsvc.logrecords import ALIAS_DIGESTS
from recsvc.manifest import ErasureReport, Identity, InvalidContacts
from recsvc.schemas import (  # the API's bounds, one definition
    MAX_QUANTITY,
    MAX_UNIT_PRICE,
)
from training import spark_events, spark_identity
from training.config import EngineConfig, IdentityConfig, ItemRules, SourceConfig
from training.crosswalk import (
    ItemCrosswalk,
    load_customer_crosswalk,
    load_item_crosswalk,
    training_alias,
)
from training.engine import Engine, SparkEngine, parts_directory, sorted_strings
from training.engine import engine as open_engine
from training.errors import SourceError
from training.identity import PRIMARY_NAMESPACE, link_nodes
from training.interactions import merged_outcomes, records_frame
from training.quarantine import QuarantinedRows, quarantine_columns
from training.sessions import is_session, stitch_sessions
from training.sources import (
    DatabaseSlices,
    SourceFiles,
    SourceInput,
    SourceRows,
    is_text,
    read_source,
    typed_as_text,
    wall_time_in_utc,
)
from training.spark_dataset import MergedRows, RowVocabulary, row_arrow_schema
from training.spark_identity import collected_aliases
from training.spark_sources import (
    VALUE_COLUMNS,
    Parse,
    SparkRows,
    rows_on_spark,
    write_quarantine,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

OUTCOMES = (
    "used",
    "duplicate",
    "cancellation",
    "anonymous",
    "adjustment",
    "erased",
    "quarantined",
)
USED, DUPLICATE, CANCELLATION, ANONYMOUS, ADJUSTMENT, ERASED, QUARANTINED = range(len(OUTCOMES))
REASONS = (
    "malformed_row",
    "missing_item",
    "bad_quantity",
    "zero_quantity",
    "quantity_out_of_range",
    "bad_price",
    "negative_price",
    "price_out_of_range",
    "bad_timestamp",
    "future_timestamp",
)
# The field whose value a reason judged (malformed_row: none, the row itself).
REASON_FIELDS = {
    "missing_item": "item_id",
    "bad_quantity": "quantity",
    "zero_quantity": "quantity",
    "quantity_out_of_range": "quantity",
    "bad_price": "unit_price",
    "negative_price": "unit_price",
    "price_out_of_range": "unit_price",
    "bad_timestamp": "timestamp",
    "future_timestamp": "timestamp",
}
FUTURE_TOLERANCE = pd.Timedelta(days=1)  # clocks and time zones, not orders from the future
UNDECIDED = -1
EVENT_COLUMNS = [
    "source",
    "trust",
    "customer_id",
    "item_id",
    "quantity",
    "unit_price",
    "timestamp",
    "order",
    "description",
    "country",
    "outcome",
]
IDENTIFIER_COLUMNS = ["raw_customer_id", "id_alias", "email_alias", "phone_alias"]
# Each text column is dictionary-encoded as its source is parsed: from there on the merge
# works on integer codes into one sorted vocabulary per column (the engine's queries,
# linking, erasures), and each distinct string is held once.
TEXT_COLUMNS = [
    "raw_customer_id",
    "id_alias",
    "email_alias",
    "phone_alias",
    "item_id",
    "order",
    "description",
    "country",
]


@dataclass(frozen=True)
class MergedHistory:
    """The merge's result.

    ``events``: the rows that carry information, typed, with ``outcome`` used, duplicate,
    cancellation or anonymous. ``customer_id`` ("" for anonymous rows), ``item_id``,
    ``description`` and ``country`` are categoricals with sorted categories; ``order`` is an
    integer code, equal for the lines of one order id. Duplicates are kept because they still
    say what their own source lists as held; they never count twice towards weights, spend or
    popularity.
    ``quarantine``: malformed rows with their reason and raw values (``training.quarantine``).
    ``accounting``: per source, where its rows went; the parts add up to rows_read.
    """

    events: pd.DataFrame
    quarantine: QuarantinedRows
    accounting: dict[str, dict[str, Any]]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> canonical customer id
    identity: Identity = field(default_factory=Identity)  # linking report for the manifest
    item_groups: dict[str, str] = field(default_factory=dict)  # catalog item -> group
    # Event logs' interaction records, resolved (``training.interactions.COLUMNS``): the
    # customer's canonical id ("" for none) and the merge's outcome (UNDECIDED: a known
    # customer's, for the dataset to weigh).
    interactions: pd.DataFrame = field(default_factory=lambda: records_frame([]))
    # The content of each database source the merge read itself (on Spark, by the
    # executors), as the data fingerprint takes it (``training.sources.database_digest``).
    database_contents: dict[str, str] = field(default_factory=dict)
    # With Spark, when the merge was asked to keep them there: the merged rows on the
    # executors (``events`` is then empty), until ``rows.release()``; and each alias's
    # customer (alias, customer; ``aliases`` is then empty), checkpointed there, dropped
    # by Spark's cleaner once nothing refers to it.
    rows: MergedRows | None = None
    spark_aliases: DataFrame | None = None
    # and the event logs' interaction records (``training.spark_events.RECORD_SCHEMA``;
    # ``interactions`` is then empty), checkpointed there.
    spark_records: DataFrame | None = None
    # With Spark, which reads the event logs itself: the receipt time of the last purchase
    # or return they hold (``training.sources.events_through`` of each log read here).
    events_through: float | None = None


def merge_sources(
    sources: list[SourceInput],
    items: ItemRules,
    identity: IdentityConfig | None = None,
    engine: EngineConfig | None = None,
    keep_on_executors: bool = False,
) -> MergedHistory:
    """Takes ``sources`` over: each is removed from the list once parsed, so that a source's
    raw text is freed before the next is parsed (at 20 M rows that is gigabytes). A source
    given as its files is read here: with Spark by the executors, a task per file
    (``training.spark_sources``; ``read_by_executors`` says which), with DuckDB in its turn.
    ``keep_on_executors``: with Spark, the merged rows are left on the executors
    (``MergedHistory.rows``) rather than brought to this process as ``events``.

    Values are parsed once per distinct value (see ``_parse``); every decision about rows
    from there on is one of the queries below, run by ``engine`` (DuckDB by default)."""
    identity = identity or IdentityConfig()
    engine = engine or EngineConfig()
    erasures = load_erasures(identity)
    key = identity.key
    stitch_sessions(
        [rows for rows in sources if isinstance(rows, SourceRows)],
        lambda session: bool(erasures) and key.is_listed(session, erasures),
    )
    configs = [entry.source for entry in sources]
    logged = [
        (position, rows.interactions)
        for position, rows in enumerate(sources)
        if isinstance(rows, SourceRows) and rows.interactions is not None
    ]
    crosswalk = load_item_crosswalk(items.crosswalk, {source.name for source in configs})
    namespace_of = {source.name: source.customer_namespace for source in configs}
    namespace_of |= {namespace: namespace for namespace in namespace_of.values()}
    parse = partial(
        _parse,
        items=items,
        crosswalk=crosswalk,
        identity_rules=identity.rules,
        namespace_of=namespace_of,
    )
    read_records: _ReadRecords = partial(
        _LoggedRecords.read,
        crosswalk=crosswalk,
        rules=identity.rules,  # not the key: on Spark this goes to the tasks
        namespace_of=namespace_of,
        latest=pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_TOLERANCE,
    )
    event_logs = [position for position, source in enumerate(configs) if source.kind == "events"]
    columns = quarantine_columns(configs)
    parsed: Columns | None = None
    # With Spark: the event logs' records, read by the executors (training.spark_events).
    logged_on_spark: DataFrame | None = None
    events_through: float | None = None
    with open_engine(engine) as sql:
        spark_rows: SparkRows | None = None
        if isinstance(sql, SparkEngine):
            snapshots = parts_directory(engine)  # the event logs' copies
            sql.closing(partial(shutil.rmtree, snapshots, ignore_errors=True))
            stitched = spark_events.stitched_logs(
                sql, spark_events.EventLogs.of(sources, snapshots), erasures, key
            )
            events_through = stitched.through
            spark_rows = rows_on_spark(
                sql,
                sources,
                parse,
                TEXT_COLUMNS,
                IDENTIFIER_COLUMNS,
                event_logs,
                spark_events.parsed_purchases(stitched, parse, TEXT_COLUMNS),
            )
            logged_on_spark = spark_events.logged_records(
                stitched, partial(_logged_table, read=read_records, logs=stitched.logs.sources)
            )
            sql.view(ROWS, spark_rows.rows)
            sql.view(ROW_VALUES, spark_rows.values)
            vocabulary = spark_rows.vocabulary
            database_contents = spark_rows.database_contents
            identities: _IdentitySide = _link_on_spark(
                sql, spark_rows.identifiers, configs, identity, namespace_of, erasures
            )
        else:
            parsed, vocabulary, quarantined = _parse_here(sources, parse)
            database_contents = {}
            sql.load(ROWS, _rows_table(parsed, vocabulary, event_logs))
            identities = _link_here(sql, vocabulary, configs, identity, namespace_of, erasures)
        relation = identities.relation
        erased_rows = sql.query(QUARANTINED_ERASED.format(relation=relation)).column("row_id")
        if isinstance(sql, SparkEngine) and spark_rows is not None:
            quarantine = write_quarantine(
                sql, spark_rows.quarantine, columns, erased_rows.to_numpy(), engine
            )
        else:
            quarantine = QuarantinedRows.written(quarantined, columns, erased_rows.to_numpy())
            del quarantined
        sql.materialise(DECIDED, DECIDE.format(relation=relation))
        names = [source.name for source in configs]
        accounting = _accounting(sql.query(ACCOUNTING), names)
        spark_merged: MergedRows | None = None
        spark_aliases: DataFrame | None = None
        spark_records: DataFrame | None = None
        if isinstance(sql, SparkEngine) and isinstance(identities, _IdentityOnSpark):
            if logged_on_spark is not None:
                spark_records = spark_events.records_on_spark(
                    logged_on_spark,
                    identities.aliases,
                    identities.before,
                    identities.erased_customers,
                    erasures,
                    key,
                    names,
                )
            spark_merged = MergedRows.held(
                sql.frame(MERGED_ROWS),
                RowVocabulary(
                    source_names=names,
                    item_ids=vocabulary["item_id"].to_pylist(),
                    descriptions=vocabulary["description"].to_pylist(),
                    countries=vocabulary["country"].to_pylist(),
                    outcomes=list(OUTCOMES),
                ),
            )
            spark_aliases = identities.aliases
            if not keep_on_executors:
                customers = pd.Index(
                    sql.query(CUSTOMERS_IN_ORDER).column("customer_id").to_pylist(), dtype="str"
                )
        elif isinstance(identities, _IdentityHere):
            customers = identities.customers
            kept = sql.query(KEPT)
            interactions = _interactions(
                logged, configs, read_records, identity, identities.erasure, identities.aliases
            )
    identity_report = msgspec.structs.replace(
        identities.report,
        erasures=erasure_report(identity, sum(counts["erased"] for counts in accounting.values())),
    )
    merged = MergedHistory(
        events=pd.DataFrame(),
        quarantine=quarantine,
        accounting=accounting,
        aliases=identities.aliases if isinstance(identities, _IdentityHere) else {},
        identity=identity_report,
        item_groups=dict(crosswalk.groups),
        database_contents=database_contents,
        events_through=events_through,
    )
    if spark_merged is not None and spark_aliases is not None:
        if keep_on_executors:
            events = spark_merged.vocabulary.events(row_arrow_schema().empty_table())
            return dataclasses.replace(
                merged,
                events=events,
                rows=spark_merged,
                spark_aliases=spark_aliases,
                spark_records=spark_records,
            )
        events = spark_merged.collected(customers)
        spark_merged.release()
        return dataclasses.replace(
            merged,
            events=events,
            aliases=collected_aliases(spark_aliases),
            interactions=(
                records_frame([])
                if spark_records is None
                else spark_events.collected_records(spark_records)
            ),
        )
    assert parsed is not None
    merged = dataclasses.replace(merged, interactions=interactions)
    rows_kept = kept.column("row_id").to_numpy()
    values = {column: parsed.pop(column)[rows_kept] for column in _VALUE_COLUMNS}
    del parsed
    events = pd.DataFrame(
        {
            column: values.pop(column)
            for column in ("trust", "quantity", "unit_price", "timestamp", "order")
        }
    )
    events["source"] = pd.Categorical.from_codes(
        values.pop("source_position"), categories=pd.Index(names)
    )
    events["customer_id"] = pd.Categorical.from_codes(
        kept.column("customer").to_numpy(), categories=customers
    )
    for column in ("item_id", "description", "country"):
        events[column] = pd.Categorical.from_codes(
            values.pop(column),
            categories=pd.Index(vocabulary[column].to_pylist(), dtype="str"),
        )
    events["outcome"] = pd.Categorical.from_codes(
        kept.column("outcome").to_numpy(), categories=pd.Index(OUTCOMES)
    )
    return dataclasses.replace(merged, events=events[EVENT_COLUMNS])


# The merge's row-level rules, once, as SQL in SQLGlot's standard dialect; training.engine
# transpiles them for DuckDB or Spark. The tables they read:
#
# - ``rows``: one row per input row (ROW_COLUMNS), with its provisional ``outcome`` from
#   parsing (quarantined, adjustment or UNDECIDED) and quarantine ``reason``; text columns
#   are integer codes into the merge's vocabularies, NULL where blank; ``stamp`` is the
#   timestamp in microseconds; ``erased`` is false until ``marked`` (MARK_ERASED) sets it.
# - ``erased_aliases`` (kind, code): every alias of an erased customer.
# - ``customers`` (kind, code, customer): each linked alias's customer, as a code into the
#   sorted canonical ids (0: nobody).
#
# ``kind`` is the position of the alias column in ALIAS_COLUMNS.
# A merge's columns by name, each one value per row.
Columns = dict[str, NDArray[Any]]
ROWS, ERASED_ALIASES, MARKED, CUSTOMERS, DECIDED, ALIAS_NAMES, ROW_VALUES, CUSTOMER_IDS = (
    "rows",
    "erased_aliases",
    "marked",
    "customers",
    "decided",
    "alias_names",
    "row_values",
    "customer_ids",
)
ALIAS_COLUMNS = ("id_alias", "email_alias", "phone_alias")
ROW_COLUMNS = (
    "row_id",
    "source_position",
    "outcome",
    "reason",
    "event_log",
    "is_cancellation",
    "order_code",
    "item_code",
    "quantity",
    "stamp",
    "raw_id",
    *ALIAS_COLUMNS,
    "invalid_email",
    "invalid_phone",
)
_ERASED_BY = " OR ".join(f"e{kind}.code IS NOT NULL" for kind in range(len(ALIAS_COLUMNS)))
_ERASED_JOINS = "\n".join(
    f"LEFT JOIN {ERASED_ALIASES} AS e{kind} ON e{kind}.kind = {kind} AND e{kind}.code = r.{column}"
    for kind, column in enumerate(ALIAS_COLUMNS)
)
MARK_ERASED = f"""
SELECT {", ".join(f"r.{column}" for column in ROW_COLUMNS)}, ({_ERASED_BY}) AS erased
FROM {ROWS} AS r
{_ERASED_JOINS}
"""
# What linking reads: the distinct combinations of aliases that rows carry together, each
# source's raw ids with their alias (for ``<source>:<id>`` lookups), and the count of
# contacts that did not normalise.
COMBINATIONS = f"""
SELECT DISTINCT {", ".join(ALIAS_COLUMNS)} FROM {{relation}}
WHERE NOT erased AND COALESCE({", ".join(ALIAS_COLUMNS)}) IS NOT NULL
"""
# On Spark, linking reads the combinations as the aliases they name, never collected
# (``training.spark_identity``); ALIAS_NAMES holds (kind, code, alias) of the linkable ones.
_NAME_JOINS = "\n".join(
    f"LEFT JOIN {ALIAS_NAMES} AS n{kind} ON n{kind}.kind = {kind} AND n{kind}.code = c.{column}"
    for kind, column in enumerate(ALIAS_COLUMNS)
)
_NAMES = ", ".join(f"n{kind}.alias AS {column}" for kind, column in enumerate(ALIAS_COLUMNS))
COMBINATION_ALIASES = f"""
SELECT {_NAMES} FROM ({COMBINATIONS}) AS c
{_NAME_JOINS}
"""
SOURCE_IDS = """
SELECT DISTINCT source_position, raw_id, id_alias FROM {relation}
WHERE NOT erased AND raw_id IS NOT NULL
"""
INVALID_CONTACTS = """
SELECT COUNT(CASE WHEN invalid_email THEN 1 END) AS email,
       COUNT(CASE WHEN invalid_phone THEN 1 END) AS phone
FROM {relation} WHERE NOT erased
"""
QUARANTINED_ERASED = f"""
SELECT row_id FROM {{relation}} WHERE outcome = {QUARANTINED} AND erased ORDER BY row_id
"""
# A row's customer is that of its strongest identifier: id, then email, then phone (they
# differ only where linking refused a conflict). Then the outcomes in the order of the
# module's docstring. A line's "copy number" is its n-th repeat (in row order) of one order
# line (order, item, quantity, timestamp) inside its source; n-th copies in different sources
# are one line, and the first of them (in source order) is kept. Only orders that appear in
# more than one source can hold such lines, so only their rows are numbered. ``row_id``
# numbers the rows in source order.
_LINE = "order_code, item_code, quantity, stamp"
_CUSTOMER_JOINS = "\n".join(
    f"LEFT JOIN {CUSTOMERS} AS c{kind} ON c{kind}.kind = {kind} AND c{kind}.code = m.{column}"
    for kind, column in enumerate(ALIAS_COLUMNS)
)
_CUSTOMER = ", ".join(f"c{kind}.customer" for kind in range(len(ALIAS_COLUMNS)))
DECIDE = f"""
WITH owned AS (
  SELECT m.row_id, m.source_position, m.outcome, m.reason, m.erased, m.event_log,
         m.is_cancellation, m.order_code, m.item_code, m.quantity, m.stamp,
         COALESCE({_CUSTOMER}, 0) AS customer
  FROM {{relation}} AS m
  {_CUSTOMER_JOINS}
), settled AS (
  SELECT *,
         CASE WHEN outcome = {UNDECIDED} AND erased THEN {ERASED} ELSE outcome END AS settled,
         outcome = {UNDECIDED} AND NOT erased AND order_code IS NOT NULL AS candidate
  FROM owned
), shared_orders AS (
  SELECT order_code FROM settled WHERE candidate
  GROUP BY order_code HAVING COUNT(DISTINCT source_position) > 1
), copies AS (
  SELECT s.row_id, s.order_code, s.item_code, s.quantity, s.stamp,
         ROW_NUMBER() OVER (
           PARTITION BY s.order_code, s.item_code, s.quantity, s.stamp, s.source_position
           ORDER BY s.row_id
         ) AS copy_number
  FROM settled AS s JOIN shared_orders AS o ON o.order_code = s.order_code
  WHERE s.candidate
), duplicates AS (
  SELECT row_id FROM (
    SELECT row_id, MIN(row_id) OVER (PARTITION BY {_LINE}, copy_number) AS first_row
    FROM copies
  ) AS numbered
  WHERE row_id <> first_row
), lines AS (
  SELECT s.*, d.row_id IS NOT NULL AS duplicate
  FROM settled AS s LEFT JOIN duplicates AS d ON d.row_id = s.row_id
), repeats AS (
  SELECT row_id FROM (
    SELECT row_id, MIN(row_id) OVER (PARTITION BY source_position, order_code) AS first_row
    FROM lines WHERE candidate AND event_log AND NOT duplicate
  ) AS replayed
  WHERE row_id <> first_row
)
SELECT l.row_id, l.source_position, l.reason, l.customer,
       CASE WHEN l.settled <> {UNDECIDED} THEN l.settled
            WHEN l.duplicate OR r.row_id IS NOT NULL THEN {DUPLICATE}
            WHEN l.customer = 0 THEN {ANONYMOUS}
            WHEN l.is_cancellation THEN {CANCELLATION}
            ELSE {USED} END AS outcome
FROM lines AS l LEFT JOIN repeats AS r ON r.row_id = l.row_id
"""
ACCOUNTING = f"""
SELECT source_position, outcome, reason, COUNT(*) AS row_count
FROM {DECIDED} GROUP BY source_position, outcome, reason
"""
_KEPT_OUTCOMES = f"{USED}, {DUPLICATE}, {CANCELLATION}, {ANONYMOUS}"
KEPT = f"""
SELECT row_id, outcome, customer FROM {DECIDED}
WHERE outcome IN ({_KEPT_OUTCOMES}) ORDER BY row_id
"""
# On Spark the rows' values stay on the executors too (``training.spark_sources``), and so
# do the merged rows (``training.spark_dataset.ROW_SCHEMA``). ``row_values`` (Spark only):
# row_id and VALUE_COLUMNS; ``customer_ids`` (customer, customer_id): each customer code's id.
MERGED_ROWS = f"""
SELECT d.row_id, d.outcome, c.customer_id, {", ".join(f"v.{column}" for column in VALUE_COLUMNS)}
FROM {DECIDED} AS d JOIN {ROW_VALUES} AS v ON v.row_id = d.row_id
JOIN {CUSTOMER_IDS} AS c ON c.customer = d.customer
WHERE d.outcome IN ({_KEPT_OUTCOMES})
"""
CUSTOMERS_IN_ORDER = f"SELECT customer_id FROM {CUSTOMER_IDS} ORDER BY customer"
# What a merged row carries beside its outcome and customer, as ``_parse`` names them.
_VALUE_COLUMNS = tuple("timestamp" if column == "stamp" else column for column in VALUE_COLUMNS)


def _rows_table(
    parsed: Columns, vocabulary: dict[str, pa.Array], event_logs: list[int]
) -> pa.Table:
    """``parsed`` as the ``rows`` table the queries read."""

    def codes(column: str) -> pa.Array:
        values = parsed[column]
        return pa.array(values, mask=values == _blank_code(vocabulary[column]))

    stamps = parsed["timestamp"].astype("datetime64[us]", copy=False)
    positions = parsed["source_position"]
    count = len(positions)
    columns = {
        "row_id": pa.array(np.arange(count, dtype=np.int64)),
        "source_position": pa.array(positions.astype(np.int32)),
        "outcome": pa.array(parsed["outcome"]),
        "reason": pa.array(parsed["reason"]),
        "event_log": pa.array(np.isin(positions, event_logs)),
        "is_cancellation": pa.array(parsed["is_cancellation"]),
        "order_code": codes("order"),
        "item_code": pa.array(parsed["item_id"]),
        "quantity": pa.array(parsed["quantity"]),
        "stamp": pa.array(stamps.view(np.int64), mask=np.isnat(stamps)),
        "raw_id": codes("raw_customer_id"),
        **{column: codes(column) for column in ALIAS_COLUMNS},
        "invalid_email": pa.array(parsed["invalid_email"]),
        "invalid_phone": pa.array(parsed["invalid_phone"]),
        "erased": pa.array(np.zeros(count, dtype=bool)),
    }
    return pa.table(columns)


def _parse_here(
    sources: list[SourceInput], parse: Parse
) -> tuple[Columns, dict[str, pa.Array], list[tuple[pd.DataFrame, NDArray[np.int64]]]]:
    """Every source parsed in this process, one after another (emptying ``sources``): the
    rows' columns, the text columns' vocabularies, each source's quarantined rows with their
    row ids."""
    frames: list[Columns] = []
    texts: list[dict[str, pa.DictionaryArray]] = []
    quarantined: list[tuple[pd.DataFrame, NDArray[np.int64]]] = []
    rows_before = 0
    for position in range(len(sources)):
        entry = sources.pop(0)
        if isinstance(entry, SourceFiles):
            rows = read_source(entry.source, entry.files)
        elif isinstance(entry, DatabaseSlices):
            rows = entry.read()
        else:
            rows = entry
        del entry
        frame, text, quarantine = parse(rows, position)
        del rows
        texts.append(text)
        quarantined.append((quarantine, rows_before + quarantine.index.to_numpy(np.int64)))
        rows_before += len(frame["outcome"])
        frames.append(frame)
    parsed, vocabulary = _concat_parsed(frames, texts)
    return parsed, vocabulary, quarantined


def _aliases_of(identifiers: NDArray[np.object_], codes: pa.ChunkedArray) -> list[str]:
    """Codes into a vocabulary as its strings, "" for NULL."""
    present = codes.is_valid().to_numpy(zero_copy_only=False)
    filled = codes.fill_null(0).to_numpy().astype(np.int64)
    return list(np.where(present, identifiers[filled], ""))


@dataclass(frozen=True)
class _IdentityHere:
    """The identity side, decided in this process: each alias's customer (``aliases``, with
    the service's ``<source>:<id>`` and ``id:<canonical>`` lookups) as linked from the rows
    of ``relation`` (ROWS, or MARKED: those of the erased customers marked), the linking
    report, what erasure decided (``erasure``) and the customers in code order."""

    relation: str
    aliases: dict[str, str]
    report: Identity
    erasure: _Erasure
    customers: pd.Index


@dataclass(frozen=True)
class _IdentityOnSpark:
    """The identity side, decided on Spark's executors: ``aliases`` (alias, customer) and
    ``before`` (as linked with the erased customers' rows) are frames checkpointed there;
    the driver has the report and the erased customers."""

    relation: str
    aliases: DataFrame
    report: Identity
    before: DataFrame
    erased_customers: set[str]


def _link_here(
    sql: Engine,
    vocabulary: dict[str, pa.Array],
    sources: list[SourceConfig],
    config: IdentityConfig,
    namespace_of: dict[str, str],
    erasures: set[str],
) -> _IdentityHere:
    """Linking and erasure, in this process (the identifiers' ``vocabulary`` is here)."""
    identifiers = {column: _strings(vocabulary[column]) for column in IDENTIFIER_COLUMNS}
    aliases, report = _link(sql, ROWS, identifiers, sources, config, namespace_of)
    erased_customers = _erased_customers(aliases, erasures, config.key)
    erasure = _Erasure(aliases, erased_customers, erasures)
    erased = _erased_aliases(identifiers, aliases, erased_customers, erasures, config.key)
    relation = ROWS
    if erased.num_rows:
        # Linked again without their rows, so that no alias, id or masked example of
        # theirs is left in the result. The others link as before: a link to an erased
        # customer's alias was refused, or it would have made them one customer.
        sql.load(ERASED_ALIASES, erased)
        sql.materialise(MARKED, MARK_ERASED)
        relation = MARKED
        aliases, report = _link(sql, relation, identifiers, sources, config, namespace_of)
    customers = pd.Index(["", *sorted(set(aliases.values()))], dtype="str")
    sql.load(CUSTOMERS, _customers_table(identifiers, aliases, customers))
    return _IdentityHere(relation, aliases, report, erasure, customers)


def _link_on_spark(
    sql: SparkEngine,
    identifiers: DataFrame,
    sources: list[SourceConfig],
    config: IdentityConfig,
    namespace_of: dict[str, str],
    erasures: set[str],
) -> _IdentityOnSpark:
    """As ``_link_here``, on the executors (``training.spark_identity``): the identifiers'
    vocabularies (``identifiers``: column, code, value), each alias's customer and the
    erasure list's matches stay there."""
    names = spark_identity.alias_names(identifiers, ALIAS_COLUMNS).localCheckpoint()
    sql.view(ALIAS_NAMES, spark_identity.linkable(names))
    aliases, report = _link_spark(sql, ROWS, identifiers, sources, config, namespace_of)
    before = aliases
    erased_customers = spark_identity.erased_customers(aliases, erasures, config.key)
    relation = ROWS
    if erasures:
        erased = spark_identity.erased_aliases(
            names, aliases, erased_customers, erasures, config.key
        )
        sql.view(ERASED_ALIASES, erased)
        if sql.query(f"SELECT COUNT(*) AS n FROM {ERASED_ALIASES}").column("n")[0].as_py():
            sql.materialise(MARKED, MARK_ERASED)  # and linked again, as in _link_here
            relation = MARKED
            aliases, report = _link_spark(sql, relation, identifiers, sources, config, namespace_of)
    customers, customer_ids = spark_identity.customer_tables(sql, names, aliases)
    sql.view(CUSTOMERS, customers)
    sql.view(CUSTOMER_IDS, customer_ids)
    return _IdentityOnSpark(relation, aliases, report, before, erased_customers)


# Either engine's identity side.
_IdentitySide = _IdentityHere | _IdentityOnSpark


def _link(
    sql: Engine,
    relation: str,
    identifiers: dict[str, NDArray[np.object_]],
    sources: list[SourceConfig],
    config: IdentityConfig,
    namespace_of: dict[str, str],
) -> tuple[dict[str, str], Identity]:
    """Link the identifiers of every row of ``relation`` not erased; return alias ->
    canonical id (including ``<source>:<id>`` and ``id:<canonical>`` lookups for the
    service) and the linking report. Linking is a union-find with order-dependent guards
    (``training.identity``), not a relational step: it links the distinct combinations of
    aliases, which number about as many as the customers."""
    crosswalk = load_customer_crosswalk(config.crosswalk, config.rules, namespace_of)
    combinations = sql.query(COMBINATIONS.format(relation=relation))
    names, records, pairs = _alias_nodes(combinations, identifiers, crosswalk)
    linked = link_nodes(names, records, pairs, config.links, config.key)
    aliases = dict(linked.customer_of)
    source_ids = sql.query(SOURCE_IDS.format(relation=relation))
    raw_ids = _aliases_of(identifiers["raw_customer_id"], source_ids.column("raw_id"))
    id_aliases = _aliases_of(identifiers["id_alias"], source_ids.column("id_alias"))
    source_names = pa.array([source.name for source in sources]).take(
        source_ids.column("source_position")
    )
    lookups = pc.binary_join_element_wise(source_names, pa.array(raw_ids, pa.string()), ":")
    customer_of = linked.customer_of.__getitem__
    aliases.update(zip(lookups.to_pylist(), map(customer_of, id_aliases), strict=True))
    canonical_ids = list(set(linked.customer_of.values()))
    aliases.update(zip([f"{CANONICAL}:" + c for c in canonical_ids], canonical_ids, strict=True))
    return aliases, _linking_report(sql, relation, config, linked.report())


def _link_spark(
    sql: SparkEngine,
    relation: str,
    identifiers: DataFrame,
    sources: list[SourceConfig],
    config: IdentityConfig,
    namespace_of: dict[str, str],
) -> tuple[DataFrame, Identity]:
    """``_link`` on the executors: the combinations go to linking as the aliases they name
    (COMBINATION_ALIASES), and each alias's customer stays there."""
    crosswalk = load_customer_crosswalk(config.crosswalk, config.rules, namespace_of)
    combinations = sql.frame(COMBINATION_ALIASES.format(relation=relation))
    linked = spark_identity.link_on_spark(combinations, crosswalk, config.links, config.key)
    aliases = spark_identity.service_aliases(
        linked.customer_of,
        sql.frame(SOURCE_IDS.format(relation=relation)),
        identifiers,
        [source.name for source in sources],
    )
    # Checkpointed, as linking's result is (``link_on_spark``).
    return aliases.localCheckpoint(), _linking_report(sql, relation, config, linked.report())


def _linking_report(
    sql: Engine, relation: str, config: IdentityConfig, linked: dict[str, Any]
) -> Identity:
    """The manifest's linking report: ``linked`` (``training.identity.Identity.report``)
    with the rules and the count of contacts in ``relation`` that did not normalise."""
    invalid = sql.query(INVALID_CONTACTS.format(relation=relation)).to_pylist()[0]
    return msgspec.structs.replace(
        msgspec.convert(linked, Identity),
        rules=config.rules.to_manifest(),
        invalid=InvalidContacts(email=int(invalid["email"]), phone=int(invalid["phone"])),
    )


def _alias_nodes(
    combinations: pa.Table,
    identifiers: dict[str, NDArray[np.object_]],
    crosswalk: list[tuple[str, str]],
) -> tuple[NDArray[np.object_], NDArray[np.int64], NDArray[np.int64]]:
    """What ``training.identity.link_nodes`` links: the aliases the ``combinations`` (codes
    into the vocabularies, a column per alias kind) and the ``crosswalk`` name, distinct and
    ascending; each combination's as positions among them (-1: none); each pair's. A
    session is never linked: only a stitch makes it a customer's (training.sessions)."""
    pieces: list[NDArray[np.object_]] = []
    columns: list[NDArray[np.int64]] = []
    offset = 0
    for column in ALIAS_COLUMNS:
        codes = combinations.column(column).fill_null(-1).to_numpy().astype(np.int64)
        used, inverse = np.unique(codes, return_inverse=True)
        strings = identifiers[column][np.maximum(used, 0)]
        linkable = (used >= 0) & _linkable(strings)
        pieces.append(strings[linkable])
        # Each combination's alias as a position in the concatenated pieces, -1 for none.
        columns.append(np.where(linkable, offset + np.cumsum(linkable) - 1, -1)[inverse])
        offset += int(linkable.sum())
    pieces.append(np.array([alias for pair in crosswalk for alias in pair], dtype=object))
    distinct, position = _sorted_distinct(pa.array(np.concatenate(pieces), type=pa.string()))
    node_of = np.append(position, -1).astype(np.int64)  # -1: no alias of a kind
    names = _strings(distinct)
    records = np.column_stack([node_of[column] for column in columns])
    return names, records, node_of[offset:-1].reshape(-1, 2)


def _linkable(aliases: NDArray[np.object_]) -> NDArray[np.bool_]:
    """Which ``aliases`` are linked: not blank, not a session's (on Spark:
    ``training.spark_identity.linkable``)."""
    sessions = pc.starts_with(pa.array(aliases, type=pa.string()), SESSION_PREFIX)
    linkable: NDArray[np.bool_] = (aliases != "") & ~sessions.to_numpy(zero_copy_only=False)
    return linkable


def _alias_codes(
    identifiers: dict[str, NDArray[np.object_]], value_of: Callable[[str], int]
) -> pa.Table:
    """(kind, code, value) for every alias in the vocabularies whose ``value_of`` is not 0."""
    kinds, codes, values = [], [], []
    for kind, column in enumerate(ALIAS_COLUMNS):
        per_code = np.fromiter(
            (value_of(alias) if alias else 0 for alias in identifiers[column]),
            dtype=np.int32,
            count=len(identifiers[column]),
        )
        (found,) = np.nonzero(per_code)
        kinds.append(np.full(len(found), kind, dtype=np.int32))
        codes.append(found.astype(np.int32))
        values.append(per_code[found])
    return pa.table(
        {
            "kind": np.concatenate(kinds),
            "code": np.concatenate(codes),
            "value": np.concatenate(values),
        }
    )


def _erased_customers(aliases: dict[str, str], erased: set[str], key: IdentityKey) -> set[str]:
    """The customers one of whose aliases (``aliases``: the linking's alias -> customer, with
    ``<source>:<id>`` and ``id:<canonical>``) is on the erasure list."""
    if not erased:
        return set()
    return {customer for alias, customer in aliases.items() if key.is_listed(alias, erased)}


def _erased_aliases(
    identifiers: dict[str, NDArray[np.object_]],
    aliases: dict[str, str],
    customers: set[str],
    erased: set[str],
    key: IdentityKey,
) -> pa.Table:
    """Every alias of every erased customer (``customers``), and every session alias on the
    list (a session is nobody's customer unless stitched). A row is theirs when any
    identifier it carries is (a link refused between two customers leaves the row with both,
    and it goes)."""
    if not erased:
        return pa.table({"kind": pa.array([], pa.int32()), "code": pa.array([], pa.int32())})

    def is_erased(alias: str) -> int:
        if _is_session_alias(alias):
            return int(key.is_listed(alias, erased))
        return int(aliases.get(alias) in customers)

    return _alias_codes(identifiers, is_erased).select(["kind", "code"])


def _customers_table(
    identifiers: dict[str, NDArray[np.object_]], aliases: dict[str, str], customers: pd.Index
) -> pa.Table:
    position = {customer: code for code, customer in enumerate(customers)}
    table = _alias_codes(identifiers, lambda alias: position.get(aliases.get(alias, ""), 0))
    return table.rename_columns(["kind", "code", "customer"])


def _accounting(counts: pa.Table, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per source, where its rows went, from (source_position, outcome, reason, row_count)."""
    by_outcome = np.zeros((len(names), len(OUTCOMES)), dtype=np.int64)
    by_reason = np.zeros((len(names), len(REASONS)), dtype=np.int64)
    for row in counts.to_pylist():
        position, outcome, count = row["source_position"], row["outcome"], row["row_count"]
        by_outcome[position, outcome] += count
        if outcome == QUARANTINED:
            by_reason[position, row["reason"]] += count
    return {
        name: {
            "rows_read": int(by_outcome[position].sum()),
            **{OUTCOMES[i]: int(by_outcome[position, i]) for i in range(QUARANTINED)},
            "quarantined": {REASONS[i]: int(n) for i, n in enumerate(by_reason[position]) if n},
        }
        for position, name in enumerate(names)
    }


@dataclass(frozen=True)
class _Text:
    """A text column as its distinct values and each row's code into them: the string work
    (stripping, parsing, normalising) is done once per distinct value, then spread to rows."""

    values: pd.Series  # distinct, stripped
    codes: NDArray[np.integer[Any]]  # the smallest integer type that holds them

    def per_row(self, per_value: Any) -> NDArray[Any]:
        rows: NDArray[Any] = np.asarray(per_value)[self.codes]
        return rows

    def encoded(self, values: pd.Series | None = None) -> pa.DictionaryArray:
        """The rows as an Arrow dictionary array of ``values`` (derived from ``self.values``,
        one per value) or of the text itself."""
        dictionary = pa.array(self.values if values is None else values, type=pa.large_string())
        if not len(dictionary):  # pyarrow would type an empty dictionary null
            dictionary = pa.array([""], type=pa.large_string())
        return pa.DictionaryArray.from_arrays(pa.array(self.codes, pa.int32()), dictionary)

    @staticmethod
    def blank(count: int) -> _Text:
        """``count`` rows of ""."""
        return _Text(pd.Series([""], dtype="str"), np.zeros(count, dtype=np.int32))


def _text(raw: pd.DataFrame, field: str) -> _Text:
    """A source's text column (categorical, see SourceRows) with its values stripped."""
    if field not in raw:
        return _Text.blank(len(raw))
    column = raw[field]
    # NUL padding (fixed-width exports) goes too: NumPy's strings drop trailing NULs, so
    # "A\0" and "A" would later collide as one id, twice.
    values = pd.Series(column.cat.categories, dtype="str").str.strip().str.strip("\0").str.strip()
    return _Text(values, column.cat.codes.to_numpy())  # int8, int16 or int32


def _parse(
    rows: SourceRows,
    position: int,
    items: ItemRules,
    crosswalk: ItemCrosswalk,
    identity_rules: IdentityRules,
    namespace_of: dict[str, str],
) -> tuple[Columns, dict[str, pa.DictionaryArray], pd.DataFrame]:
    """Typed rows with a provisional outcome, their text columns (see TEXT_COLUMNS), and the
    quarantined rows with their raw values."""
    raw = rows.frame
    source = rows.source
    count = len(raw)
    texts: dict[str, _Text] = {}

    def text(field: str) -> _Text:
        if field not in texts:
            texts[field] = _text(raw, field)
        return texts[field]

    item = text("item_id")
    item_ids = _catalog_items(item.values, source.name, crosswalk)
    reason = np.full(count, UNDECIDED, dtype=np.int8)

    def flag(mask: Any, why: str) -> None:
        reason[(reason == UNDECIDED) & np.asarray(mask, dtype=bool)] = REASONS.index(why)

    malformed = text("malformed")
    flag(malformed.per_row(malformed.values != ""), "malformed_row")
    flag(item.per_row(item_ids == ""), "missing_item")
    non_product_ids = item_ids.isin(items.non_product_ids).to_numpy(copy=True)
    if items.non_product_pattern:
        non_product_ids |= item_ids.str.contains(items.non_product_pattern, regex=True).to_numpy()
    non_product = item.per_row(non_product_ids) & (reason == UNDECIDED)

    def numbers(field: str) -> NDArray[np.float64]:
        if not is_text(raw[field]):  # a typed Parquet column (training.sources.TYPED_FIELDS)
            typed: NDArray[np.float64] = raw[field].to_numpy(dtype=np.float64)
            return typed
        values = text(field)
        return values.per_row(parse_numbers(values.values))

    def timestamps() -> NDArray[np.datetime64]:
        if not is_text(raw["timestamp"]):  # typed: naive UTC already
            typed: NDArray[np.datetime64] = raw["timestamp"].to_numpy(dtype="datetime64[us]")
            return typed
        stamps = text("timestamp")
        parsed = parse_timestamps(stamps.values, source.timestamp_format, source.timezone)
        return stamps.per_row(parsed.to_numpy().astype("datetime64[us]"))

    if "quantity" in raw:
        quantity = numbers("quantity")
        flag(~np.isfinite(quantity) & ~non_product, "bad_quantity")
        flag((quantity == 0) & ~non_product, "zero_quantity")
        flag((np.abs(quantity) > MAX_QUANTITY) & ~non_product, "quantity_out_of_range")
    else:
        quantity = np.ones(count)
    if "unit_price" in raw:
        price = numbers("unit_price") * source.currency_rate
        flag(~np.isfinite(price) & ~non_product, "bad_price")
        flag((price < 0) & ~non_product, "negative_price")
        flag((price > MAX_UNIT_PRICE) & ~non_product, "price_out_of_range")
    else:
        price = np.full(count, np.nan)
    if "timestamp" in raw:
        timestamp = timestamps()
        flag(np.isnat(timestamp) & ~non_product, "bad_timestamp")
        latest = pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_TOLERANCE
        flag((timestamp > latest.to_datetime64()) & ~non_product, "future_timestamp")
    else:
        timestamp = np.full(count, np.datetime64("NaT"), dtype="datetime64[us]")

    order = text("order_id")
    is_cancellation = quantity < 0
    if "order_id" in raw and source.cancellation_prefix and source.kind != "events":
        is_cancellation |= order.per_row(order.values.str.startswith(source.cancellation_prefix))
    quantity = np.where(is_cancellation, -np.abs(quantity), quantity)

    outcome = np.full(count, UNDECIDED, dtype=np.int8)
    outcome[non_product] = ADJUSTMENT
    quarantined = reason != UNDECIDED
    outcome[quarantined] = QUARANTINED
    bad = raw.loc[quarantined]
    # Indexed by the row's place among the parsed rows, from which its row id follows.
    quarantine = pd.DataFrame(
        {
            "source": source.name,
            "file": [str(rows.files[i]) for i in bad["file"]],
            "record": bad["record"].to_numpy(),
            "reason": [REASONS[r] for r in reason[quarantined]],
            # Typed values as text, so that the file reads the same however the rows were
            # split (pandas formats a column's timestamps by what else is in it).
            **{field: typed_as_text(bad[field]).to_numpy() for field in source.columns},
            "detail": bad["malformed"].to_numpy() if "malformed" in bad else "",
        },
        index=np.flatnonzero(quarantined),
    )
    customer = text("customer_id")
    if source.kind == "events":
        ids, emails, phones = _key_aliases(customer.values, identity_rules, namespace_of)
        identifiers = {
            "raw_customer_id": _Text.blank(count).encoded(),
            "id_alias": customer.encoded(ids),
            "email_alias": customer.encoded(_prefixed(EMAIL, emails)),
            "phone_alias": customer.encoded(_prefixed(PHONE, phones)),
        }
        invalid_email = invalid_phone = np.zeros(count, dtype=bool)
    else:
        raw_ids = customer_ids(customer.values)
        email, phone = text("email"), text("phone")
        emails = _normalised(email.values, lambda value: normalise_email(value, identity_rules))
        phones = _normalised(phone.values, lambda value: normalise_phone(value, identity_rules))
        identifiers = {
            "raw_customer_id": customer.encoded(raw_ids),
            "id_alias": customer.encoded(_prefixed(source.customer_namespace, raw_ids)),
            "email_alias": email.encoded(_prefixed(EMAIL, emails)),
            "phone_alias": phone.encoded(_prefixed(PHONE, phones)),
        }
        invalid_email = email.per_row((emails == "") & (email.values != ""))
        invalid_phone = phone.per_row((phones == "") & (phone.values != ""))
    parsed: Columns = {
        "source_position": np.full(count, position, dtype=np.int16),
        "trust": np.full(count, source.trust, dtype=np.float32),
        "invalid_email": invalid_email,
        "invalid_phone": invalid_phone,
        "quantity": quantity,
        "unit_price": price,
        "timestamp": timestamp,
        "is_cancellation": is_cancellation,
        "outcome": outcome,
        "reason": reason,
    }
    encoded = {
        **identifiers,
        "item_id": item.encoded(item_ids),
        "order": order.encoded(),
        "description": text("description").encoded(),
        "country": text("country").encoded(),
    }
    return parsed, encoded, quarantine


def _catalog_items(values: pd.Series, source: str, crosswalk: ItemCrosswalk) -> pd.Series:
    """A source's item ids as catalog items: upper-cased, through the item crosswalk."""
    item_ids = values.str.upper()
    if crosswalk.catalog_ids:
        item_ids = item_ids.map(lambda value: crosswalk.catalog_id(source, value))
    return item_ids


@dataclass(frozen=True)
class _Erasure:
    """What erasure decided for the rows: ``aliases`` and ``customers`` as linked with the
    erased customers' rows, and the list's digests."""

    aliases: dict[str, str]
    customers: set[str]
    digests: set[str]

    def covers(self, alias: str, key: IdentityKey) -> bool:
        if not self.digests or not alias:
            return False
        if self.aliases.get(alias) in self.customers:
            return True
        return key.is_listed(alias, self.digests)


def _interactions(
    logged: list[tuple[int, pd.DataFrame]],
    configs: list[SourceConfig],
    read: _ReadRecords,
    identity: IdentityConfig,
    erasure: _Erasure,
    aliases: dict[str, str],
) -> pd.DataFrame:
    """The event logs' interaction records (stitched) with their customer's canonical id
    (``aliases``: each alias's customer) and the merge's outcome
    (``training.interactions.merged_outcomes``), in this process. Spark decides them as
    ``training.spark_events.records_on_spark``."""
    parts = []
    for position, raw in logged:
        records = read(raw, configs[position])
        canonical = records.alias.map(aliases).fillna("")
        erased = records.alias.map(lambda value: erasure.covers(value, identity.key))
        parts.append(records.decided(canonical, erased.to_numpy(dtype=bool)))
    return records_frame(parts)


@dataclass(frozen=True)
class _LoggedRecords:
    """An event log's interaction records (stitched: a log's, or on Spark a file's) as the
    merge reads them, before any lookup. Text is worked on once per distinct value, as in
    ``_parse``: ``alias`` is, per distinct customer key, the alias its customer is known
    by: its id's, else its email's, else its phone's ("" for none)."""

    source: SourceConfig
    kind: NDArray[np.object_]
    customer: _Text
    alias: pd.Series
    item_id: NDArray[np.object_]  # in the catalog
    has_item: NDArray[np.bool_]
    timestamp: NDArray[np.datetime64]
    invalid: NDArray[np.bool_]  # step 1 (training.interactions)
    event_id: _Text
    file: NDArray[np.integer[Any]]
    record: NDArray[np.integer[Any]]

    @staticmethod
    def read(
        raw: pd.DataFrame,
        source: SourceConfig,
        crosswalk: ItemCrosswalk,
        rules: IdentityRules,
        namespace_of: dict[str, str],
        latest: pd.Timestamp,
    ) -> _LoggedRecords:
        """``latest``: the last timestamp not in the future."""
        customer = _text(raw, "customer_id")
        ids, emails, phones = _key_aliases(customer.values, rules, namespace_of)
        alias = ids.where(ids != "", _prefixed(EMAIL, emails))
        item = _text(raw, "item_id")
        stamps = _text(raw, "timestamp")
        timestamp = stamps.per_row(
            parse_timestamps(stamps.values, None, "UTC").to_numpy().astype("datetime64[us]")
        )
        malformed = _text(raw, "malformed")
        return _LoggedRecords(
            source=source,
            kind=raw["kind"].astype("str").to_numpy(dtype=object),
            customer=customer,
            alias=alias.where(alias != "", _prefixed(PHONE, phones)),
            item_id=item.per_row(
                _catalog_items(item.values, source.name, crosswalk).to_numpy(dtype=object)
            ),
            has_item=item.per_row(item.values != ""),
            timestamp=timestamp,
            invalid=malformed.per_row(malformed.values != "")
            | np.isnat(timestamp)
            | (timestamp > latest.to_datetime64()),
            event_id=_text(raw, "order_id"),
            file=raw["file"].to_numpy(),
            record=raw["record"].to_numpy(),
        )

    def decided(self, canonical: pd.Series, erased: NDArray[np.bool_]) -> pd.DataFrame:
        """``training.interactions.COLUMNS`` of the records, given each alias's canonical
        id (``canonical``, "" for none) and whether its records are erased (``erased``)."""
        distinct = pd.factorize(self.event_id.values)[0]  # two raw ids may strip to one
        duplicate = pd.Series(self.event_id.per_row(distinct)).duplicated().to_numpy()
        outcome = merged_outcomes(
            self.kind,
            invalid=self.invalid,
            erased=self.customer.per_row(erased),
            duplicate=duplicate & self.event_id.per_row(self.event_id.values != ""),
            has_item=self.has_item,
            session=self._session(),
            customer_known=self.customer.per_row((canonical != "").to_numpy()),
        )
        return pd.DataFrame(
            {
                "source": self.source.name,
                "kind": self.kind,
                "customer_id": self.customer.per_row(canonical.to_numpy(dtype=object)),
                "item_id": self.item_id,
                "timestamp": self.timestamp,
                "trust": np.full(len(self.kind), self.source.trust, dtype=np.float32),
                "outcome": outcome,
            }
        )

    def table(self, position: int) -> pa.Table:
        """The records as ``training.spark_events.LOGGED``'s rows, for Spark to decide
        (``position``: their source's)."""
        alias = self.customer.per_row(self.alias.to_numpy(dtype=object))
        event_id = self.event_id.per_row(self.event_id.values.to_numpy(dtype=object))
        stamps = self.timestamp.astype("datetime64[us]").view(np.int64)
        columns = {
            "record": pa.array(spark_events.record_order(position, self.file, self.record)),
            "source_position": pa.array(np.full(len(self.kind), position, np.int32)),
            "kind": pa.array(self.kind, pa.string()),
            "alias": pa.array(alias, pa.string(), mask=alias == ""),
            "session": pa.array(self._session()),
            "item_id": pa.array(self.item_id, pa.string()),
            "stamp": pa.array(stamps, mask=np.isnat(self.timestamp)),
            "invalid": pa.array(self.invalid),
            "has_item": pa.array(self.has_item),
            "event_id": pa.array(event_id, pa.string(), mask=event_id == ""),
            "trust": pa.array(np.full(len(self.kind), self.source.trust, np.float32)),
        }
        return pa.table(columns, schema=spark_events.LOGGED)

    def _session(self) -> NDArray[np.bool_]:
        """Whether each record's customer key is a session's still (never stitched)."""
        return self.customer.per_row(self.customer.values.map(is_session).to_numpy(dtype=bool))


# ``_LoggedRecords.read`` of a log's records with the merge's rules bound.
_ReadRecords = Callable[[pd.DataFrame, SourceConfig], _LoggedRecords]


def _logged_table(
    raw: pd.DataFrame, position: int, read: _ReadRecords, logs: dict[int, SourceConfig]
) -> pa.Table:
    """A file's interaction records for Spark (``training.spark_events.ReadRecords``;
    ``logs``: the event logs, by position)."""
    return read(raw, logs[position]).table(position)


def _prefixed(kind: str, values: pd.Series) -> pd.Series:
    """``<kind>:<value>`` aliases; "" stays "" (no identifier)."""
    return values.where(values == "", f"{kind}:" + values)


def _concat_parsed(
    frames: list[Columns], texts: list[dict[str, pa.DictionaryArray]]
) -> tuple[Columns, dict[str, pa.Array]]:
    """One set of columns, each text column as int32 codes into its sorted vocabulary
    (returned). Empties ``frames`` and ``texts`` column by column as it goes. Plain arrays,
    not a DataFrame: pandas would copy them into blocks of one type (at 20 M rows, GBs)."""
    parsed = {
        column: np.concatenate([frame.pop(column) for frame in frames])
        for column in list(frames[0])
    }
    vocabulary: dict[str, pa.Array] = {}
    for column in TEXT_COLUMNS:
        parts = [text.pop(column) for text in texts]
        # The sources' dictionaries sorted together; each entry's code is its position.
        distinct, code_of = _sorted_distinct(pa.concat_arrays([part.dictionary for part in parts]))
        starts = np.cumsum([0, *(len(part.dictionary) for part in parts)])
        parsed[column] = np.concatenate(
            [
                code_of[start : start + len(part.dictionary)][part.indices.to_numpy()]
                for start, part in zip(starts, parts, strict=False)
            ]
        )
        vocabulary[column], parsed[column] = _used(distinct, parsed[column])
    return parsed, vocabulary


def _used(vocabulary: pa.Array, codes: NDArray[np.int32]) -> tuple[pa.Array, NDArray[np.int32]]:
    """Only the values some row holds (a dictionary can hold more: an empty source's blank),
    as Spark's vocabularies hold them (``training.spark_sources``)."""
    used = np.bincount(codes, minlength=len(vocabulary)) > 0
    if used.all():
        return vocabulary, codes
    renumbered = (np.cumsum(used) - 1).astype(np.int32)
    return vocabulary.filter(pa.array(used)), renumbered[codes]


def _sorted_distinct(values: pa.Array) -> tuple[pa.Array, NDArray[np.int32]]:
    """``values``' distinct strings, ascending, and each value's position among them. A
    sort, not a hash table: at 20 M order ids the hash table took GBs."""
    order, ordered = sorted_strings(values)
    first = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        first[1:] = pc.not_equal(ordered[1:], ordered[:-1]).to_numpy(zero_copy_only=False)
    position = np.empty(len(order), dtype=np.int32)
    position[order] = np.cumsum(first) - 1
    return ordered.filter(pa.array(first)), position


def _blank_code(values: pa.Array) -> int:
    """The code of "" in a sorted vocabulary (-1 if absent)."""
    return 0 if len(values) and values[0].as_py() == "" else -1


def _strings(values: pa.Array) -> NDArray[np.object_]:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)


def customer_ids(raw: pd.Series) -> pd.Series:
    """Exports that went through a spreadsheet write ids as floats ("13085.0"); those are
    read as the integer id."""
    return raw.where(~raw.str.fullmatch(r"\d+\.0+"), raw.str.replace(r"\.0+$", "", regex=True))


def _key_aliases(
    keys: pd.Series, rules: IdentityRules, namespace_of: dict[str, str]
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Request keys (as the service's event log holds them) as id, email and phone aliases.
    A bare key is a canonical id: the shop's own id; ``session:<id>`` a session's alias."""
    id_of: dict[str, str] = {}
    email_of: dict[str, str] = {}
    phone_of: dict[str, str] = {}
    for key in keys.unique():
        if not key:
            continue
        if is_session(key):  # before namespaces: a source may be named "session"
            id_of[key] = f"{SESSION}:{key.removeprefix(SESSION_PREFIX).strip()}"
            continue
        alias = training_alias(key, rules, namespace_of) or f"{PRIMARY_NAMESPACE}:{key}"
        kind, _, value = alias.partition(":")
        if kind == EMAIL:
            email_of[key] = value
        elif kind == PHONE:
            phone_of[key] = value
        else:
            id_of[key] = alias

    def column(mapping: dict[str, str]) -> pd.Series:
        if not mapping:
            return pd.Series("", index=keys.index, dtype="str")
        return keys.map(mapping).fillna("").astype("str")

    return column(id_of), column(email_of), column(phone_of)


NO_ERASURE_LIST = (
    "no erasure list configured ([identity] erasures): customers erased through the service "
    "come back in this bundle; point it at the service's RECSVC_EVENTS_DIR/erasures.jsonl"
)


def erasure_report(identity: IdentityConfig, rows_erased: int) -> ErasureReport:
    """The manifest's ``identity.erasures``; a ``warning`` when no list is configured."""
    return ErasureReport(
        list=None if identity.erasures is None else str(identity.erasures),
        list_present=bool(identity.erasure_files()),
        rows_erased=rows_erased,
        warning=NO_ERASURE_LIST if identity.erasures is None else None,
    )


def load_erasures(identity: IdentityConfig) -> set[str]:
    """Alias digests (hex) of every erased customer, from the service's erasure lists (every
    host's, where ``[identity] erasures`` is a glob)."""
    digests: set[str] = set()
    for path in identity.erasure_files():
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    digests.update(json.loads(line)[ALIAS_DIGESTS])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise SourceError(
                        f"{path}, line {number}: not an erasure record ({error})"
                    ) from None
    return digests


def _is_session_alias(alias: str) -> bool:
    return alias.startswith(SESSION_PREFIX)


def _normalised(values: pd.Series, normalise: Callable[[str], str | None]) -> pd.Series:
    """Apply ``normalise`` once per distinct value; "" where absent or invalid."""
    if not (values != "").any():
        return values
    distinct = {value: normalise(value) or "" for value in values.unique() if value}
    return values.map(distinct).fillna("").astype("str")


def parse_timestamps(values: pd.Series, fmt: str | None, timezone: str) -> pd.Series:
    """Naive UTC timestamps. Values without an offset are read in the source's time zone;
    an hour that does not exist or is ambiguous there (DST changes) does not parse."""
    if timezone == "UTC":
        parsed = pd.to_datetime(values, format=fmt or "ISO8601", errors="coerce", utc=True)
        return parsed.dt.tz_localize(None)
    has_offset = values.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if has_offset.any():
        aware = pd.to_datetime(
            values[has_offset], format=fmt or "ISO8601", errors="coerce", utc=True
        )
        result[has_offset] = aware.dt.tz_localize(None)
    naive = pd.to_datetime(values[~has_offset], format=fmt or "ISO8601", errors="coerce")
    result[~has_offset] = wall_time_in_utc(naive, timezone)
    return result


def parse_numbers(values: pd.Series) -> NDArray[np.float64]:
    """Parse decimal strings; anything unparseable (including "") becomes NaN."""
    try:  # fast path: every value parses
        parsed = pc.cast(pa.array(values, type=pa.string()), pa.float64())
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
