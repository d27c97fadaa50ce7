"""Tiers, signals and triggers with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from recsvc.app import create_app
from recsvc.config import ServiceConfig
from recsvc.policy import tier_indices
from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.config import load_config
from training.pipeline import train
from training.tiers import TierConfig, TierLevel, resolve_levels

TIERS = """
[tiers]
window_days = 365
lapsing_factor = 2.0
spend_thresholds = [100]
thank_you_orders = 4
exclusive_items = "exclusive.csv"

[[tiers.levels]]
name = "bronze"
min_spend = 0

[[tiers.levels]]
name = "silver"
min_spend = 100
perks = ["free shipping"]

[[tiers.levels]]
name = "gold"
min_spend = 1000
perks = ["free shipping", "early access"]
premium_boost = 0.2
"""


def line(order: str, item: str, when: str, customer: str, price: float = 10.0) -> list[object]:
    return [order, item, f"Item {item}", 1, when, price, customer, "UK"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiers")
    rows = []
    # "lapser": an order every 30 days, the last one 90 days before the data ends.
    for number, day in enumerate(["2011-01-01", "2011-01-31", "2011-03-02", "2011-04-01"]):
        rows.append(line(f"L{number}", f"I{number}", f"{day} 10:00:00", "lapser"))
    # "owl": three orders, all at 22:xx on Fridays, the last a week before the data ends.
    for number, day in enumerate(["2011-06-10", "2011-06-17", "2011-06-24"]):
        rows.append(line(f"O{number}", f"I{number + 4}", f"{day} 22:{10 + number}:00", "owl"))
    # "climber": 90 spent, bronze; "whale": 1500 spent, gold; "ender": the data's last order.
    rows.append(line("K1", "I1", "2011-06-01 09:00:00", "climber", 90.0))  # not "C...": that
    # prefix marks a cancellation
    rows.append(line("W1", "I2", "2011-06-02 09:00:00", "whale", 1500.0))
    rows.append(line("E1", "I3", "2011-06-30 10:00:00", "ender"))
    for filler in range(12):  # so the model has something to learn
        for item in range(3):
            rows.append(
                line(f"F{filler}", f"I{(filler + item) % 8}", "2011-02-01 09:00:00", f"f{filler}")
            )
    rows.append(line("V1", "VIP1", "2011-02-02 09:00:00", "f0", 500.0))
    write_csv(directory / "shop.csv", SHOP_HEADER, rows)
    write_csv(directory / "exclusive.csv", ["item_id", "tier"], [["VIP1", "gold"]])
    config = write_config(directory, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    config.write_text(config.read_text().replace("[[sources]]", TIERS + "\n[[sources]]", 1))
    train(load_config(config), directory / "models")
    return directory / "models"


@pytest.fixture
def client(models: Path, tmp_path: Path) -> FlaskClient:
    config = ServiceConfig(models_dir=models, events_dir=tmp_path / "events", auth=False)
    return create_app(config).test_client()


def profile(client: FlaskClient, key: str) -> dict[str, object]:
    response = client.get(f"/v1/customers/{key}/profile")
    assert response.status_code == 200
    body: dict[str, object] = response.get_json()
    return body


def test_a_customer_who_ordered_monthly_and_stopped_is_lapsing(client: FlaskClient) -> None:
    signals = profile(client, "lapser")["signals"]
    assert isinstance(signals, dict)
    assert signals["days_since_last_purchase"] == 90.0
    assert signals["median_days_between_orders"] == 30.0
    assert signals["overdue_ratio"] == 3.0 and signals["lapsing"] is True
    assert signals["thank_you"] is True  # four orders
    feed = client.get("/v1/triggers?kind=lapsing").get_json()
    assert [(t["customer_id"], t["fired_at"][:10]) for t in feed["triggers"]] == [
        ("lapser", "2011-05-31")  # 2 x 30 days after the last order
    ]
    assert feed["triggers"][0]["figures"]["overdue_ratio"] == 3.0


def test_best_contact_time_comes_from_their_own_orders(client: FlaskClient) -> None:
    owl = profile(client, "owl")["signals"]
    assert isinstance(owl, dict)
    assert owl["best_contact"] == {"hour": 22, "weekday": "Friday", "from": "own orders"}
    newcomer = profile(client, "ender")["signals"]
    assert isinstance(newcomer, dict) and newcomer["best_contact"]["from"] == "population"
    assert newcomer["best_contact"]["hour"] == 9  # most orders in the data are at 09:00


def test_tier_is_in_every_response_with_the_gap_to_the_next(client: FlaskClient) -> None:
    assert profile(client, "climber")["tier"] == {
        "name": "bronze",
        "spend": 90.0,
        "window_days": 365.0,
        "perks": [],
        "next": {"name": "silver", "gap": 10.0},
    }
    recommendations = client.get("/v1/customers/whale/recommendations").get_json()
    assert recommendations["tier"]["name"] == "gold" and recommendations["tier"]["next"] is None
    unknown = client.get("/v1/customers/nobody/recommendations").get_json()
    assert unknown["tier"]["name"] == "bronze"


def test_a_purchase_over_the_threshold_moves_them_up_and_fires(client: FlaskClient) -> None:
    event = {
        "event_id": "up-1",
        "customer": "climber",
        "item_id": "I5",
        "quantity": 2,
        "price": 10.0,
        "timestamp": "2011-07-01T10:00:00Z",
    }
    assert client.post("/v1/events", json={"events": [event]}).status_code == 200

    tier = profile(client, "climber")["tier"]
    assert isinstance(tier, dict)
    assert tier["name"] == "silver" and tier["spend"] == 110.0
    assert tier["next"] == {"name": "gold", "gap": 890.0}
    feed = client.get("/v1/triggers?kind=tier_up,threshold&since=2011-06-15").get_json()
    fired = {(t["customer_id"], t["kind"]): t for t in feed["triggers"]}
    assert fired[("climber", "tier_up")]["figures"] == {
        "window_spend": 110.0,
        "from": "bronze",
        "to": "silver",
    }
    assert ("climber", "threshold") in fired


def test_tier_exclusive_items_only_reach_that_tier(client: FlaskClient) -> None:
    def items(key: str) -> list[str]:
        body = client.get(f"/v1/customers/{key}/recommendations?n=100").get_json()
        return [item["item_id"] for item in body["items"]]

    assert "VIP1" in items("whale")
    assert "VIP1" not in items("climber")
    assert "VIP1" not in items("someone-new")


def test_trigger_feed_pages_and_validates(client: FlaskClient) -> None:
    everything = client.get("/v1/triggers").get_json()["triggers"]
    assert len(everything) >= 3
    first = client.get("/v1/triggers?limit=2").get_json()
    assert first["triggers"] == everything[:2] and first["next_cursor"] is not None
    second = client.get(f"/v1/triggers?limit=2&cursor={first['next_cursor']}").get_json()
    assert second["triggers"] == everything[2:4]
    for query in ("kind=bogus", "since=soon", "limit=0", "cursor=2"):
        response = client.get(f"/v1/triggers?{query}")
        assert response.status_code == 400 and response.mimetype == "application/problem+json"


def test_percentile_tiers_split_a_known_population() -> None:
    config = TierConfig(
        method="percentiles",
        levels=(
            TierLevel("low", min_percentile=0),
            TierLevel("mid", min_percentile=50),
            TierLevel("top", min_percentile=90),
        ),
    )
    spend = np.arange(10.0, 101.0, 10.0)  # 10, 20, ..., 100
    levels = resolve_levels(config, spend)
    assert [level.min_spend for level in levels] == [0.0, 55.0, 91.0]
    assert np.bincount(tier_indices(levels, spend)).tolist() == [5, 4, 1]
