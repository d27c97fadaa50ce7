"""Schemathesis against a real gunicorn: at least 2,000 generated cases, none failing.

Longer runs: ``python loadtests/fuzz.py --models-dir models --max-examples 1000``.
"""

from __future__ import annotations

from pathlib import Path

from loadtests.fuzz import fuzz

MIN_CASES = 2000


def test_fuzzing_finds_no_server_errors_or_schema_violations(
    sample_models: Path, tmp_path: Path
) -> None:
    summary = fuzz(sample_models, tmp_path / "fuzz", max_examples=120, seed=20261122)
    output = Path(summary["output"]).read_text()
    assert summary["exit_code"] == 0, output[-5000:]
    assert summary["failures"] == [] and summary["errors"] == []
    assert summary["cases"] >= MIN_CASES, output[-2000:]
