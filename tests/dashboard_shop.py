"""A shop for the dashboard's tests: two sources, customers with email addresses and phone
numbers, tiers, a content catalog, an XSS payload in a product title and a content item, a
quarantined row holding an address, and two bundles (a customer climbs from bronze to gold
between them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import pytest

from recsvc import bundle
from tests.channel_shop import XSS_TITLE
from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.config import load_config
from training.pipeline import train

XSS_CONTENT = "<img src=x onerror=alert(2)> Winter offer"
ANN_EMAIL = "Ann.Lee@Example.com"
ANN_PHONE = "+44 20 7946 0958"
QUARANTINED_EMAIL = "quarantined.person@example.com"
COLUMNS = {**SHOP_COLUMNS, "email": "Email", "phone": "Phone"}
HEADER = [*SHOP_HEADER, "Email", "Phone"]
TITLES = {
    "X1": XSS_TITLE,
    "C1": "CHRISTMAS BAUBLE",
    "K1": "SPOTTY MUG",
    "K2": "CAKE TIN",
    "K3": "TEA MUG",
    "P1": "PLAIN BOX",
    "P2": "PAPER NAPKINS",
}
CONFIG = """
[items]
taxonomy = "taxonomy.toml"

[tiers]
[[tiers.levels]]
name = "bronze"
min_spend = 0
[[tiers.levels]]
name = "silver"
min_spend = 50
perks = ["free shipping over £100"]
[[tiers.levels]]
name = "gold"
min_spend = 500
perks = ["early access"]

[channels]
content = "content.json"
[channels.slots.home_hero]
content = 1
products = 4
"""
TAXONOMY = """
[categories]
christmas = ["christmas", "bauble", "lights"]
kitchen = ["mug", "cake"]
"""
CONTENT = [
    {
        "id": "winter",
        "kind": "offer",
        "title": XSS_CONTENT,
        "body": "For every member",
        "url": "/winter",
        "tags": [],
        "tiers": ["bronze", "silver", "gold"],
    },
    {"id": "xmas", "kind": "banner", "title": "Christmas", "url": "/xmas", "tags": ["christmas"]},
]
# (customer id, email, phone): what they bought, as (source, item, quantity, unit price, day)
CUSTOMERS: dict[tuple[str, str, str], list[tuple[str, str, float, float, str]]] = {
    ("1001", ANN_EMAIL, ANN_PHONE): [
        ("shop", "K1", 1, 4.0, "2011-03-01"),
        ("shop", "K2", 2, 6.0, "2011-03-01"),
        ("outlet", "P1", 1, 3.0, "2011-04-01"),
    ],
    ("1002", "bob@example.com", ""): [
        ("shop", "X1", 1, 10.0, "2011-02-01"),
        ("shop", "C1", 1, 5.0, "2011-02-01"),
    ],
    ("1003", "leaver@example.com", ""): [("shop", "K3", 1, 3.0, "2011-02-15")],
    ("1004", "", ""): [("outlet", "P2", 10, 100.0, "2011-05-01")],
    ("1005", "climber@example.com", ""): [("shop", "K1", 1, 4.0, "2011-01-10")],
    **{
        (str(2001 + n), "", ""): [
            ("shop", "X1", 1, 10.0, f"2011-05-{10 + n:02d}"),
            ("shop", ["C1", "K1", "K2"][n % 3], 1, 5.0, f"2011-05-{10 + n:02d}"),
        ]
        for n in range(10)
    },
}
# Only in the second bundle: the climber buys enough for gold.
LATER = {("1005", "climber@example.com", ""): [("shop", "P2", 6, 100.0, "2011-09-01")]}


def _rows(
    purchases: dict[tuple[str, str, str], list[tuple[str, str, float, float, str]]],
    source: str,
    first_order: int,
) -> list[list[object]]:
    rows: list[list[object]] = []
    for number, ((customer, email, phone), lines) in enumerate(purchases.items()):
        for line_source, item, quantity, price, day in lines:
            if line_source == source:
                order = f"{first_order + number}"
                when = f"{day} 10:00:00"
                rows.append(
                    [order, item, TITLES[item], quantity, when, price, customer, "UK", email, phone]
                )
    return rows


def build(directory: Path) -> Path:
    """Train the first bundle, then the second with the later purchases; the models
    directory holds both, ``current`` naming the second."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "taxonomy.toml").write_text(TAXONOMY)
    (directory / "content.json").write_text(json.dumps(CONTENT))
    sources = source_toml("shop", "shop.csv", COLUMNS) + source_toml(
        "outlet", "outlet.csv", COLUMNS
    )
    config = write_config(directory, sources)
    config.write_text(CONFIG + config.read_text())
    bad = ["9999", "K1", XSS_TITLE, "abc", "2011-03-01 10:00:00", 4.0, "1999", "UK"]
    bad += [QUARANTINED_EMAIL, ""]
    for earlier, purchases in ((True, CUSTOMERS), (False, {**CUSTOMERS, **_merged(LATER)})):
        shop = _rows(purchases, "shop", 5000) + [bad]
        write_csv(directory / "shop.csv", HEADER, shop)
        write_csv(directory / "outlet.csv", HEADER, _rows(purchases, "outlet", 7000))
        with pytest.MonkeyPatch.context() as patch:
            if earlier:  # published a day before the second, as a real retrain would be
                patch.setattr(bundle, "datetime", _DayEarlier)
            train(load_config(config), directory / "models")
    return directory / "models"


def _merged(
    later: dict[tuple[str, str, str], list[tuple[str, str, float, float, str]]],
) -> dict[tuple[str, str, str], list[tuple[str, str, float, float, str]]]:
    return {who: CUSTOMERS.get(who, []) + lines for who, lines in later.items()}


class _DayEarlier(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> _DayEarlier:
        moment = datetime.now(tz or UTC) - timedelta(days=1)
        return cls.fromtimestamp(moment.timestamp(), tz or UTC)
