"""A run that would publish a model of what is left after most rows were quarantined stops,
with one message naming the source, the reason and the first bad value; and the bundle's
fingerprint changes with anything that changes how the data is read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsvc.bundle import load_bundle
from tests.helpers import (
    SHOP_COLUMNS,
    SHOP_HEADER,
    purchase_rows,
    source_toml,
    write_config,
    write_csv,
)
from training.config import load_config
from training.errors import QuarantineError
from training.pipeline import data_fingerprint, source_contents, train
from training.sources import read_source


def shop_files(tmp_path: Path) -> None:
    baskets = {f"c{n}": ["A", "B", "C"][: 1 + n % 3] for n in range(20)}
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, purchase_rows(baskets))
    write_csv(tmp_path / "other.csv", SHOP_HEADER, purchase_rows(baskets, start_order=5000))


def run_cli(config: Path, models: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.cli", "train", "--config", str(config)]
        + ["--models-dir", str(models), "--no-progress", *extra],
        capture_output=True,
        text=True,
    )


def test_a_wrong_format_in_one_source_publishes_nothing(tmp_path: Path) -> None:
    shop_files(tmp_path)
    config = write_config(
        tmp_path,
        source_toml("shop", "shop.csv", SHOP_COLUMNS),
        source_toml("other", "other.csv", SHOP_COLUMNS, timestamp_format="%d/%m/%Y"),
    )
    with pytest.raises(QuarantineError) as caught:
        train(load_config(config), tmp_path / "models")
    message = str(caught.value)
    assert "source 'other': 39 of 39 rows (100.0%) quarantined" in message
    assert "InvoiceDate = '2011-01-05 10:00:00' (timestamp_format %d/%m/%Y)" in message
    assert "'shop'" not in message
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())

    run = run_cli(config, tmp_path / "models")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--allow-quarantine" in run.stderr

    allowed = run_cli(config, tmp_path / "models", "--allow-quarantine")
    assert allowed.returncode == 0, allowed.stderr
    (bundle_dir,) = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    manifest = load_bundle(bundle_dir).manifest
    assert manifest.quarantine.over_limit == {"other": 1.0}
    assert manifest.quarantine.allow_quarantine is True


def test_the_limit_is_per_source_and_configurable(tmp_path: Path) -> None:
    shop_files(tmp_path)
    rows = purchase_rows({"c1": ["A"], "c2": ["B"]})
    rows[0][3] = "lots"  # one of two rows: 50 %
    write_csv(tmp_path / "shop.csv", SHOP_HEADER, rows)
    strict = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    with pytest.raises(QuarantineError, match=r"bad_quantity 1; first bad_quantity: .*'lots'"):
        train(load_config(strict), tmp_path / "models")
    lenient = source_toml("shop", "shop.csv", SHOP_COLUMNS).replace(
        "[sources.columns]", "max_quarantine_share = 0.5\n[sources.columns]"
    )
    report = train(load_config(write_config(tmp_path, lenient)), tmp_path / "models")
    assert report.accounting["shop"]["quarantined"] == {"bad_quantity": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (";".join(SHOP_HEADER) + "\n", "nothing to train on"),
        (
            ";".join(SHOP_HEADER) + "\n1;A;Item;1;2011-01-05 10:00:00;2,55;c1;UK\n",
            "bad_price 1; first bad_price: file .*, record 1, UnitPrice = '2,55'",
        ),
    ],
    ids=["header only", "comma decimals"],
)
def test_inputs_that_leave_nothing_are_one_clear_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "shop.csv").write_text(text)
    config = write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS, delimiter=";"))
    run = run_cli(config, tmp_path / "models")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert re.search(expected, run.stderr), run.stderr


def test_the_fingerprint_covers_how_the_data_is_read(tmp_path: Path) -> None:
    shop_files(tmp_path)

    def fingerprint(**options: str) -> str:
        config = load_config(
            write_config(tmp_path, source_toml("shop", "shop.csv", SHOP_COLUMNS, **options))
        )
        return data_fingerprint(config, source_contents([read_source(s) for s in config.sources]))

    base = fingerprint()
    assert fingerprint() == base
    changed = [
        fingerprint(timestamp_format="%Y-%m-%d %H:%M:%S"),
        fingerprint(timezone="Europe/London"),
        fingerprint(cancellation_prefix="C"),
        fingerprint(customer_namespace="partner"),
    ]
    assert len({base, *changed}) == 5
    swapped = {**SHOP_COLUMNS, "description": "Country", "country": "Description"}
    config = load_config(write_config(tmp_path, source_toml("shop", "shop.csv", swapped)))
    assert (
        data_fingerprint(config, source_contents([read_source(s) for s in config.sources])) != base
    )
    erasures = tmp_path / "erasures.jsonl"
    listed = source_toml("shop", "shop.csv", SHOP_COLUMNS)
    config = load_config(
        write_config(tmp_path, listed, items='[identity]\nerasures = "erasures.jsonl"\n')
    )
    before = data_fingerprint(config, source_contents([read_source(s) for s in config.sources]))
    erasures.write_text('{"alias_digests": ["00"]}\n')
    assert (
        data_fingerprint(config, source_contents([read_source(s) for s in config.sources]))
        != before
    )
