"""A small shop with a taxonomy, content, tiers and one product whose title is an XSS payload."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import SHOP_COLUMNS, SHOP_HEADER, source_toml, write_config, write_csv
from training.config import load_config
from training.pipeline import train

XSS_TITLE = "<script>alert(1)</script> CHRISTMAS LIGHTS"
CONFIG = """
[items]
taxonomy = "taxonomy.toml"

[tiers]
[[tiers.levels]]
name = "bronze"
min_spend = 0
[[tiers.levels]]
name = "gold"
min_spend = 500
perks = ["early access"]

[channels]
base_url = "{base_url}"
content = "content.json"
[channels.slots.home_hero]
content = 1
products = 4
"""
TAXONOMY = """
[categories]
christmas = ["christmas", "bauble"]
kitchen = ["mug", "cake"]
"""
CONTENT = [
    {
        "id": "gold-offer",
        "kind": "offer",
        "title": "Gold <b>only</b>",
        "url": "/gold",
        "image": "/content/gold.png",
        "tags": [],
        "tiers": ["gold"],
    },
    {
        "id": "xmas",
        "kind": "banner",
        "title": "Christmas",
        "url": "/xmas",
        "image": "/content/xmas.png",
        "tags": ["christmas"],
        "tiers": [],
    },
    {
        "id": "bake",
        "kind": "article",
        "title": "Baking",
        "url": "https://blog.example.com/bake",
        "tags": ["kitchen"],
        "tiers": [],
    },
    {
        "id": "expired",
        "kind": "banner",
        "title": "Old",
        "url": "/old",
        "tags": ["christmas"],
        "tiers": [],
        "valid_to": "2001-01-01",
    },
]
TITLES = {
    "X1": XSS_TITLE,
    "X2": "CHRISTMAS BAUBLE",
    "X3": "RED CHRISTMAS STAR",
    "K1": "SPOTTY MUG",
    "K2": "CAKE TIN",
    "K3": "TEA MUG",
    "P1": "PLAIN BOX",
    "P2": "PAPER NAPKINS",
}


def build(directory: Path, base_url: str = "https://shop.example.com") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    baskets = {
        "baker": ["K1", "K2"],
        "festive": ["X2", "X3"],
        "whale": ["P1"],
        **{f"f{i}": [list(TITLES)[(i + k) % 8] for k in range(3)] for i in range(16)},
        **{f"fan{i}": ["X1"] for i in range(8)},  # the XSS-titled lights are the best seller
    }
    for number, (customer, items) in enumerate(sorted(baskets.items())):
        for item in items:
            price = 600.0 if customer == "whale" else 2.5
            rows.append(
                [f"{number}", item, TITLES[item], 1, "2011-06-01 10:00:00", price, customer, "UK"]
            )
    write_csv(directory / "shop.csv", SHOP_HEADER, rows)
    (directory / "taxonomy.toml").write_text(TAXONOMY)
    (directory / "content.json").write_text(json.dumps(CONTENT))
    config = write_config(directory, source_toml("shop", "shop.csv", SHOP_COLUMNS))
    config.write_text(CONFIG.format(base_url=base_url) + config.read_text())
    train(load_config(config), directory / "models")
    return directory / "models"
