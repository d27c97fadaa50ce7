"""The product's promise: nothing a customer still holds in any source is ever recommended.

Holdings are computed here independently of the trainer, straight from the raw sample files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from flask.testing import FlaskClient

from recsvc.bundle import load_current
from tests.conftest import SAMPLE_DIR


def holdings_from_raw_files() -> dict[str, set[str]]:
    legacy = pd.read_csv(SAMPLE_DIR / "legacy.csv.gz", dtype=str, keep_default_na=False)
    shop = pd.read_csv(SAMPLE_DIR / "shop.csv.gz", dtype=str, keep_default_na=False)
    shop = shop.rename(
        columns={"InvoiceNo": "Invoice", "CustomerID": "Customer ID", "UnitPrice": "Price"}
    )
    lines = pd.concat([legacy, shop], keys=["legacy", "shop"], names=["source", None])
    lines = lines[lines["Customer ID"] != ""].reset_index(level="source")
    key = ["Invoice", "StockCode", "Quantity", "InvoiceDate"]
    lines["copy"] = lines.groupby(["source", *key]).cumcount()
    lines = lines.drop_duplicates([*key, "copy"])  # overlap lines count once
    lines["item"] = lines["StockCode"].str.strip().str.upper()
    net = (
        lines.assign(q=lines["Quantity"].astype(float)).groupby(["Customer ID", "item"])["q"].sum()
    )
    held = net[net > 0].reset_index()
    return held.groupby("Customer ID")["item"].agg(set).to_dict()


def test_no_recommended_item_is_held_anywhere(client: FlaskClient, sample_models: Path) -> None:
    holdings = holdings_from_raw_files()
    customers = [str(c) for c in load_current(sample_models).arrays.customer_ids]
    assert len(customers) >= 200
    both_sources = 0
    for customer in customers:
        body = client.get(f"/v1/customers/{customer}/recommendations?n=50").get_json()
        assert body["fallback"] is False
        assert len(body["items"]) == 50
        recommended = {item["item_id"] for item in body["items"]}
        assert not recommended & holdings.get(customer, set()), customer
        both_sources += customer in holdings
    assert both_sources == len(customers)
