"""Reading a PostgreSQL table source on one host: whole against in slices.

    python benchmarks/database_read.py [--rows 2000000] [--rounds 2] [--out <json>]

Creates a table of ``--rows`` orders in a schema of its own (dropped afterwards) at
RECSVC_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/test), then reads it
as ``recsvc train`` does (``training.sources.read_source``) with slices so large that the
table is one, with the default SLICE_BLOCKS, and with slices an eighth of that, interleaved,
``--rounds`` times. Prints and writes each read's time, slice count, rows and the content the
data fingerprint takes, which must be the same for all of them. With Spark, each slice is an
executor task: ``benchmarks/merge.py --engine spark`` on a config naming the table measures
that side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from training import sources  # noqa: E402
from training.config import SourceConfig  # noqa: E402
from training.pipeline import source_contents  # noqa: E402

DSN = os.environ.get("RECSVC_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
COLUMNS = {
    "order_id": "order_no",
    "customer_id": "customer",
    "item_id": "sku",
    "quantity": "qty",
    "unit_price": "price",
    "timestamp": "sold_at",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/database-read.json"))
    args = parser.parse_args()
    schema = f"recsvc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
        try:
            connection.execute(
                f"CREATE TABLE {schema}.orders (order_no text, customer integer, sku text, "
                "qty text, price numeric(10, 2), sold_at timestamptz)"
            )
            connection.execute(
                f"INSERT INTO {schema}.orders SELECT 'O' || (i / 3), (i::bigint * 7919) %% 100000, "
                "'P' || (i %% 10000), '1', round((i %% 97) / 10.0 + 0.1, 2), "
                "timestamptz '2024-01-01 00:00+00' + (i || ' seconds')::interval "
                "FROM generate_series(1, %s) AS i",
                (args.rows,),
            )
            connection.execute(f"VACUUM ANALYZE {schema}.orders")
            source = SourceConfig(
                name="orders", kind="postgresql", dsn=DSN, table=f"{schema}.orders", columns=COLUMNS
            )
            reads = []
            for _ in range(args.rounds):
                for blocks in (1 << 40, sources.SLICE_BLOCKS, sources.SLICE_BLOCKS // 8):
                    reads.append(_read(source, blocks))
                    print(json.dumps(reads[-1]), flush=True)
        finally:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
    result = {"rows": args.rows, "default_slice_blocks": sources.SLICE_BLOCKS, "reads": reads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def _read(source: SourceConfig, blocks: int) -> dict[str, object]:
    default, sources.SLICE_BLOCKS = sources.SLICE_BLOCKS, blocks
    try:
        started = time.perf_counter()
        rows = sources.read_source(source)
        seconds = time.perf_counter() - started
    finally:
        sources.SLICE_BLOCKS = default
    return {
        "slice_blocks": blocks,
        "slices": len(rows.files),
        "rows": len(rows.frame),
        "read_s": round(seconds, 2),
        "content": source_contents([rows])["orders"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
