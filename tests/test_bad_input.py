"""A corpus of bad source files: each gives a clear error naming the file, or quarantines the
rows with a reason; nothing crashes and nothing is dropped without being counted."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config
from training.config import load_config
from training.dataset import build_dataset
from training.errors import SourceError
from training.merge import MergedHistory, merge_sources
from training.sources import read_source

HEADER = ",".join(SHOP_HEADER)
GOOD = "536365,85123A,HEART HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom"
GOOD_2 = "536366,71053,LANTERN,2,2010-12-01 08:28:00,3.39,17850,United Kingdom"


def merge(tmp_path: Path, text: str | bytes, **options: str) -> MergedHistory:
    path = tmp_path / "shop.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    config = load_config(
        write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS, **options))
    )
    return merge_sources([read_source(source) for source in config.sources], config.items)


def accounted(counts: dict[str, Any]) -> int:
    """Rows given any outcome; equals rows_read when nothing was dropped silently."""
    outcomes = sum(v for k, v in counts.items() if k not in ("rows_read", "quarantined"))
    return int(outcomes + sum(counts["quarantined"].values()))


def lines(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def test_ragged_rows_are_quarantined_with_their_line(tmp_path: Path) -> None:
    merged = merge(
        tmp_path,
        lines(GOOD, GOOD + ",extra field", "536367,22041,FRAME", GOOD_2),
    )
    counts = merged.accounting["shop"]
    assert counts["rows_read"] == 4 and counts["used"] == 2
    assert counts["quarantined"] == {"malformed_row": 2}
    assert accounted(counts) == 4
    details = sorted(merged.quarantine.frame()["detail"])
    assert details == ["line 3: 9 fields, not 8", "line 4: 3 fields, not 8"]
    assert sorted(merged.quarantine.frame()["record"]) == [3, 4]


def test_a_ragged_row_in_one_of_several_files_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "shop-1.csv").write_text(lines(GOOD))
    (tmp_path / "shop-2.csv").write_text(lines(GOOD_2, "536367,22041,FRAME"))
    config = load_config(write_config(tmp_path, source_toml("shop", "shop-*.csv", SHOP_COLUMNS)))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    counts = merged.accounting["shop"]
    assert counts["used"] == 2 and counts["quarantined"] == {"malformed_row": 1}
    assert list(merged.quarantine.frame()["file"]) == [str(tmp_path / "shop-2.csv")]


def test_a_file_with_only_its_header_among_several_is_no_rows(tmp_path: Path) -> None:
    (tmp_path / "shop-1.csv").write_text(lines(GOOD, "536367,22041,FRAME"))
    (tmp_path / "shop-2.csv").write_text(lines())
    (tmp_path / "shop-3.csv").write_text(lines(GOOD_2))
    config = load_config(write_config(tmp_path, source_toml("shop", "shop-*.csv", SHOP_COLUMNS)))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    counts = merged.accounting["shop"]
    assert counts["rows_read"] == 3 and counts["used"] == 2
    assert counts["quarantined"] == {"malformed_row": 1}


def test_ids_padded_with_nul_bytes_are_the_ids_without_them(tmp_path: Path) -> None:
    """Fixed-width exports pad with NULs: "85123A\\0" is item 85123A, and training does
    not fail on the two spellings."""
    padded = GOOD.replace("85123A", "85123A\0\0").replace("17850", "17850\0")
    config_path = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    (tmp_path / "shop.csv").write_text(lines(padded, GOOD, GOOD_2))
    config = load_config(config_path)
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert set(merged.events["item_id"]) == {"85123A", "71053"}
    assert set(merged.events["customer_id"]) == {"17850"}
    data = build_dataset(merged.events, 90.0, 14.0)
    assert list(data.item_ids) == ["71053", "85123A"]


def test_quoted_newlines_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    quoted = '536367,22041,"PHOTO FRAME\nCORNICE",4,2010-12-01 08:34:00,2.1,13047,United Kingdom'
    merged = merge(tmp_path, "\ufeff" + lines(GOOD, quoted, GOOD_2))
    assert merged.accounting["shop"]["used"] == 3 and accounted(merged.accounting["shop"]) == 3
    descriptions = set(merged.events["description"])
    assert "PHOTO FRAME\nCORNICE" in descriptions


def test_the_wrong_encoding_is_a_clear_error(tmp_path: Path) -> None:
    latin1 = lines(GOOD.replace("HEART HOLDER", "CAFÉ SET")).encode("latin-1")
    with pytest.raises(SourceError, match=r"shop\.csv: not valid utf-8"):
        merge(tmp_path, latin1)
    merged = merge(tmp_path, latin1, encoding="latin-1")  # declared: read as such
    assert "CAFÉ SET" in set(merged.events["description"])


def test_gzip_exports_are_read_and_a_truncated_one_is_a_clear_error(tmp_path: Path) -> None:
    rows = [GOOD.replace("536365", str(600000 + n)) for n in range(5000)]
    compressed = gzip.compress(lines(*rows).encode())
    (tmp_path / "shop.csv.gz").write_bytes(compressed)
    config = load_config(write_config(tmp_path, source_toml("shop", "shop.csv.gz", SHOP_COLUMNS)))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["shop"]["used"] == 5000
    # Cut inside the compressed rows: the header still reads, the rest cannot.
    (tmp_path / "shop.csv.gz").write_bytes(compressed[:-20])
    with pytest.raises(SourceError, match=r"shop\.csv\.gz: cannot read \(.*ended before"):
        read_source(config.sources[0])


def test_missing_columns_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    without_price = "\n".join([HEADER.replace(",UnitPrice", ""), GOOD.replace(",2.55", "")])
    with pytest.raises(SourceError, match=r"missing column\(s\) unit_price -> 'UnitPrice'"):
        merge(tmp_path, without_price)
    with pytest.raises(SourceError, match=r"shop\.csv: the file is empty"):
        merge(tmp_path, b"")
    header_only = merge(tmp_path, HEADER + "\n")
    assert header_only.accounting["shop"]["rows_read"] == 0
    misspelt = HEADER.replace("UnitPrice", "Unit_Price")
    with pytest.raises(SourceError, match=r"'UnitPrice' \(is it 'Unit_Price'\?\)"):
        merge(tmp_path, lines().replace(HEADER, misspelt))


def test_a_file_without_its_header_is_an_error_that_quotes_no_row(tmp_path: Path) -> None:
    """Without a header the first row stands in its place: its values (an email, a phone,
    a customer id) are never quoted back."""
    row = "536365,85123A,HEART HOLDER,6,2010-12-01 08:26:00,2.55,17850,ann@example.com"
    with pytest.raises(SourceError) as error:
        merge(tmp_path, row + "\n" + GOOD + "\n")
    message = str(error.value)
    assert "missing column(s)" in message and "the header has 8 column(s)" in message
    assert "ann@example.com" not in message and "17850" not in message


def test_impossible_numbers_and_dates_are_quarantined(tmp_path: Path) -> None:
    def row(quantity: str, price: str, when: str = "2010-12-01 08:26:00") -> str:
        return f"536370,22041,FRAME,{quantity},{when},{price},12583,France"

    merged = merge(
        tmp_path,
        lines(
            row("-3", "2.1"),  # a return: counted as a cancellation
            row("5", "-2.1"),
            row("1e9", "2.1"),
            row("5", "99999999999"),
            row("inf", "2.1"),
            row("5", "nan"),
            row("5", "2.1", "2999-01-01 00:00:00"),
            row("5", "2.1", "2010-13-45 00:00:00"),
            row("4", "2.1"),
        ),
    )
    counts = merged.accounting["shop"]
    assert counts["cancellation"] == 1 and counts["used"] == 1
    assert counts["quarantined"] == {
        "negative_price": 1,
        "quantity_out_of_range": 1,
        "price_out_of_range": 1,
        "bad_quantity": 1,
        "bad_price": 1,
        "future_timestamp": 1,
        "bad_timestamp": 1,
    }
    assert accounted(counts) == counts["rows_read"] == 9


def test_repeated_event_ids_in_the_event_log_are_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "events"
    log.mkdir()
    event = {
        "event_id": "e1",
        "customer": "17850",
        "item_id": "22041",
        "quantity": 1,
        "price": 2.1,
        "timestamp": "2011-01-05T10:00:00Z",
        "received_at": 1.0,
    }
    (log / "events-2011-01-05.jsonl").write_text(
        "\n".join(json.dumps(e) for e in [event, event, {**event, "event_id": "e2"}]) + "\n"
    )
    config_path = write_config(
        tmp_path,
        '[[sources]]\nname = "live"\nkind = "events"\npath = "events/*.jsonl"\n',
    )
    config = load_config(config_path)
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    counts = merged.accounting["live"]
    assert counts["rows_read"] == 3 and counts["duplicate"] == 1 and counts["used"] == 2


def test_train_reports_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "shop.csv").write_bytes(lines(GOOD).encode("utf-16"))
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    run = subprocess.run(
        [sys.executable, "-m", "training.cli", "train", "--config", str(config)]
        + ["--models-dir", str(tmp_path / "models")],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "shop.csv" in run.stderr and "utf-8" in run.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_repeated_header_column_is_an_error_naming_it(tmp_path: Path) -> None:
    header = HEADER + ",Quantity"
    with pytest.raises(SourceError, match=r"column 'Quantity' appears 2 times .*columns 4, 9"):
        merge(tmp_path, "\n".join([header, GOOD + ",7"]) + "\n")


def test_a_decompression_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    # 1 MiB compresses to about a kilobyte: a bomb in miniature, under a small limit.
    (tmp_path / "shop.csv.gz").write_bytes(gzip.compress(lines(GOOD).encode() + b"0" * 2**20))
    source = source_toml("shop", "shop.csv.gz", SHOP_COLUMNS)
    limit = "max_decompressed_bytes = 100000\n[sources.columns]"
    small = source.replace("[sources.columns]", limit)
    config = load_config(write_config(tmp_path, small))
    with pytest.raises(SourceError, match=r"decompresses to more than 100,000 bytes"):
        read_source(config.sources[0])


@pytest.mark.parametrize("name", ["shop.csv", "shop.csv.gz"])
def test_a_line_without_end_is_an_error_not_a_memory_blowup(tmp_path: Path, name: str) -> None:
    endless = b"A" * (3 * 2**20)  # longer than the default 1 MiB per line
    for text in (endless, lines(GOOD).encode() + endless):
        (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
        config = load_config(write_config(tmp_path, source_toml("shop", name, SHOP_COLUMNS)))
        with pytest.raises(SourceError, match=r"longer than 1,048,576 bytes \(max_line_bytes"):
            read_source(config.sources[0])


def test_sources_check_reports_a_bomb_as_an_error(tmp_path: Path) -> None:
    from training.check import check_sources

    (tmp_path / "shop.csv.gz").write_bytes(gzip.compress(b"x" * (3 * 2**20)))
    config = load_config(write_config(tmp_path, source_toml("shop", "shop.csv.gz", SHOP_COLUMNS)))
    (result,) = check_sources(config)
    assert result.errors and "max_line_bytes" in result.errors[0]


JSONL_COLUMNS = {"order_id": "order", "item_id": "sku", "quantity": "qty", "customer_id": "who"}


def jsonl_source(tmp_path: Path, records: list[Any]) -> MergedHistory:
    text = "\n".join(json.dumps(record) for record in records) + "\n"
    (tmp_path / "orders.jsonl").write_text(text)
    source = source_toml("orders", "orders.jsonl", JSONL_COLUMNS).replace('"csv"', '"jsonl"')
    config = load_config(write_config(tmp_path, source))
    return merge_sources([read_source(s) for s in config.sources], config.items)


def test_jsonl_values_of_the_wrong_type_quarantine_their_row(tmp_path: Path) -> None:
    merged = jsonl_source(
        tmp_path,
        [
            {"order": 1, "sku": "A", "qty": 10, "who": "c1"},
            {"order": 2, "sku": "B", "qty": "abc", "who": "c1"},
            {"order": "3", "sku": 7, "qty": "2", "who": 12},
            {"order": 4, "sku": "C", "qty": [1], "who": "c2"},
            {"order": 5, "sku": "D", "qty": True, "who": "c2"},
        ],
    )
    counts = merged.accounting["orders"]
    assert counts["used"] == 2
    assert counts["quarantined"] == {"malformed_row": 1, "bad_quantity": 2}
    assert accounted(counts) == 5
    quarantine = merged.quarantine.frame()
    detail = quarantine.loc[quarantine["reason"] == "malformed_row", "detail"]
    assert list(detail) == ["line 4: 'qty' is a list, not a value"]
    assert set(merged.events["item_id"]) == {"A", "7"}


def test_an_event_log_with_no_file_yet_is_no_rows(tmp_path: Path) -> None:
    write_csv_rows = lines(GOOD, GOOD_2)
    (tmp_path / "shop.csv").write_text(write_csv_rows)
    events = '[[sources]]\nname = "live"\nkind = "events"\npath = "events/*.jsonl"\n'
    config = load_config(
        write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS), events)
    )
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["live"]["rows_read"] == 0
    assert merged.accounting["shop"]["used"] == 2


def test_an_event_log_emptied_by_an_erasure_is_no_rows(tmp_path: Path) -> None:
    (tmp_path / "shop.csv").write_text(lines(GOOD, GOOD_2))
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events-host-1.jsonl").write_text("")  # every line erased
    events = '[[sources]]\nname = "live"\nkind = "events"\npath = "events/*.jsonl"\n'
    config = load_config(
        write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS), events)
    )
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["live"]["rows_read"] == 0
    assert merged.accounting["shop"]["used"] == 2
