"""One merge, two engines: DuckDB and Spark SQL (``local[2]``) give the same accounting,
the same merged rows and the same owned sets, on the reference data and on a synthetic set
of four sources that exercises every outcome; and Spark's executors rank customers as the
single host does, on ``local[2]`` and on a standalone cluster started on this host."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from numpy.typing import NDArray

from benchmarks.local_server import spark_standalone
from recsvc.bundle import CATALOG, OWNED, TRIGGER_ARRAYS, Bundle, load_bundle
from recsvc.identity import IdentityKey
from recsvc.logrecords import ALIAS_DIGESTS
from recsvc.policy import tier_indices
from tests.helpers import write_csv
from tests.test_imports import run_python, without
from training import sources as sources_module
from training.config import EngineConfig, TrainConfig, load_config
from training.dataset import ItemSales, TrainingData, build_dataset
from training.engine import quiet, spark_session, stop_spark_sessions
from training.errors import SourceError
from training.fit import Factors, confidences
from training.identity import MAX_EXAMPLES, LinkRules, link
from training.interactions import (
    ANONYMOUS,
    DUPLICATE,
    UNDECIDED,
    UNKNOWN_CUSTOMER,
    UNKNOWN_ITEM,
    UNWEIGHTED,
    USED,
    records_frame,
)
from training.interactions import ERASED as ERASED_RECORD
from training.interactions import accounting as interaction_accounting
from training.itemitem import Neighbours, fit_neighbours
from training.merge import OUTCOMES, MergedHistory, merge_sources
from training.pipeline import alias_digests, read_sources, served_arrays, source_contents, train
from training.progress import Progress
from training.quarantine import WITHHELD
from training.recommenders import History
from training.segments import SegmentSales, sales_of, segment_arrays
from training.sources import DatabaseSlices, read_source
from training.spark_als import SparkFactors
from training.spark_candidates import (
    CUSTOMER_PARTS,
    customer_side,
    owned_lists,
    spark_served_arrays,
)
from training.spark_dataset import ROW_SCHEMA, MergedRows, RowVocabulary, built_on_executors
from training.spark_events import RECORD_SCHEMA
from training.spark_identity import link_on_spark
from training.spark_itemitem import neighbours_on_executors
from training.tiers import (
    CustomerLines,
    Population,
    TierConfig,
    TierLevel,
    build_crm,
    order_slots,
    window_spend,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "online-retail.toml"
DUCKDB = EngineConfig()
POSTGRES_DSN = os.environ.get(
    "RECSVC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

SYNTHETIC_CONFIG = """
[identity]
default_region = "GB"
crosswalk = "customers.csv"
erasures = "erasures.jsonl"

[items]
non_product_ids = ["POST"]
crosswalk = "items.csv"

[[sources]]
name = "shop"
kind = "csv"
path = "shop.csv"
cancellation_prefix = "C"
[sources.columns]
order_id = "order"
customer_id = "cust"
email = "mail"
phone = "tel"
item_id = "sku"
quantity = "qty"
unit_price = "price"
timestamp = "at"

[[sources]]
name = "legacy"
kind = "parquet"
path = "legacy.parquet"
cancellation_prefix = "C"
[sources.columns]
order_id = "Invoice"
customer_id = "Customer"
phone = "Mobile"
item_id = "StockCode"
quantity = "Quantity"
unit_price = "Price"
timestamp = "InvoiceDate"

[[sources]]
name = "partner"
kind = "jsonl"
path = "partner.jsonl"
customer_namespace = "partner"
[sources.columns]
customer_id = "member"
email = "buyer_email"
item_id = "isbn"
unit_price = "price_eur"
timestamp = "purchased_at"

[[sources]]
name = "live"
kind = "events"
path = "events-*.jsonl"
"""


def merged_with(config: TrainConfig, engine: EngineConfig) -> MergedHistory:
    """As ``recsvc train`` merges: with Spark, its executors read the file and database
    sources."""
    sources = read_sources(dataclasses.replace(config, engine=engine), Progress.silent())
    return merge_sources(sources, config.items, config.identity, engine)


def owned(merged: MergedHistory) -> set[tuple[str, str]]:
    data = build_dataset(merged.events, 90.0, 14.0, merged.item_groups)
    rows, columns = data.owned.nonzero()
    return {
        (str(data.customer_ids[row]), str(data.item_ids[column]))
        for row, column in zip(rows, columns, strict=True)
    }


def assert_rows_equal(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """``pd.testing.assert_frame_equal`` with each categorical column compared as its
    categories and codes: pandas compares them value by value, about 11 s per column of the
    reference data's million rows."""
    assert list(left.columns) == list(right.columns)
    categorical = [c for c in left.columns if isinstance(left[c].dtype, pd.CategoricalDtype)]
    for column in categorical:
        assert isinstance(right[column].dtype, pd.CategoricalDtype), column
        assert left[column].cat.ordered == right[column].cat.ordered, column
        pd.testing.assert_index_equal(
            left[column].cat.categories, right[column].cat.categories, obj=column
        )
    codes = {column: left[column].cat.codes for column in categorical}
    other_codes = {column: right[column].cat.codes for column in categorical}
    pd.testing.assert_frame_equal(left.assign(**codes), right.assign(**other_codes))


def assert_same(duck: MergedHistory, spark: MergedHistory) -> None:
    assert spark.accounting == duck.accounting
    assert_rows_equal(spark.events, duck.events)
    assert spark.quarantine.path.read_bytes() == duck.quarantine.path.read_bytes()
    pd.testing.assert_frame_equal(spark.quarantine.firsts, duck.quarantine.firsts)
    assert spark.aliases == duck.aliases
    assert spark.identity == duck.identity
    pd.testing.assert_frame_equal(spark.interactions, duck.interactions)
    assert owned(spark) == owned(duck)


def test_reference_data_merges_alike(spark_engine: EngineConfig) -> None:
    config = load_config(REFERENCE)
    for source in config.sources:
        assert source.files(), f"the reference data is missing: {source.path}"
    duck = merged_with(config, DUCKDB)
    assert duck.accounting["shop"]["duplicate"] > 20_000  # the exports overlap
    assert_same(duck, merged_with(config, spark_engine))


