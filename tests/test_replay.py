"""The synthetic week replayed through gunicorn and Redis (``loadtests/replay.py``), short:
every check the script makes must pass on the sample bundle."""

from __future__ import annotations

from pathlib import Path

from loadtests.replay import replay


def test_a_synthetic_week_through_gunicorn_and_redis_matches_its_truth(
    sample_models: Path,
) -> None:
    result = replay(sample_models, days=7, seed=7, sessions=30, impressions=600)
    failed = {name: check for name, check in result["checks"].items() if not check["passed"]}
    assert not failed
    assert result["events_by_kind"].keys() >= {
        "view",
        "cart_add",
        "purchase",
        "login",
        "email_open",
        "email_click",
        "rec_click",
        "unsubscribe",
    }
