"""The recsvc command: train prints the version and accounting; bad input exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.bundle import current_version
from tests.helpers import (
    SHOP_COLUMNS,
    SHOP_HEADER,
    purchase_rows,
    source_toml,
    write_config,
    write_csv,
)
from training.cli import main


def test_train_prints_version_and_accounting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, purchase_rows({"c1": ["A", "B"], "c2": ["B"]}))
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))

    code = main(
        ["train", "--config", str(config), "--models-dir", str(tmp_path / "m"), "--no-progress"]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert current_version(tmp_path / "m") in out
    assert "rows_read" in out and " 3 " in out


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({**SHOP_COLUMNS, "item_id": "Sku"}, "item_id -> 'Sku'"),
        ({**SHOP_COLUMNS, "colour": "Colour"}, "unknown key(s) ['colour']"),
    ],
)
def test_bad_source_config_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], columns: dict[str, str], message: str
) -> None:
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, purchase_rows({"c1": ["A"]}))
    config = write_config(tmp_path, source_toml("shop", "shop.csv", columns))

    code = main(["train", "--config", str(config), "--models-dir", str(tmp_path / "m")])

    assert code == 2
    err = capsys.readouterr().err
    assert "shop" in err and message in err
    assert not (tmp_path / "m").exists()


def test_missing_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source_toml("shop", "exports/*.csv", SHOP_COLUMNS))
    assert main(["train", "--config", str(config)]) == 2
    assert "no file matches 'exports/*.csv'" in capsys.readouterr().err


def test_sources_check_names_source_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = purchase_rows({"c1": ["A", "B"], "c2": ["B"]})
    rows.append([9, "C", "Item C", "x", "2011-01-05 10:00:00", 1.5, "c3", "UK"])
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, rows)
    good = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    assert main(["sources", "check", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok     shop (csv): 4 rows" in out
    assert "warning: source 'shop': column 'Quantity' (quantity): 1 of 4" in out

    wrong_format = write_config(
        tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS, timestamp_format="%d/%m/%Y")
    )
    assert main(["sources", "check", "--config", str(wrong_format)]) == 1
    out = capsys.readouterr().out
    assert "error: source 'shop': column 'InvoiceDate' (timestamp): 4 of 4" in out
    assert "format %d/%m/%Y" in out
