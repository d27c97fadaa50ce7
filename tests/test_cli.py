"""The recsvc command: train prints the version and accounting; bad input exits non-zero."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from training.cli import _parser, main


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


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subcommands(sub, f"{prefix}{name} ")


def test_every_option_has_help_and_shows_its_default() -> None:
    commands = dict(_subcommands(_parser()))
    assert {"train", "serve", "evaluate", "tune", "export-picks", "keys mint"} <= set(commands)
    for name, parser in commands.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
                continue
            assert action.help, f"recsvc {name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, argparse.SUPPRESS) and not action.required:
                assert f"(default: {action.default})" in text, (name, action.option_strings)
    serve = " ".join(commands["serve"].format_help().split())
    assert "port to listen on (default: 8000)" in serve and "(default: models)" in serve


def test_keys_mint_names_only_the_wrong_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "mint", "--name", "web", "--scopes", "recs:reed"]) == 2
    err = capsys.readouterr().err
    assert "--scopes" in err and "'recs:reed'" in err and "--name" not in err
    assert main(["keys", "mint", "--name", "a b", "--scopes", "recs:read"]) == 2
    err = capsys.readouterr().err
    assert "--name" in err and "--scopes" not in err


def test_sources_check_names_the_source_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "shop.csv", SHOP_HEADER[:-2], [])
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    assert main(["sources", "check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "error: source 'shop', file " in out and "missing column" in out
    assert out.count("source 'shop'") == 1


def test_tier_counts_script_prints_the_manifests_figures(
    sample_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's tier counts are this script's output on the reference bundle."""
    from benchmarks.tier_counts import main as tier_counts
    from recsvc.bundle import load_current

    tier_counts(["--models-dir", str(sample_models)])
    out = capsys.readouterr().out
    counts = load_current(sample_models).manifest.tiers.customers_per_tier
    assert sum(counts.values()) == len(load_current(sample_models).arrays.customer_ids)
    expected = ", ".join(f"{count:,} in {name}" for name, count in list(counts.items())[:-1])
    assert f"That puts {expected} and " in out


def test_train_reports_each_step_once_with_its_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a terminal: no bars, one log line per step (reading with rows/s, merging,
    fitting, candidate lists, publishing)."""
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, purchase_rows({"c1": ["A", "B"], "c2": ["B"]}))
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    caplog.set_level("INFO", logger="recsvc.progress")
    assert main(["train", "--config", str(config), "--models-dir", str(tmp_path / "m")]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "recsvc.progress"]
    starts = ["reading source 'shop': 3 rows (", "merging sources", "fitting ALS"]
    starts += ["candidate lists: 2 customers", "publishing the bundle"]
    for start in starts:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    assert all(re.search(r" in \d+\.\d s$", line) for line in lines)
    assert "it/s" not in capsys.readouterr().err  # no bar
