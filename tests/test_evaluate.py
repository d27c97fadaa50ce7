"""Evaluation as served: metrics, the holdout boundary, a known answer, tuning, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import (
    SHOP_COLUMNS,
    SHOP_HEADER,
    purchase_rows,
    source_toml,
    write_config,
    write_csv,
)
from training.cli import main
from training.config import load_config, tuned_path
from training.dataset import build_dataset
from training.evaluate import evaluate, split_at
from training.metrics import metrics_at_k
from training.pipeline import merged_history
from training.report import render_html
from training.tune import tune

CUTOFF = pd.Timestamp("2011-06-01")
WINDOW_END = pd.Timestamp("2011-07-01")


def test_metrics_match_hand_computation() -> None:
    metrics = metrics_at_k(["a", "b", "c", "d"], {"b", "d", "x"}, k=4)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics == pytest.approx(
        {
            "precision@4": 0.5,
            "recall@4": 2 / 3,
            "ndcg@4": dcg / ideal,
            "map@4": (1 / 2 + 2 / 4) / 3,
            "hit_rate@4": 1.0,
        }
    )


def test_metrics_with_short_lists_and_misses() -> None:
    assert metrics_at_k(["a"], {"a"}, k=10) == pytest.approx(
        {
            "precision@10": 0.1,
            "recall@10": 1.0,
            "ndcg@10": 1.0,
            "map@10": 1.0,
            "hit_rate@10": 1.0,
        }
    )
    assert set(metrics_at_k(["a", "b"], {"z"}, k=2).values()) == {0.0}


def holdout_shop(directory: Path) -> Path:
    """Before the cutoff, customer i of each block buys every item of the block but one; after
    the cutoff they buy exactly that one. The right recommendation is known for everyone."""
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    for block in "AB":
        items = [f"{block}{i}" for i in range(10)]
        for number in range(20):
            customer = f"{block.lower()}{number:02d}"
            withheld = items[number % 10]
            before[customer] = [item for item in items if item != withheld]
            after[customer] = [withheld]
    later = {customer: [f"C{number % 5}"] for number, customer in enumerate(sorted(before))}
    rows = purchase_rows(before, 1000, "2011-03-01 10:00:00")
    rows += purchase_rows(after, 5000, "2011-06-15 10:00:00")
    rows += purchase_rows(later, 9000, "2011-08-01 10:00:00")
    write_csv(directory / "shop.csv", SHOP_HEADER, rows)
    return write_config(directory, source_toml("shop", "shop.csv", SHOP_COLUMNS))


def test_known_answer_holdout(tmp_path: Path) -> None:
    report = evaluate(load_config(holdout_shop(tmp_path)), CUTOFF, k=10, end=WINDOW_END)

    assert report["protocol"]["test_customers"] == 40
    assert report["recsvc"]["ndcg@10"] == pytest.approx(1.0)
    assert report["recsvc"]["hit_rate@10"] == pytest.approx(1.0)
    assert report["als"]["ndcg@10"] == pytest.approx(1.0)
    # Every item sold 18 times, so best-sellers list A0..A9 first: right for block A only.
    assert report["popular"]["ndcg@10"] == pytest.approx(0.5)
    for name in ("recsvc", "popular", "itemknn", "als", "bpr"):
        assert report[name]["owned_violations"] == 0
        assert report[name]["test_customers"] == 40


def test_no_test_window_event_reaches_training_or_tuning(tmp_path: Path) -> None:
    config = load_config(holdout_shop(tmp_path))
    merged = merged_history(config)
    before_only = type(merged)(
        events=merged.events[merged.events["timestamp"] < CUTOFF].reset_index(drop=True),
        quarantine=merged.quarantine,
        accounting=merged.accounting,
    )
    holdout = split_at(merged.events, CUTOFF, None)
    assert holdout.train["timestamp"].max() < CUTOFF
    assert len(holdout.test) == 80 and holdout.test["timestamp"].min() >= CUTOFF
    full = build_dataset(holdout.train, 30.0, 14.0)
    clean = build_dataset(before_only.events, 30.0, 14.0)
    assert (full.interactions != clean.interactions).nnz == 0
    assert list(full.item_ids) == list(clean.item_ids)

    # Tuning at a later cutoff validates on the June purchases and must ignore August's.
    tune_cutoff = pd.Timestamp("2011-07-01")
    before_tune_cutoff = type(merged)(
        events=merged.events[merged.events["timestamp"] < tune_cutoff].reset_index(drop=True),
        quarantine=merged.quarantine,
        accounting=merged.accounting,
    )
    with_future = tune(merged, config.model, tune_cutoff, trials=3, validation_days=60)
    without = tune(before_tune_cutoff, config.model, tune_cutoff, trials=3, validation_days=60)
    assert [t.score for t in with_future.trials] == [t.score for t in without.trials]
    assert with_future.trials[0].score > 0


def test_tuned_parameters_reach_train_and_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = holdout_shop(tmp_path)
    assert (
        main(
            [
                "tune",
                "--config",
                str(config_path),
                "--cutoff",
                "2011-07-01",
                "--trials",
                "3",
                "--validation-days",
                "60",
            ]
        )
        == 0
    )
    tuned = tuned_path(config_path)
    assert tuned.is_file() and "written to" in capsys.readouterr().out

    config = load_config(config_path)
    assert config.tuned_from == tuned
    assert (
        main(
            [
                "train",
                "--config",
                str(config_path),
                "--models-dir",
                str(tmp_path / "m"),
                "--no-progress",
            ]
        )
        == 0
    )
    bundle = next(p for p in (tmp_path / "m").iterdir() if p.is_dir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parameters"]["tuned_from"] == str(tuned)
    assert manifest["parameters"]["model"]["factors"] == config.model.factors


def test_evaluate_command_writes_json_and_self_contained_html(tmp_path: Path) -> None:
    config_path = holdout_shop(tmp_path)
    out = tmp_path / "report"
    assert (
        main(
            ["evaluate", "--config", str(config_path), "--cutoff", "2011-06-01", "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["recsvc"]["owned_violations"] == 0
    assert 0.0 <= report["recsvc"]["reasons_coverage"] <= 1.0
    # Every test-window order here is of one item: no basket to ask about.
    assert report["baskets"]["test_baskets"] == 0
    assert report["baskets"]["cart"]["cooccurrence"]["queries"] == 0
    page = (out / "report.html").read_text()
    assert page == render_html(report)
    assert page.count("src='data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page
    protocol = page[page.index("<h2>Protocol</h2>") :]
    assert "{" not in protocol and "'" not in protocol  # no Python dict or list reprs
    assert "<th>factors</th><td>" in protocol and "<th>min_spend</th><td>0" in protocol


def test_bad_cutoff_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", "x.toml", "--cutoff", "soon", "--out", str(tmp_path)])
    assert "not a date" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cutoff", "message"),
    [
        ("2010-01-01", "no purchases before 2010-01-01"),
        ("2012-01-01", "no purchases in the test window"),
    ],
)
def test_empty_sides_of_the_cutoff_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cutoff: str, message: str
) -> None:
    config_path = holdout_shop(tmp_path)
    code = main(
        ["evaluate", "--config", str(config_path), "--cutoff", cutoff, "--out", str(tmp_path / "r")]
    )
    assert code == 2 and message in capsys.readouterr().err