def test_the_item_side_adds_up_from_any_split_of_the_rows() -> None:
    """What each part of the merged rows makes of the items sold (as each Spark partition
    will) adds up to what all the rows make on one host: the same items, titles (ties by
    count), prices (ties by time, then row) and, up to float sums, popularity."""
    events = merged_with(load_config(REFERENCE), DUCKDB).events
    # Two of an item's latest sales at one time, at two prices: the later row's is its price.
    sales = np.flatnonzero(
        (events["outcome"] == "used").to_numpy() & (events["unit_price"] > 0).to_numpy()
    )
    first, second = sales[len(sales) // 2], sales[-1]
    events.loc[second, ["item_id", "timestamp"]] = events.loc[first, ["item_id", "timestamp"]]
    events.loc[second, "unit_price"] = events.loc[first, "unit_price"] + 1.0
    events.loc[events["item_id"] == events.loc[first, "item_id"], "timestamp"] = events.loc[
        first, "timestamp"
    ]
    whole = build_dataset(events, 30.0, 14.0)
    tied = whole.item_ids.tolist().index(events.loc[first, "item_id"])
    assert whole.prices[tied] == events.loc[second, "unit_price"]
    customer = events["customer_id"].cat.codes.to_numpy()
    rows = np.arange(len(events))
    for split in (customer % 3, rows % 2, (rows * 7919) % 5):
        parts = [
            ItemSales.of(events[split == part], whole.as_of, 30.0, 14.0, rows[split == part])
            for part in np.unique(split)
        ]
        combined = ItemSales.combined(parts)
        np.testing.assert_array_equal(combined.item_ids, whole.item_ids)
        np.testing.assert_array_equal(combined.titles(), whole.titles)
        np.testing.assert_array_equal(combined.prices(), whole.prices)
        np.testing.assert_allclose(combined.popularity, whole.popularity, rtol=1e-9)
        np.testing.assert_allclose(combined.trending, whole.trending, rtol=1e-9)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """Four sources with three id schemes, an item and a customer crosswalk, lines that
    overlap between sources and repeat inside one, cancellations, non-products, bad values,
    malformed CSV rows, anonymous rows, a replayed event log with anonymous visits (one
    signed in, one erased) and two erased customers."""
    directory = tmp_path_factory.mktemp("synthetic")
    rng = random.Random(7)
    skus = [f"{20000 + n}" for n in range(40)]
    shop: list[list[object]] = []
    legacy: dict[str, list[object]] = {
        name: [] for name in ("Invoice", "Customer", "Mobile", "StockCode")
    } | {"Quantity": [], "Price": [], "InvoiceDate": []}

    def legacy_line(line: list[object]) -> None:
        for name, value in zip(legacy, line, strict=True):
            legacy[name].append(value)

    for order in range(400):
        customer = rng.choice(["", *(str(100 + n) for n in range(60))])
        email = f"c{customer}@example.com" if customer and rng.random() < 0.5 else ""
        phone = f"020 7946 {int(customer):04d}" if customer and rng.random() < 0.3 else ""
        when = f"2011-0{1 + order % 9}-{1 + order % 28:02d} 10:{order % 60:02d}:00"
        for _ in range(rng.randint(1, 4)):
            sku = rng.choice([*skus, "POST"])
            quantity = rng.choice([1, 1, 2, 3, 0, "x"] if rng.random() < 0.1 else [1, 2, 3])
            prefix = "C" if rng.random() < 0.05 else ""
            line = [f"{prefix}{order}", customer, email, phone, sku, quantity, 2.5, when]
            shop.append(line)
            if rng.random() < 0.05:  # repeated inside the shop export: kept
                shop.append(line)
            if order < 120 and rng.random() < 0.6:  # the overlap: also in the legacy export
                legacy_line([f"{prefix}{order}", customer, phone, sku, str(quantity), "2.5", when])
    for order in range(1000, 1200):
        customer = rng.choice(["", *(str(140 + n) for n in range(40))])
        legacy_line(
            [
                str(order),
                f"{customer}.0" if customer and rng.random() < 0.3 else customer,
                rng.choice(["", "07700 900123", "+44 20 7946 0101"]),
                rng.choice(skus),
                str(rng.choice([1, 2, -1])),
                rng.choice(["3.1", "3.1", "-1"]),
                f"2011-03-{1 + order % 28:02d} 09:00:00",
            ]
        )
    header = ["order", "cust", "mail", "tel", "sku", "qty", "price", "at"]
    write_csv(directory / "shop.csv", header, shop)
    with (directory / "shop.csv").open("a") as handle:
        handle.write("9000,101,,,20001,1,2.5,2011-04-01 10:00:00,surplus\n")  # malformed
        handle.write("9001,101\n")
    pq.write_table(pa.table(legacy), directory / "legacy.parquet")
    partner = [
        {
            "member": rng.choice(["", f"M{n % 25}"]),
            "buyer_email": rng.choice(["", f"c{100 + n % 50}@example.com", "not an address"]),
            "isbn": rng.choice(["978-1", "978-2", *skus[:5]]),
            "price_eur": rng.choice([9.5, None]),
            "purchased_at": f"2011-05-{1 + n % 28:02d}T12:00:00+01:00",
        }
        for n in range(150)
    ]
    (directory / "partner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in partner))
    events = [
        {
            "event_id": f"e{n % 90}",  # replays: repeated ids are duplicates
            "customer": rng.choice(
                ["101", "email:c102@example.com", "shop:103", "phone:02079460104"]
            ),
            "item_id": rng.choice(skus),
            "quantity": rng.choice([1, 2, -1]),
            "price": 2.5,
            "timestamp": f"2011-06-{1 + n % 28:02d}T08:00:00Z",
            "received_at": 1_300_000_000 + n,
        }
        for n in range(120)
    ]
    # Anonymous visits, each viewing an item and buying one: one signs in as customer 101
    # (stitched: its records become theirs), one never signs in (anonymous), and one is on
    # the erasure list (never stitched: its rows are erased, its view too).
    visits = {"session:v1": "101", "session:v2": None, "session:v3": "102"}
    for number, (session, login) in enumerate(visits.items()):
        moment = {"timestamp": f"2011-06-{10 + number}T09:00:00Z", "customer": session}
        received = 1_300_001_000 + 3 * number
        events.append(
            {"event_id": f"v{number}-view", "kind": "view", "item_id": skus[number + 1]}
            | moment
            | {"received_at": received}
        )
        events.append(
            {
                "event_id": f"v{number}-buy",
                "kind": "purchase",
                "item_id": skus[number],
                "quantity": 1,
                "price": 2.5,
            }
            | moment
            | {"received_at": received + 1}
        )
        if login is not None:
            events.append(
                {"event_id": f"v{number}-login", "kind": "login", "session": session}
                | moment
                | {"customer": login, "received_at": received + 2}
            )
    # A second file: a replayed view (a duplicate across files) and a fourth visit whose
    # session signs in twice, its later link (by receipt) in the first file: it goes to the
    # customer of that link.
    visit = {
        "customer": "session:v4",
        "timestamp": "2011-06-20T09:00:00Z",
        "quantity": None,  # the log's columns, in a file of no purchase
        "price": None,
    }
    later = [
        {"event_id": "v0-view", "kind": "view", "item_id": skus[5]}
        | visit
        | {"customer": "session:v1", "received_at": 1_300_002_001},
        {"event_id": "v4-view", "kind": "view", "item_id": skus[6], "received_at": 1_300_002_002}
        | visit,
        {"event_id": "v4-login-b", "kind": "login", "session": "session:v4"}
        | visit
        | {"customer": "101", "received_at": 1_300_002_003},
    ]
    events.append(
        {"event_id": "v4-login-a", "kind": "login", "session": "session:v4"}
        | visit
        | {"customer": "email:c102@example.com", "received_at": 1_300_002_005}
    )
    (directory / "events-1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (directory / "events-2.jsonl").write_text("".join(json.dumps(e) + "\n" for e in later))
    write_csv(
        directory / "items.csv",
        ["source", "item_id", "catalog_id", "group"],
        [["partner", "978-1", skus[0], "book"], ["partner", "978-2", skus[1], "book"]],
    )
    write_csv(
        directory / "customers.csv",
        ["left", "right"],
        [[f"partner:M{n}", f"shop:{110 + n}"] for n in range(10)],
    )
    key = IdentityKey.development_key()
    erased = ["customer:105", "email:c120@example.com", "session:v3"]
    (directory / "erasures.jsonl").write_text(
        "".join(json.dumps({ALIAS_DIGESTS: [key.hex(alias)]}) + "\n" for alias in erased)
    )
    (directory / "train.toml").write_text(SYNTHETIC_CONFIG)
    return load_config(directory / "train.toml")


def test_synthetic_sources_merge_alike(synthetic: TrainConfig, spark_engine: EngineConfig) -> None:
    duck = merged_with(synthetic, DUCKDB)
    totals = {
        outcome: sum(counts[outcome] for counts in duck.accounting.values())
        for outcome in OUTCOMES
        if outcome != "quarantined"
    }
    assert all(totals.values()), totals  # every outcome occurs
    reasons = {reason for counts in duck.accounting.values() for reason in counts["quarantined"]}
    assert {"malformed_row", "bad_quantity", "zero_quantity", "negative_price"} <= reasons
    assert duck.accounting["live"]["duplicate"] >= 30  # the replayed event ids
    assert duck.identity.customers_with_several_aliases > 10
    assert WITHHELD in set(duck.quarantine.frame()["detail"])  # an erased customer's
    # The visits: the one who signed in viewed as customer 101 (stitched), the anonymous
    # one's view and purchase are nobody's, the erased one's are erased.
    views = duck.interactions[duck.interactions["kind"] == "view"].set_index("item_id")
    assert views.loc["20001", "customer_id"] == duck.aliases["customer:101"]
    assert views.loc["20001", "outcome"] == UNDECIDED  # a known customer's, for the dataset
    assert list(views.loc[["20002", "20003"], "outcome"]) == [ANONYMOUS, ERASED_RECORD]
    assert views.loc["20005", "outcome"] == DUPLICATE  # v1's view replayed, in the next file
    assert duck.aliases["email:c102@example.com"] != duck.aliases["customer:101"]
    assert views.loc["20006", "customer_id"] == duck.aliases["email:c102@example.com"]
    assert duck.accounting["live"]["anonymous"] == 1 and duck.accounting["live"]["erased"] == 1
    assert_same(duck, merged_with(synthetic, spark_engine))


MULTI_FILE_CONFIG = """
[[sources]]
name = "shop"
kind = "csv"
path = "shop-*.csv"
cancellation_prefix = "C"
[sources.columns]
order_id = "order"
customer_id = "cust"
email = "mail"
item_id = "sku"
quantity = "qty"
unit_price = "price"
timestamp = "at"

[[sources]]
name = "partner"
kind = "jsonl"
path = "partner-*.jsonl"
customer_namespace = "partner"
[sources.columns]
customer_id = "member"
item_id = "isbn"
quantity = "n"
timestamp = "at"
"""


def test_executors_read_each_file_as_the_single_host(
    tmp_path: Path, spark_engine: EngineConfig
) -> None:
    """A task per file reads and parses it with the single-host code: rows numbered across a
    source's files in order (repeated lines inside a source are kept, across files too),
    quarantined rows from several files with their file and record, a file with no rows,
    a blank order id; and a file the reader refuses fails the run with the reader's
    message."""
    header = ["order", "cust", "mail", "sku", "qty", "price", "at"]
    first = [
        ["1", "100", "a@example.com", "20001", "1", "2.5", "2011-01-01 10:00:00"],
        ["1", "100", "a@example.com", "20002", "x", "2.5", "2011-01-01 10:00:00"],
        ["C2", "101", "", "20001", "1", "2.5", "2011-01-02 10:00:00"],
        ["", "102", "", "20003", "2", "2.5", "2011-01-03 10:00:00"],
    ]
    write_csv(tmp_path / "shop-1.csv", header, first)
    with (tmp_path / "shop-1.csv").open("a") as handle:
        handle.write("9,100\n")  # malformed
    write_csv(tmp_path / "shop-2.csv", header, [])
    write_csv(
        tmp_path / "shop-3.csv",
        header,
        [
            first[0],  # the same line again, in the same source: kept
            ["3", "", "b@example.com", "20004", "1", "-1", "2011-01-04 10:00:00"],
            ["4", "103", "", "20005", "1", "2.5", "not a time"],
        ],
    )
    for number, rows in enumerate(
        [
            [{"member": "M1", "isbn": "20001", "n": 1, "at": "2011-02-01T00:00:00Z"}],
            [
                {"member": "M2", "isbn": "20006", "n": 0, "at": "2011-02-02T00:00:00Z"},
                {"member": "", "isbn": "20007", "n": 1, "at": "2011-02-03T00:00:00Z"},
            ],
        ],
        start=1,
    ):
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (tmp_path / f"partner-{number}.jsonl").write_text(lines)
    (tmp_path / "train.toml").write_text(MULTI_FILE_CONFIG)
    config = load_config(tmp_path / "train.toml")
    duck = merged_with(config, DUCKDB)
    spark = merged_with(config, spark_engine)
    assert_same(duck, spark)
    assert spark.accounting["shop"]["rows_read"] == 8
    assert spark.accounting["shop"]["quarantined"] == {
        "malformed_row": 1,
        "bad_quantity": 1,
        "negative_price": 1,
        "bad_timestamp": 1,
    }
    assert spark.accounting["partner"]["quarantined"] == {"zero_quantity": 1}
    assert [Path(name).name for name in spark.quarantine.frame()["file"]] == [
        "shop-1.csv",
        "shop-1.csv",
        "shop-3.csv",
        "shop-3.csv",
        "partner-2.jsonl",
    ]
    repeated = spark.events[spark.events["item_id"] == "20001"]
    assert (repeated["outcome"] == "used").sum() == 3  # twice in the shop, once the partner's

    write_csv(tmp_path / "shop-4.csv", ["order", "cust"], [["5", "104"]])
    with pytest.raises(SourceError) as single_host:
        merged_with(config, DUCKDB)
    with pytest.raises(SourceError) as executors:
        merged_with(config, spark_engine)
    assert str(executors.value) == str(single_host.value)
    assert "shop-4.csv" in str(executors.value)
    assert "missing column" in str(executors.value)


PARQUET_CONFIG = """
[[sources]]
name = "legacy"
kind = "parquet"
path = "legacy-*.parquet"
timestamp_format = "%d/%m/%Y %H:%M"
[sources.columns]
customer_id = "customer"
item_id = "sku"
quantity = "qty"
timestamp = "at"
"""


def test_executors_read_a_table_in_slices_as_the_single_host(
    tmp_path: Path, spark_engine: EngineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL table read a range of blocks per task: the same rows, quarantine
    (located by slice) and fingerprint content as one host reading it, whole or in slices."""
    try:
        connection = psycopg.connect(POSTGRES_DSN, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is needed at {POSTGRES_DSN} (set RECSVC_TEST_POSTGRES_DSN): {error}"
        )
    schema = f"recsvc_slices_{uuid.uuid4().hex[:8]}"
    rows = [
        (
            f"O{i // 3}",
            i // 7,
            f"c{i // 7}@example.com",
            f"P{i % 40}",
            "x" if i % 97 == 5 else str(0 if i % 131 == 7 else 1 + i % 3),
            2.5,
            f"2011-0{1 + i % 9}-01 10:00+00",
        )
        for i in range(1500)
    ]
    with connection:
        connection.execute(f"CREATE SCHEMA {schema}")
        connection.execute(
            f"CREATE TABLE {schema}.orders (order_no text, customer integer, email text, "
            "sku text, qty text, price numeric(10, 2), sold_at timestamptz)"
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {schema}.orders VALUES (%s, %s, %s, %s, %s, %s, %s)", rows
            )
        try:
            (tmp_path / "train.toml").write_text(
                f'[[sources]]\nname = "orders"\nkind = "postgresql"\ndsn = "{POSTGRES_DSN}"\n'
                f'table = "{schema}.orders"\nmax_quarantine_share = 0.5\n'
                '[sources.columns]\norder_id = "order_no"\ncustomer_id = "customer"\n'
                'email = "email"\nitem_id = "sku"\nquantity = "qty"\nunit_price = "price"\n'
                'timestamp = "sold_at"\n'
            )
            config = load_config(tmp_path / "train.toml")
            (source,) = config.sources
            whole = merged_with(config, DUCKDB)
            whole_content = source_contents([read_source(source)])
            assert DatabaseSlices.of(source).clauses == ["ctid >= '(0,0)'::tid"]

            monkeypatch.setattr(sources_module, "SLICE_BLOCKS", 3)
            assert len(DatabaseSlices.of(source).clauses) >= 3
            duck = merged_with(config, DUCKDB)
            spark = merged_with(config, spark_engine)
        finally:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
    assert_same(duck, spark)
    assert duck.accounting == whole.accounting
    assert_rows_equal(duck.events, whole.events)
    assert duck.accounting["orders"]["quarantined"] == {"bad_quantity": 16, "zero_quantity": 12}
    assert spark.database_contents == whole_content
    files = set(spark.quarantine.frame()["file"])
    assert len(files) >= 3 and all(f"table {schema}.orders, blocks from" in f for f in files)


def test_files_read_alone_by_executors_are_read_as_with_their_source(
    tmp_path: Path, spark_engine: EngineConfig
) -> None:
    """Where one host reads a Parquet source's files together (a column typed in some files
    and text in others is text in all), a task reading one file does the same; sources
    with no rows at all merge alike; a file an executor cannot open fails the run with a
    message that says so, not a traceback."""
    typed = {
        "customer": ["1"],
        "sku": ["A"],
        "qty": [1.0],
        "at": [pd.Timestamp("2011-01-02 10:00")],
    }
    pq.write_table(pa.table(typed), tmp_path / "legacy-1.parquet")
    text = {"customer": ["2"], "sku": ["B"], "qty": ["2"], "at": ["03/01/2011 11:00"]}
    pq.write_table(pa.table(text), tmp_path / "legacy-2.parquet")
    (tmp_path / "train.toml").write_text(PARQUET_CONFIG)
    config = load_config(tmp_path / "train.toml")
    duck = merged_with(config, DUCKDB)
    assert duck.accounting["legacy"]["quarantined"] == {"bad_timestamp": 1}  # as text
    assert_same(duck, merged_with(config, spark_engine))

    # Typed in every file, quarantined rows in both: midnight in one file, not in the other
    # (pandas would write a column of midnights as dates, and the two engines split the
    # rows differently).
    typed_dir = tmp_path / "typed"
    typed_dir.mkdir()
    for number, hour in ((1, "00:00"), (2, "10:30")):
        rows = {
            "customer": [f"{number}", f"{number}0"],
            "sku": ["A", "B"],
            "qty": [1.0, 0.0],
            "at": [pd.Timestamp(f"2011-01-0{number} {hour}")] * 2,
        }
        pq.write_table(pa.table(rows), typed_dir / f"legacy-{number}.parquet")
    (typed_dir / "train.toml").write_text(PARQUET_CONFIG)
    config = load_config(typed_dir / "train.toml")
    duck = merged_with(config, DUCKDB)
    assert list(duck.quarantine.frame()["timestamp"]) == [
        "2011-01-01T00:00:00.000000Z",
        "2011-01-02T10:30:00.000000Z",
    ]
    assert_same(duck, merged_with(config, spark_engine))

    empty = tmp_path / "empty"
    empty.mkdir()
    write_csv(empty / "shop-1.csv", ["order", "cust", "mail", "sku", "qty", "price", "at"], [])
    write_csv(empty / "shop-2.csv", ["order", "cust", "mail", "sku", "qty", "price", "at"], [])
    shop_only = MULTI_FILE_CONFIG[: MULTI_FILE_CONFIG.index('[[sources]]\nname = "partner"')]
    (empty / "train.toml").write_text(shop_only)
    config = load_config(empty / "train.toml")
    duck = merged_with(config, DUCKDB)
    spark = merged_with(config, spark_engine)
    assert spark.accounting == duck.accounting
    assert duck.accounting["shop"]["rows_read"] == 0
    assert_rows_equal(spark.events, duck.events)
    assert spark.quarantine.path.read_bytes() == duck.quarantine.path.read_bytes()
    pd.testing.assert_frame_equal(spark.quarantine.firsts, duck.quarantine.firsts)

    (empty / "shop-3.csv").symlink_to(empty / "gone.csv")  # as on a host without it
    with pytest.raises(SourceError, match=r"shop-3\.csv: cannot read it on executor host"):
        merged_with(config, spark_engine)


def test_executors_link_customers_as_the_single_host(spark_engine: EngineConfig) -> None:
    """Spark finds the alias graph's components and each task links whole ones with the
    single-host union-find: the same customers, refusals and first examples as linking all
    at once, across several tasks, with a chain longer than a few label rounds."""
    rng = random.Random(11)
    records: list[tuple[str, str, str]] = []
    for n in range(300):
        shop_id = f"shop:{n}" if rng.random() < 0.8 else ""
        email = f"email:c{rng.randrange(260)}@example.com" if rng.random() < 0.6 else ""
        phone = rng.choice(["", "", f"phone:+4420794{n:05d}", "phone:+447700900123"])
        records.append((shop_id, email, phone))
    # One customer known by 80 addresses and numbers, each only beside the next, in an
    # order their names do not follow.
    chain = [f"c{rng.randrange(10**9)}" for _ in range(41)]
    for n in range(40):
        number = f"phone:+447{rng.randrange(10**9):09d}"
        records.append(("", f"email:{chain[n]}@example.com", number))
        records.append(("", f"email:{chain[n + 1]}@example.com", number))
    # Households: an address shared by ids of five shops, more than max_cluster_ids.
    for n in range(8):
        records += [(f"shop{shop}:{n}", f"email:home{n}@example.com", "") for shop in range(5)]
    records.append(("", "", ""))
    crosswalk = [(f"partner:M{n}", f"shop:{rng.randrange(300)}") for n in range(30)]
    crosswalk += [crosswalk[3], ("partner:M0", "partner:M0"), ("customer:7", "shop:7")]
    # Accounts joined one by one past max_cluster_ids: which are refused depends on the order.
    crosswalk += [(f"till:{n}", f"{system}:{n}") for n in range(4) for system in "abcd"]
    rules = LinkRules(max_cluster_ids=3)
    key = IdentityKey.development_key()
    expected = link(records, crosswalk, rules, key)
    assert set(expected.refused) == {"cluster_cap", "distinct_ids"}
    assert all(count > MAX_EXAMPLES for count in expected.refused.values())
    session = spark_session(spark_engine.master, tuple(sorted(spark_engine.conf.items())))
    linked = link_on_spark(alias_frame(session, records).repartition(3), crosswalk, rules, key)
    assert linked.report() == expected.report()
    found = linked.collected()
    assert found.customer_of == expected.customer_of
    assert found.refused == expected.refused
    assert found.examples == expected.examples
    assert len({found.customer_of[f"email:{name}@example.com"] for name in chain}) == 1
    # Fewer components than tasks: some tasks link nothing.
    few = [("shop:1", "email:a@example.com", ""), ("", "", "")]
    linked = link_on_spark(alias_frame(session, few), [], rules, key)
    assert linked.collected() == link(few, [], rules, key)


def alias_frame(session: SparkSession, records: list[tuple[str, str, str]]) -> DataFrame:
    """``records`` as the merge hands them to Spark's linking: NULL where "" (none)."""
    return session.createDataFrame(
        [tuple(alias or None for alias in record) for record in records],
        schema="id_alias string, email_alias string, phone_alias string",
    )


@pytest.mark.parametrize("history", ["reference", "synthetic"])
def test_the_executors_build_the_dataset_as_one_host_does(
    history: str, request: pytest.FixtureRequest, spark_engine: EngineConfig
) -> None:
    """Spark tasks, a range of customers each, build from the merged rows what one process
    builds from all of them: the dataset (item side, matrices, owned items, spend, orders,
    settlement, the interaction records' outcomes), then, with the population the ranges
    add up to, the tiers, signals, triggers and best sellers per segment."""
    config = load_config(REFERENCE) if history == "reference" else request.getfixturevalue(history)
    merged = merged_with(config, DUCKDB)
    records = planted_records(merged.events)
    params = msgspec.structs.replace(
        config.model,
        weights=msgspec.structs.replace(config.model.weights, view=0.2, cart_add=0.5),
    )
    tiers = percentile_tiers(config)
    whole = build_dataset(
        merged.events,
        params.half_life_days,
        params.trend_half_life_days,
        merged.item_groups,
        records,
        params.weights,
    )
    session = spark_session(spark_engine.master, tuple(sorted(spark_engine.conf.items())))
    rows = merged_rows_on_spark(session, merged.events)
    aliases = session.createDataFrame(
        pa.table(
            {
                "alias": pa.array(list(merged.aliases), pa.string()),
                "customer": pa.array(list(merged.aliases.values()), pa.string()),
            }
        )
    )
    key = IdentityKey("executors-test-secret-0123456789abcdef")
    built = built_on_executors(
        rows,
        aliases,
        records_on_executors(session, records),
        merged.item_groups,
        params,
        tiers,
        spark_engine,
        key,
        len(merged.events),
    )
    request.addfinalizer(built.release)  # its parts removed whether the checks pass or not
    data = built.data
    expected_digests = alias_digests(merged.aliases, whole.customer_ids, key)
    assert len(expected_digests[0]) > len(whole.customer_ids)  # each customer's, and more
    for name, found, expected in zip(
        ("alias_high", "alias_low", "alias_rows"),
        built.alias_digests,
        expected_digests,
        strict=True,
    ):
        np.testing.assert_array_equal(found, expected, err_msg=name)
    for name in ("customer_ids", "item_ids", "held_source", "source_names", "item_group"):
        np.testing.assert_array_equal(getattr(data, name), getattr(whole, name), err_msg=name)
    for name in ("spend", "orders", "titles", "prices"):
        np.testing.assert_array_equal(getattr(data, name), getattr(whole, name), err_msg=name)
    for name in ("popularity", "trending"):
        np.testing.assert_allclose(getattr(data, name), getattr(whole, name), rtol=1e-9)
    for name in ("interactions", "held", "owned", "feedback"):
        assert getattr(data, name).shape == getattr(whole, name).shape, name
        assert (getattr(data, name) != getattr(whole, name)).nnz == 0, name
    assert data.as_of == whole.as_of
    assert data.settlement.report == whole.settlement.report
    assert set(whole.interaction_outcome) == {
        USED,
        UNWEIGHTED,
        UNKNOWN_ITEM,
        UNKNOWN_CUSTOMER,
        ANONYMOUS,
        DUPLICATE,
    }
    # The ranges decide the records and count them; the driver gets the counts alone.
    assert built.interactions == interaction_accounting(records, whole.interaction_outcome)
    assert len(built.data.interaction_outcome) == 0

    lines = CustomerLines.of(merged.events, whole.customer_ids, whole.settlement)
    crm = build_crm(
        lines, len(whole.customer_ids), whole.item_ids, whole.prices, whole.as_of, tiers
    )
    assert len(crm.arrays["trigger_rows"]) > 10
    assert len(crm.policy.levels) == 2 and crm.policy.levels[1].min_spend > 0
    for name, array in crm.arrays.items():
        np.testing.assert_array_equal(built.crm.arrays[name], array, err_msg=name)
    assert built.crm.policy == crm.policy
    spend = crm.arrays["window_spend"]
    sales = sales_of(
        merged.events, whole.item_ids, whole.customer_ids, whole.as_of, params.half_life_days
    )
    segments = segment_arrays(
        sales,
        len(whole.item_ids),
        tier_indices(crm.policy.levels, spend),
        [level.name for level in crm.policy.levels],
    )
    assert_segments_alike(built.segments, segments)

    # What the ranking reads of each customer, left on the executors as Parquet parts.
    side = pq.read_table(built.customer_side_directory).sort_by("row")
    expected_side = single_host_customer_side(whole, crm.arrays)
    assert side.schema.names == expected_side.schema.names
    for name in side.schema.names:
        found_column, expected_column = side.column(name), expected_side.column(name)
        if pa.types.is_list(expected_column.type):
            np.testing.assert_array_equal(
                pa.compute.list_value_length(found_column),
                pa.compute.list_value_length(expected_column),
            )
            found_column, expected_column = (
                pa.compute.list_flatten(found_column),
                pa.compute.list_flatten(expected_column),
            )
        np.testing.assert_array_equal(found_column, expected_column, err_msg=name)

    # What ALS learns from: the feedback's BM25 confidences, as the driver computes them.
    expected = confidences(whole.feedback, params).tocsr()
    with quiet():
        rated = built.ratings.frame.toArrow()
    found = sp.csr_matrix(
        (
            rated.column("confidence").to_numpy(),
            (rated.column("customer").to_numpy(), rated.column("item").to_numpy()),
        ),
        shape=expected.shape,
    )
    assert (built.ratings.customers, built.ratings.items) == expected.shape
    assert built.ratings.positive == np.count_nonzero(expected.data > 0)
    assert found.nnz == expected.nnz
    np.testing.assert_allclose(found.toarray(), expected.toarray(), rtol=1e-5, atol=1e-7)

    # The item-item model, from the same feedback parts: either kind, whatever the catalog.
    for kind in ("ease", "knn"):
        item_params = msgspec.structs.replace(params, item_item=kind)
        neighbours = neighbours_on_executors(
            spark_engine, built.feedback_directory, item_params, len(whole.item_ids)
        )
        assert_neighbours_alike(neighbours, fit_neighbours(whole.feedback, item_params))


def bundle_neighbours(bundle: Bundle) -> Neighbours:
    """The item-item model a bundle serves."""
    arrays = bundle.arrays
    kind = "ease" if "+ease+" in bundle.manifest.model else "knn"
    return Neighbours(
        kind, arrays.neighbour_indptr, arrays.neighbour_items, arrays.neighbour_scores
    )


def single_host_customer_side(data: TrainingData, crm: dict[str, NDArray[Any]]) -> pa.Table:
    """``customer_side`` of every customer of ``data`` with ``crm``'s figures."""
    return customer_side(
        0,
        owned_lists(data.held.indptr, data.held.indices, data.interactions.data),
        crm["window_spend"],
        crm["price_low"],
        crm["price_high"],
    )


def assert_neighbours_alike(found: Neighbours, expected: Neighbours) -> None:
    """The same neighbours per item, with the same scores up to the float rounding of their
    sums (the single host sums EASE^R's Gram matrix in float32, the executors in float64);
    two items in either order only where their scores are that close, and a neighbour in
    one list only where it ties with the other's last kept."""
    rtol = 1e-4 if expected.kind == "ease" else 1e-5
    assert found.kind == expected.kind
    np.testing.assert_array_equal(found.indptr, expected.indptr)
    assert len(expected.items) > 1000
    np.testing.assert_allclose(found.scores, expected.scores, rtol=rtol)
    for item in range(len(expected.indptr) - 1):
        start, end = expected.indptr[item], expected.indptr[item + 1]
        ours, theirs = found.items[start:end], expected.items[start:end]
        scores = expected.scores[start:end]
        for position in np.flatnonzero(ours != theirs):
            for neighbour, others in ((ours[position], theirs), (theirs[position], ours)):
                at = np.flatnonzero(others == neighbour)
                other = int(at[0]) if len(at) else len(scores) - 1
                assert np.isclose(scores[position], scores[other], rtol=rtol, atol=0), (
                    item,
                    neighbour,
                )


def merged_rows_on_spark(session: SparkSession, events: pd.DataFrame) -> MergedRows:
    """Merged ``events`` as the merge leaves them on the executors (ROW_SCHEMA)."""
    stamps = events["timestamp"].to_numpy().astype("datetime64[us]")
    table = pa.table(
        {
            "row_id": pa.array(np.arange(len(events), dtype=np.int64)),
            "outcome": pa.array(events["outcome"].cat.codes.to_numpy(np.int32)),
            "customer_id": pa.array(events["customer_id"].astype("str").to_numpy(), pa.string()),
            "source_position": pa.array(events["source"].cat.codes.to_numpy(np.int32)),
            "trust": pa.array(events["trust"].to_numpy(np.float32)),
            "quantity": pa.array(events["quantity"].to_numpy(np.float64)),
            "unit_price": pa.array(events["unit_price"].to_numpy(np.float64)),
            "stamp": pa.array(stamps.view(np.int64), mask=np.isnat(stamps)),
            "order": pa.array(events["order"].to_numpy(np.int32)),
            **{
                column: pa.array(events[column].cat.codes.to_numpy(np.int32))
                for column in ("item_id", "description", "country")
            },
        }
    )
    vocabulary = RowVocabulary(
        *(
            events[column].cat.categories.astype(str).tolist()
            for column in ("source", "item_id", "description", "country", "outcome")
        )
    )
    with quiet():
        frame = session.createDataFrame(table, schema=ROW_SCHEMA).repartition(3)
    return MergedRows.held(frame, vocabulary)


def percentile_tiers(config: TrainConfig) -> TierConfig:
    """``config``'s tiers with a percentile tier table (which takes every customer's spend)
    and spend, order and thank-you thresholds (which fire triggers)."""
    return dataclasses.replace(
        config.tiers,
        method="percentiles",
        levels=(TierLevel("bronze", min_percentile=0), TierLevel("gold", min_percentile=70)),
        spend_thresholds=(100.0,),
        order_thresholds=(3,),
        thank_you_spend=200.0,
    )


def records_on_executors(session: SparkSession, records: pd.DataFrame) -> DataFrame:
    """Interaction ``records`` (``training.interactions.COLUMNS``) as the merge leaves them
    on the executors (``training.spark_events.RECORD_SCHEMA``), in order."""
    stamps = records["timestamp"].to_numpy().astype("datetime64[us]")
    table = pa.table(
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
    with quiet():
        return session.createDataFrame(table, schema=RECORD_SCHEMA)


def planted_records(events: pd.DataFrame, count: int = 400) -> pd.DataFrame:
    """Interaction records of the customers and items of ``events`` (and some of no
    customer, an unknown one, an unknown item, a kind that is not feedback, and some the
    merge decided already), at the events' times."""
    generator = np.random.default_rng(7)
    customers = [*events["customer_id"].cat.categories.astype(str), "nobody-known"]
    items = [*events["item_id"].cat.categories.astype(str), "NO-SUCH-ITEM"]
    customer = generator.choice(customers, count)
    customer[: count // 20] = ""
    outcome = np.where(customer == "", ANONYMOUS, UNDECIDED).astype(np.int8)
    outcome[generator.random(count) < 0.05] = DUPLICATE
    frame = pd.DataFrame(
        {
            "source": "live",
            "kind": generator.choice(["view", "cart_add", "login"], count),
            "customer_id": customer,
            "item_id": generator.choice(items, count),
            "timestamp": generator.choice(events["timestamp"].to_numpy(), count),
            "trust": np.float32(1.0),
            "outcome": outcome,
        }
    )
    return records_frame([frame])


@pytest.mark.parametrize("history", ["reference", "synthetic"])
def test_customer_ranges_built_apart_add_up_to_the_whole(
    history: str, request: pytest.FixtureRequest
) -> None:
    """Each range of customers' rows (anonymous rows anywhere), built with the whole
    history's item side, gives those customers' rows of the whole history's dataset (as each
    Spark partition will): owned items, held quantities and sources, weights, spend, orders
    and the settlement of returns; and with the population the ranges add up to (tier
    table, usual order hour), their tiers, signals, triggers and best sellers per segment."""
    config = load_config(REFERENCE) if history == "reference" else request.getfixturevalue(history)
    merged = merged_with(config, DUCKDB)
    events = merged.events
    whole = build_dataset(events, 30.0, 14.0, merged.item_groups)
    items = ItemSales.of(events, whole.as_of, 30.0, 14.0)
    customer = events["customer_id"]
    known = customer.cat.categories
    assert known[0] == ""  # the anonymous rows' code
    bounds = [len(known) // 3, 2 * len(known) // 3]
    part = np.searchsorted(bounds, customer.cat.codes.to_numpy(), side="right")
    anonymous = customer.cat.codes.to_numpy() == 0
    part[anonymous] = np.arange(anonymous.sum()) % 3
    parts = [
        build_dataset(events[part == p], 30.0, 14.0, merged.item_groups, items=items)
        for p in range(3)
    ]
    assert all(len(p.customer_ids) for p in parts)
    np.testing.assert_array_equal(
        np.concatenate([p.customer_ids for p in parts]), whole.customer_ids
    )
    for name in ("interactions", "held", "owned", "feedback"):
        stacked = sp.vstack([getattr(p, name) for p in parts]).tocsr()
        assert (stacked != getattr(whole, name)).nnz == 0, name
    for name in ("held_source", "spend", "orders"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(p, name) for p in parts]), getattr(whole, name)
        )
    report = whole.settlement.report
    assert report["returns"] > 0
    for key, value in report.items():
        assert sum(p.settlement.report[key] for p in parts) == pytest.approx(value), key

    # Tiers, signals and triggers: each range's with the population its ranges add up to.
    tiers = percentile_tiers(config)
    lines = [
        CustomerLines.of(events[part == p], data.customer_ids, data.settlement)
        for p, data in enumerate(parts)
    ]
    spend = [
        window_spend(mine, len(data.customer_ids), whole.as_of, tiers.window_days)
        for mine, data in zip(lines, parts, strict=True)
    ]
    slots = [order_slots(mine) for mine in lines]
    population = Population.of(
        tiers,
        np.concatenate(spend),
        np.sum([hours for hours, _ in slots], axis=0),
        np.sum([weekdays for _, weekdays in slots], axis=0),
    )
    crm = build_crm(
        CustomerLines.of(events, whole.customer_ids, whole.settlement),
        len(whole.customer_ids),
        whole.item_ids,
        whole.prices,
        whole.as_of,
        tiers,
    )
    assert population.levels == crm.policy.levels
    assert (population.hour, population.weekday) == (
        crm.policy.population_best_hour,
        crm.policy.population_best_weekday,
    )
    ranges = [
        build_crm(
            mine,
            len(data.customer_ids),
            whole.item_ids,
            whole.prices,
            whole.as_of,
            tiers,
            population,
        )
        for mine, data in zip(lines, parts, strict=True)
    ]
    for name, array in crm.arrays.items():
        if name.startswith("trigger_"):
            continue
        if name.startswith("item_"):
            assert all(np.array_equal(r.arrays[name], array) for r in ranges), name
        else:
            stacked = np.concatenate([r.arrays[name] for r in ranges])
            np.testing.assert_array_equal(stacked, array, err_msg=name)
    offsets = np.cumsum([0, *(len(data.customer_ids) for data in parts)])
    triggers = pd.DataFrame(
        {
            "row": np.concatenate(
                [r.arrays["trigger_rows"] + o for r, o in zip(ranges, offsets, strict=False)]
            ),
            **{
                name: np.concatenate([r.arrays[f"trigger_{name}"] for r in ranges])
                for name in ("kinds", "at", "reasons", "figures")
            },
        }
    ).sort_values(["at", "row", "kinds"], ignore_index=True)
    assert len(triggers) > 100
    for name in ("rows", "kinds", "at", "reasons", "figures"):
        column = "row" if name == "rows" else name
        np.testing.assert_array_equal(
            triggers[column].to_numpy(), crm.arrays[f"trigger_{name}"], err_msg=name
        )
    assert crm.policy.customers_per_tier == {
        level.name: sum(r.policy.customers_per_tier[level.name] for r in ranges)
        for level in population.levels
    }

    # Best sellers per country and tier: each range's sales by its customers' tiers.
    names = [level.name for level in population.levels]
    segments = segment_arrays(
        sales_of(events, whole.item_ids, whole.customer_ids, whole.as_of, 30.0),
        len(whole.item_ids),
        tier_indices(population.levels, crm.arrays["window_spend"]),
        names,
    )
    combined = SegmentSales.combined(
        [
            SegmentSales.of(
                sales_of(events[part == p], whole.item_ids, data.customer_ids, whole.as_of, 30.0),
                len(whole.item_ids),
                tier_indices(population.levels, spend[p]),
                names,
            )
            for p, data in enumerate(parts)
        ]
    ).arrays()
    assert len(segments["segment_names"]) >= len(names)
    assert_segments_alike(combined, segments)


def assert_segments_alike(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """The same segments, items and scores; sums in another order may swap two items of
    (nearly) one score."""
    for name in ("segment_names", "segment_indptr"):
        np.testing.assert_array_equal(found[name], expected[name], err_msg=name)
    for start, end in itertools.pairwise(expected["segment_indptr"].tolist()):
        listed = expected["segment_items"][start:end].tolist()
        score_of = dict(zip(listed, expected["segment_scores"][start:end], strict=True))
        items = found["segment_items"][start:end].tolist()
        assert set(items) == set(score_of)
        np.testing.assert_allclose(
            [score_of[item] for item in items], found["segment_scores"][start:end], rtol=1e-6
        )


def test_executors_rank_customers_as_the_single_host(
    synthetic: TrainConfig, spark_engine: EngineConfig, tmp_path: Path
) -> None:
    assert_executors_rank_as_the_single_host(synthetic, spark_engine, tmp_path)


def assert_executors_rank_as_the_single_host(
    synthetic: TrainConfig, engine: EngineConfig, tmp_path: Path
) -> None:
    merged = merged_with(synthetic, DUCKDB)
    params = synthetic.model
    history = History.build(merged.events, params, merged.item_groups, synthetic.tiers)
    data, crm = history.data, history.crm
    assert crm is not None
    customers, items = data.feedback.shape
    rng = np.random.default_rng(3)
    user = rng.normal(size=(customers, params.factors)).astype(np.float32)
    user[::7] = 0  # customers ALS learned nothing for: absent from Spark's factor rows
    item = rng.normal(size=(items, params.factors)).astype(np.float32)
    neighbours = fit_neighbours(data.feedback, params)
    key = synthetic.identity.key
    aliases = merged.aliases
    expected = served_arrays(data, Factors(user, item), neighbours, params, aliases, crm, key)
    assert expected.candidate_items.shape == (customers, min(params.candidates, items))
    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    fitted = np.flatnonzero(user.any(axis=1))
    rows = pa.table(
        {
            "id": pa.array(fitted.astype(np.int32)),
            "features": pa.array(list(user[fitted]), pa.list_(pa.float32())),
        }
    )
    factors = SparkFactors(session.createDataFrame(rows), item, customers)
    batch = "spark.sql.execution.arrow.maxRecordsPerBatch"
    session.conf.set(batch, "16")  # several part files per task, joined in order
    side_parts = tmp_path / "customer-side"
    side_parts.mkdir()
    side = single_host_customer_side(data, crm.arrays)
    for first in range(0, side.num_rows, 40):  # parts of 40 customers, as ranges write them
        pq.write_table(side.slice(first, 40), side_parts / f"{first:012d}.parquet")
    try:
        digests = alias_digests(aliases, data.customer_ids, key)
        found = spark_served_arrays(
            data, factors, neighbours, params, digests, crm, side_parts, engine
        )
    finally:
        session.conf.unset(batch)
    for name in CUSTOMER_PARTS:
        assert isinstance(getattr(found, name), np.memmap), name
    np.testing.assert_array_equal(found.user_factors, expected.user_factors)
    np.testing.assert_array_equal(found.candidate_items, expected.candidate_items)
    np.testing.assert_array_equal(found.candidate_reasons, expected.candidate_reasons)
    # A matrix product's last bit depends on how many rows BLAS multiplies at once.
    np.testing.assert_allclose(found.candidate_scores, expected.candidate_scores, atol=1e-5)


def test_both_engines_train_bundles_with_the_same_accounting_and_owned_items(
    synthetic: TrainConfig, spark_engine: EngineConfig, tmp_path: Path
) -> None:
    assert_bundles_alike(synthetic, spark_engine, tmp_path)


def assert_bundles_alike(synthetic: TrainConfig, engine: EngineConfig, tmp_path: Path) -> None:
    """A bundle trained with ``engine`` and one with DuckDB and implicit: the same accounting,
    customers, items and owned items (the fits differ, so the lists do)."""
    # A short fit: what is compared does not depend on it.
    short = dataclasses.replace(
        synthetic, model=msgspec.structs.replace(synthetic.model, iterations=3)
    )
    configs = {"duckdb": short, "spark": dataclasses.replace(short, engine=engine)}
    bundles = {
        name: load_bundle(train(config, tmp_path / name, allow_quarantine=True).path)
        for name, config in configs.items()
    }
    duck, on_spark = bundles["duckdb"], bundles["spark"]
    for section in ("accounting", "sources", "returns", "tiers", "interactions"):
        assert getattr(on_spark.manifest, section) == getattr(duck.manifest, section), section
    # Everything but the fits is built from the same rows: the same arrays (sums of decayed
    # weights up to their order).
    exact = ("customer_ids", "item_ids", *OWNED, *CATALOG, "trigger_rows", *TRIGGER_ARRAYS)
    exact += ("customer_spend", "customer_orders", "window_spend", "first_purchase")
    exact += ("last_purchase", "median_interval_days", "best_hour", "best_weekday")
    exact += ("price_low", "price_high", "alias_rows", "segment_names", "segment_indptr")
    for name in exact:
        np.testing.assert_array_equal(
            getattr(on_spark.arrays, name), getattr(duck.arrays, name), err_msg=name
        )
    for name in ("item_prior", "popular_scores", "segment_scores"):
        np.testing.assert_allclose(
            getattr(on_spark.arrays, name), getattr(duck.arrays, name), rtol=1e-5, err_msg=name
        )
    assert_neighbours_alike(*(bundle_neighbours(bundle) for bundle in (on_spark, duck)))
    candidates = on_spark.arrays.candidate_items
    assert candidates.shape == duck.arrays.candidate_items.shape
    assert (candidates[:, 0] >= 0).all()  # every customer has a list (the catalog is larger)
    assert on_spark.arrays.user_factors.any(axis=1).mean() > 0.9


def test_spark_without_pyspark_says_how_to_install_it() -> None:
    code = without(("pyspark",)) + textwrap.dedent(
        """
        from training.config import EngineConfig
        from training.engine import engine
        from training.errors import TrainingError

        try:
            with engine(EngineConfig(kind="spark")):
                raise SystemExit("no error")
        except TrainingError as error:
            print(error)
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "pip install 'recsvc[spark]'" in result.stdout


@pytest.fixture(scope="module")
def cluster_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineConfig]:
    """Spark at a standalone master on this host with one worker of one core, started here
    (from the pip package's ``spark-class``) and stopped after: the executors are processes
    of their own, which import the trainer's code as the driver sends it. Their part files
    and ALS's checkpoints go under ``spark.checkpoint.dir``, as on a cluster."""
    directory = tmp_path_factory.mktemp("spark-cluster")
    stop_spark_sessions()  # a JVM holds one Spark context: the local one would answer
    with spark_standalone(directory) as cluster:
        conf = {
            **cluster.conf,
            "spark.sql.shuffle.partitions": "4",  # a cluster's 200 are for big data, not these
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        }
        try:
            yield EngineConfig(kind="spark", master=cluster.master, conf=conf)
        finally:
            stop_spark_sessions()  # before the cluster stops; later tests start their own


def test_a_standalone_cluster_ranks_and_trains_as_the_single_host(
    synthetic: TrainConfig, cluster_engine: EngineConfig, tmp_path: Path
) -> None:
    session = spark_session(cluster_engine.master, tuple(sorted(cluster_engine.conf.items())))
    assert session.sparkContext.master == cluster_engine.master
    assert_executors_rank_as_the_single_host(synthetic, cluster_engine, tmp_path)
    assert_bundles_alike(synthetic, cluster_engine, tmp_path)
    checkpoints = Path(cluster_engine.conf["spark.checkpoint.dir"])
    assert not list(checkpoints.glob("recsvc-parts-*")), "part files left behind"
