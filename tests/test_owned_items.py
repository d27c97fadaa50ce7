"""The product's promise: nothing a customer holds in any source is ever recommended.

Holdings are computed here independently of the trainer, straight from the raw sample files,
in both readings: net quantity over the merged history (overlap counted once), and net
quantity within each file on its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from flask.testing import FlaskClient

from recsvc.bundle import load_current
from tests.conftest import SAMPLE_DIR


def raw_lines() -> pd.DataFrame:
    legacy = pd.read_csv(SAMPLE_DIR / "legacy.csv.gz", dtype=str, keep_default_na=False)
    shop = pd.read_csv(SAMPLE_DIR / "shop.csv.gz", dtype=str, keep_default_na=False)
    shop = shop.rename(
        columns={"InvoiceNo": "Invoice", "CustomerID": "Customer ID", "UnitPrice": "Price"}
    )
    lines = pd.concat([legacy, shop], keys=["legacy", "shop"], names=["source", None])
    lines = lines[lines["Customer ID"] != ""].reset_index(level="source")
    lines["item"] = lines["StockCode"].str.strip().str.upper()
    lines["q"] = lines["Quantity"].astype(float)
    return lines


def held(net: pd.Series) -> set[tuple[str, str]]:
    positive = net[net > 0].reset_index()
    return set(zip(positive["Customer ID"], positive["item"], strict=True))


def holdings() -> set[tuple[str, str]]:
    lines = raw_lines()
    per_file = held(lines.groupby(["source", "Customer ID", "item"])["q"].sum().droplevel(0))
    key = ["Invoice", "StockCode", "Quantity", "InvoiceDate"]
    lines["copy"] = lines.groupby(["source", *key]).cumcount()
    merged = lines.drop_duplicates([*key, "copy"])  # overlap lines count once
    return per_file | held(merged.groupby(["Customer ID", "item"])["q"].sum())


def test_no_recommended_item_is_held_anywhere(client: FlaskClient, sample_models: Path) -> None:
    held_pairs = holdings()
    customers = [str(c) for c in load_current(sample_models).arrays.customer_ids]
    assert len(customers) >= 200
    assert "" not in customers  # anonymous rows (duplicates included) belong to nobody
    held_by = {customer for customer, _ in held_pairs}
    assert set(customers) == held_by
    for customer in customers:
        body = client.get(f"/v1/customers/{customer}/recommendations?n=50").get_json()
        assert body["fallback"] is False
        assert len(body["items"]) == 50
        offered = {(customer, item["item_id"]) for item in body["items"]}
        assert not offered & held_pairs, customer
