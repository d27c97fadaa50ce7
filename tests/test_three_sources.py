"""Three sources, three id schemes, one customer: nothing owned anywhere is recommended.

- shop.csv: keyed by customer id, with email and phone columns; SKUs.
- partner.jsonl: a partner feed keyed by email only; ISBNs, mapped to SKUs by a crosswalk
  that also groups two editions of one book.
- reading.parquet: a reading list keyed by phone number (national format); SKUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flask.testing import FlaskClient

from recsvc.app import create_app
from recsvc.bundle import load_current
from recsvc.config import ServiceConfig
from tests.helpers import write_csv
from training.config import load_config
from training.pipeline import train

SKUS = [f"S{i}" for i in range(1, 13)] + ["BOOK1-HB", "BOOK1-PB", "BOOK2"]
CONFIG = """
[model]
factors = 8
iterations = 10

[identity]
default_region = "GB"

[items]
crosswalk = "items.csv"

[[sources]]
name = "shop"
kind = "csv"
path = "shop.csv"
[sources.columns]
customer_id = "cust"
email = "mail"
phone = "tel"
item_id = "sku"
order_id = "order"
quantity = "qty"
unit_price = "price"
timestamp = "at"

[[sources]]
name = "partner"
kind = "jsonl"
path = "partner.jsonl"
customer_namespace = "partner"
currency_rate = 1.15
[sources.columns]
email = "buyer_email"
item_id = "isbn"
timestamp = "purchased_at"
unit_price = "price_eur"

