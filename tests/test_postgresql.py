"""A PostgreSQL orders table as a source, against a real server.

The server is expected at RECSVC_TEST_POSTGRES_DSN (default: postgres@127.0.0.1:5432/test).
Each test module works in a schema of its own, created and dropped here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from recsvc.bundle import load_current
from recsvc.ranker import Ranker
from training import sources
from training.cli import main
from training.config import load_config
from training.pipeline import train

DSN = os.environ.get("RECSVC_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
COLUMNS = """
[sources.columns]
order_id = "order_no"
customer_id = "customer"
email = "email"
item_id = "sku"
quantity = "qty"
unit_price = "price"
timestamp = "sold_at"
"""


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    try:
        connection = psycopg.connect(DSN, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is needed at {DSN} (set RECSVC_TEST_POSTGRES_DSN): {error}")
    name = f"recsvc_test_{uuid.uuid4().hex[:8]}"
    with connection:
        connection.execute(f"CREATE SCHEMA {name}")
        connection.execute(f"""
            CREATE TABLE {name}.orders (
                order_no text, customer integer, email text, sku text, qty integer,
                price numeric(10, 2), sold_at timestamptz)""")
        rows = [
            ("A1", 1, "ann@example.com", "P1", 2, 1.50, "2011-01-01 10:00+00"),
            ("A1", 1, "ann@example.com", "P2", 1, 3.00, "2011-01-01 10:00+00"),
            ("CA1", 1, "ann@example.com", "P2", -1, 3.00, "2011-01-02 10:00+00"),
            ("B1", 2, None, "P2", 1, 3.00, "2011-01-03 10:00+00"),
            ("B1", 2, None, "P3", 1, 4.00, "2011-01-03 10:00+00"),
            ("N1", None, None, "P3", 5, 4.00, "2011-01-04 10:00+00"),
            ("X1", 2, None, "P4", 0, 4.00, "2011-01-05 10:00+00"),
        ]
        rows += [
            (f"F{i}", 100 + i, None, f"P{1 + i % 4}", 1, 1.0, "2011-01-06 10:00+00")
            for i in range(12)
        ]
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {name}.orders VALUES (%s, %s, %s, %s, %s, %s, %s)", rows
            )
        yield name
        connection.execute(f"DROP SCHEMA {name} CASCADE")


def write_config(directory: Path, source: str) -> Path:
    path = directory / "db.toml"
    # One zero-quantity row of a few is meant: a share a real source would be refused for.
    source += "\nmax_quarantine_share = 0.2"
    path.write_text(f"[model]\nfactors = 4\niterations = 5\n\n[[sources]]\n{source}\n{COLUMNS}")
    return path


def test_table_source_trains(tmp_path: Path, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_DSN", DSN)
    config = write_config(
        tmp_path,
        f'name = "orders"\nkind = "postgresql"\n'
        f'dsn_env = "ORDERS_DSN"\ntable = "{schema}.orders"\n'
        "chunk_rows = 5",
    )
    report = train(load_config(config), tmp_path / "models")
    assert report.accounting["orders"] == {
        "rows_read": 19,
        "used": 16,
        "duplicate": 0,
        "cancellation": 1,
        "anonymous": 1,
        "adjustment": 0,
        "erased": 0,
        "quarantined": {"zero_quantity": 1},
    }
    ranker = Ranker(load_current(tmp_path / "models").arrays)
    ann = ranker.customer_row("1")
    assert ann is not None
    owned = {str(ranker.arrays.item_ids[i]) for i in ranker.owned(ann)}
    assert owned == {"P1"}  # P2 was cancelled


def test_query_source_reads_only_what_it_selects(tmp_path: Path, schema: str) -> None:
    config = write_config(
        tmp_path,
        f'name = "orders"\nkind = "postgresql"\ndsn = "{DSN}"\n'
        f'query = "SELECT * FROM {schema}.orders '
        'WHERE customer IS NOT NULL"',
    )
    report = train(load_config(config), tmp_path / "models")
    assert report.accounting["orders"]["rows_read"] == 18
    assert report.accounting["orders"]["anonymous"] == 0


def test_sources_check(tmp_path: Path, schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(
        tmp_path, f'name = "orders"\nkind = "postgresql"\ndsn = "{DSN}"\ntable = "{schema}.orders"'
    )
    assert main(["sources", "check", "--config", str(good)]) == 0
    assert "ok     orders (postgresql): 19 rows" in capsys.readouterr().out

    missing = write_config(
        tmp_path, f'name = "orders"\nkind = "postgresql"\ndsn = "{DSN}"\ntable = "{schema}.orders"'
    )
    missing.write_text(missing.read_text().replace('"sold_at"', '"sold_on"'))
    assert main(["sources", "check", "--config", str(missing)]) == 1
    assert "timestamp -> 'sold_on'" in capsys.readouterr().out

    down = write_config(
        tmp_path,
        'name = "orders"\nkind = "postgresql"\n'
        'dsn = "postgresql://postgres@127.0.0.1:1/test"\n'
        'table = "orders"',
    )
    assert main(["sources", "check", "--config", str(down)]) == 1
    out = capsys.readouterr().out
    assert "error: source 'orders'" in out and "127.0.0.1" in out


def test_a_table_read_in_slices_is_read_in_one_snapshot(
    tmp_path: Path, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices read apart (Spark's tasks) read the snapshot the trainer exported: a row that
    an update moves into a slice not read yet is not read twice, and one moved into a slice
    read already is not lost; the table is not rewritten meanwhile. A quoted table name is
    sized as it is read."""
    table = f'{schema}."Order Lines"'
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(
            f"CREATE TABLE {table} (order_no text, customer integer, email text, sku text, "
            "qty integer, price numeric(10, 2), sold_at timestamptz) WITH (fillfactor = 100)"
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, NULL, %s, 1, 2.5, '2011-01-01 10:00+00')",
                [(f"O{i}", i, f"P{i % 7}") for i in range(600)],
            )
        monkeypatch.setattr(sources, "SLICE_BLOCKS", 1)
        config = write_config(
            tmp_path,
            f'name = "orders"\nkind = "postgresql"\ndsn = "{DSN}"\n'
            f'table = "{schema}.Order Lines"',  # as is, each part quoted when read
        )
        (source,) = load_config(config).sources
        slices = sources.DatabaseSlices.of(source)
        assert len(slices.clauses) > 3  # sized: the quoted name found
        holder, snapshot = sources.export_snapshot(source, DSN)
        try:
            frames = []
            for index, clause in enumerate(slices.clauses):
                frames.append(sources.read_slice(source, DSN, clause, index, snapshot))
                if index == 0:  # too long for the first block: the new version goes to the end
                    connection.execute(
                        f"UPDATE {table} SET qty = 2, email = repeat('x', 4000) "
                        "WHERE order_no = 'O0'"
                    )
            # No rewrite moves the rows between slices while they are read.
            connection.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                connection.execute(f"VACUUM FULL {table}")
            connection.execute("RESET lock_timeout")
        finally:
            holder.close()
        read = pd.concat(frames)
        assert len(read) == 600 and list(read["order_id"]).count("O0") == 1
        whole = slices.read().frame  # one host: every slice in one transaction
        assert len(whole) == 600 and set(whole["quantity"]) == {"1", "2"}


def test_a_connection_string_libpq_cannot_parse_is_not_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for dsn in ("host=127.0.0.1 password=s3 cret", "postgresql://u:s3cret w0rd@127.0.0.1/test"):
        config = write_config(
            tmp_path, f'name = "orders"\nkind = "postgresql"\ndsn = "{dsn}"\ntable = "orders"'
        )
        assert main(["sources", "check", "--config", str(config)]) == 1
        out = capsys.readouterr().out
        assert "dsn is not a libpq connection string" in out
        assert "cret" not in out and "w0rd" not in out
