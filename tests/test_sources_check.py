"""``recsvc sources check`` and cancellation prefixes: a prefix is declared, never assumed;
the check warns when one looks like part of ordinary order ids, and never prints a personal
value in clear."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.check import check_sources, mask
from training.config import load_config
from training.merge import merge_sources
from training.sources import read_source


def orders(tmp_path: Path, ids: list[str], **options: str) -> Path:
    rows = [
        [order, "22041", "FRAME", 1, "2011-01-05 10:00:00", 2.1, f"c{n % 5}", "UK"]
        for n, order in enumerate(ids)
    ]
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, rows)
    return write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS, **options))


def test_order_ids_are_not_cancellations_unless_a_prefix_is_declared(tmp_path: Path) -> None:
    ids = ["CART-1", "CRM-1", "C100", "100"]
    config = load_config(orders(tmp_path, ids))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["shop"]["used"] == 4
    assert merged.accounting["shop"]["cancellation"] == 0
    config = load_config(orders(tmp_path, ids, cancellation_prefix="C"))
    merged = merge_sources([read_source(s) for s in config.sources], config.items)
    assert merged.accounting["shop"]["cancellation"] == 3


def test_a_prefix_matching_many_order_ids_is_a_warning(tmp_path: Path) -> None:
    carts = [f"CART-{n}" for n in range(40)] + [str(n) for n in range(60)]
    (result,) = check_sources(load_config(orders(tmp_path, carts, cancellation_prefix="C")))
    assert not result.errors
    assert result.warnings == [
        "cancellation_prefix 'C' matches 40.0% of the rows' order ids (column 'InvoiceNo'); "
        "cancellations are usually a few per cent: is the prefix part of ordinary order ids?"
    ]
    usual = [f"C{n}" for n in range(2)] + [str(n) for n in range(98)]
    (result,) = check_sources(load_config(orders(tmp_path, usual, cancellation_prefix="C")))
    assert result.warnings == []


def test_personal_values_are_masked_in_check_messages(tmp_path: Path) -> None:
    rows = [
        ["1", "22041", "FRAME", 1, "2011-01-05 10:00:00", 2.1, "12583", "ann.smith@example.com"],
        ["2", "22041", "FRAME", 1, "2011-01-05 10:00:00", 2.1, "12584", "not-an-address@"],
    ]
    write_csv(tmp_path / "shop.csv", SHOP_HEADER[:-1] + ["Email"], rows)
    columns = {**{k: v for k, v in SHOP_COLUMNS.items() if k != "country"}, "email": "Email"}
    (result,) = check_sources(
        load_config(write_config(tmp_path, source_toml("shop", "shop.csv", columns)))
    )
    text = " ".join(result.errors + result.warnings)
    assert "(email): 1 of 2 sampled values do not parse, e.g. 'n***@***'" in text
    assert "not-an-address" not in text
    assert mask("email", "ann.smith@example.com") == "a***@e***.com"
    assert mask("phone", "+447700900058") == "+44********58"
    assert mask("customer_id", "12583") == "12***"
