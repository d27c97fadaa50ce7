"""The fault scripts, short: Redis killed and restarted, a Redis Cluster master stopped and
started again, a bundle swapped and a corrupt one published, each under locust traffic
against a real gunicorn.

Longer runs: ``python loadtests/faults.py --models-dir models --duration 60``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.faults import SCENARIOS, scenario


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_under_load(name: str, sample_models: Path, tmp_path: Path) -> None:
    fault, restore, judge = SCENARIOS[name]
    result = scenario(
        name,
        sample_models,
        tmp_path,
        duration=9,
        rate=50,
        users=5,
        fault=fault,
        restore=restore,
        judge=judge,
    )
    assert result["passed"], result["problems"]
    assert result["requests"] > 100 and result["probes"] > 50
    acknowledged = {
        kind for kind, counts in result["writes"]["by_kind"].items() if counts["acknowledged"]
    }
    assert {"view", "purchase", "email_open", "cart_add"} <= acknowledged