[[sources]]
name = "reading"
kind = "parquet"
path = "reading.parquet"
timezone = "Europe/London"
trust = 0.5
[sources.columns]
phone = "mobile"
item_id = "sku"
timestamp = "added"
"""


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("three")
    shop = [
        # Ann: shop account 100, with an email in mixed case and a UK phone number.
        ["o1", "100", "Ann@Example.com", "+44 20 7946 0001", "S1", 1, 2.0, "2011-03-01 10:00"],
        ["o1", "100", "Ann@Example.com", "+44 20 7946 0001", "S2", 1, 2.0, "2011-03-01 10:00"],
        # Bob: account 200 with bob@example.com; the partner knows a different address.
        ["o2", "200", "bob@example.com", "", "S4", 1, 2.0, "2011-03-02 10:00"],
        # One family address on two accounts: must not fuse them.
        ["o3", "300", "family@example.com", "", "S5", 1, 2.0, "2011-03-03 10:00"],
        ["o4", "301", "family@example.com", "", "S6", 1, 2.0, "2011-03-03 11:00"],
    ]
    # Filler customers so the model has something to learn.
    for number in range(30):
        basket = [SKUS[(number + k) % 12] for k in range(4)]
        for sku in basket:
            shop.append([f"f{number}", str(1000 + number), "", "", sku, 1, 1.0, "2011-02-01 09:00"])
    write_csv(
        directory / "shop.csv", ["order", "cust", "mail", "tel", "sku", "qty", "price", "at"], shop
    )
    partner = [
        {
            "buyer_email": "  ann@example.COM ",
            "isbn": "978-0000000011",
            "price_eur": 10.0,
            "purchased_at": "2011-03-05T12:00:00+01:00",
        },
        {
            "buyer_email": "bob@example.org",
            "isbn": "9780000000035",
            "price_eur": 8.0,
            "purchased_at": "2011-03-06T12:00:00Z",
        },
        {
            "buyer_email": "not-an-address",
            "isbn": "9780000000035",
            "price_eur": 8.0,
            "purchased_at": "2011-03-06T12:00:00Z",
        },
    ]
    (directory / "partner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in partner))
    reading = pa.table(
        {
            "mobile": ["020 7946 0001", "020 7946 0002"],
            "sku": ["S3", "S7"],
            "added": ["2011-03-07 09:00:00", "2011-03-07 09:30:00"],
        }
    )
    pq.write_table(reading, directory / "reading.parquet")
    write_csv(
        directory / "items.csv",
        ["source", "item_id", "catalog_id", "group"],
        [
            ["partner", "978-0000000011", "BOOK1-HB", "book1"],
            ["*", "BOOK1-PB", "BOOK1-PB", "book1"],
            ["partner", "9780000000035", "BOOK2", ""],
        ],
    )
    # The paperback and BOOK2 must be sold in the shop to be in the catalog.
    with (directory / "shop.csv").open("a") as handle:
        handle.write("o9,1001,,,BOOK1-PB,1,9.0,2011-02-02 10:00\n")
        handle.write("o9,1001,,,BOOK2,1,8.0,2011-02-02 10:00\n")
    (directory / "train.toml").write_text(CONFIG)
    models = directory / "models"
    train(load_config(directory / "train.toml"), models)
    return models


@pytest.fixture(scope="module")
def client(three_sources: Path) -> FlaskClient:
    config = ServiceConfig(models_dir=three_sources, events_dir=three_sources / "ev", auth=False)
    return create_app(config).test_client()


def recommended(client: FlaskClient, key: str) -> tuple[str, list[str]]:
    response = client.get(f"/v1/customers/{key}/recommendations?n=100")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["fallback"] is False, key
    return body["customer_id"], [item["item_id"] for item in body["items"]]


def test_ann_owns_what_she_bought_in_all_three_sources(client: FlaskClient) -> None:
    customer, items = recommended(client, "100")
    owned = {"S1", "S2", "S3", "BOOK1-HB", "BOOK1-PB"}  # shop, reading list, partner (+edition)
    assert customer == "100"
    assert not owned & set(items)
    assert set(items) == set(SKUS) - owned  # everything else, exactly once


@pytest.mark.parametrize(
    "key",
    [
        "shop:100",
        "customer:100",
        "email:ANN@example.com",
        "email:%20ann@example.com%20",
        "phone:+442079460001",
        "phone:020%207946%200001",
        "phone:%2B44%2020%207946%200001",
    ],
)
def test_every_alias_resolves_to_the_same_recommendations(client: FlaskClient, key: str) -> None:
    assert recommended(client, key) == recommended(client, "100")


def test_different_emails_do_not_link(client: FlaskClient) -> None:
    customer, items = recommended(client, "200")
    assert customer == "200" and "BOOK2" in items  # bob@example.org's book is not Bob's
    other, other_items = recommended(client, "email:bob@example.org")
    assert other != "200" and "BOOK2" not in other_items


def test_shared_family_email_keeps_accounts_apart(client: FlaskClient) -> None:
    first, first_items = recommended(client, "300")
    second, second_items = recommended(client, "301")
    assert (first, second) == ("300", "301")
    assert "S6" in first_items and "S5" in second_items


def test_manifest_reports_links_conflicts_and_accounting(three_sources: Path) -> None:
    manifest = msgspec.to_builtins(load_current(three_sources).manifest)  # as on disk
    identity = manifest["identity"]
    assert identity["conflicts"]["distinct_ids"]["count"] == 1
    assert identity["invalid"] == {"email": 1, "phone": 0}
    assert identity["customers_with_several_aliases"] >= 2  # Ann; the family address
    assert "@" not in json_text(identity["conflicts"]).replace("***@", "")
    accounting = manifest["accounting"]
    assert accounting["shop"]["rows_read"] == 5 + 30 * 4 + 2
    assert accounting["partner"] == {
        "rows_read": 3,
        "used": 2,
        "duplicate": 0,
        "cancellation": 0,
        "anonymous": 1,
        "adjustment": 0,
        "erased": 0,
        "quarantined": {},
    }
    assert accounting["reading"]["used"] == 2
    for counts in accounting.values():
        parts = sum(v for k, v in counts.items() if k not in ("rows_read", "quarantined"))
        assert parts + sum(counts["quarantined"].values()) == counts["rows_read"]
    contributions = {s["name"]: s["contribution"] for s in manifest["sources"]}
    assert contributions["partner"]["purchases"] == 2
    assert contributions["reading"]["customers"] == 2


def json_text(value: object) -> str:
    return json.dumps(value)
