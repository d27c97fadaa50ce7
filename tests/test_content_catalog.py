"""The content catalog is checked at training so that the service can render every item it
ships: each bad value is an error naming the item and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.channels import load_content
from training.errors import ConfigError

BASE = "https://shop.example.com"
GOOD = {"id": "xmas", "kind": "banner", "title": "Christmas", "url": "/xmas", "tags": ["party"]}


def load(tmp_path: Path, *items: Any) -> list[dict[str, Any]]:
    path = tmp_path / "content.json"
    path.write_text(json.dumps(list(items)))
    return load_content(path, ["party", "garden"], ["bronze", "gold"], BASE)


def test_paths_become_absolute_and_absolute_urls_are_kept(tmp_path: Path) -> None:
    (item,) = load(tmp_path, {**GOOD, "image": "/content/x.jpg"})
    assert item["url"] == f"{BASE}/xmas" and item["image"] == f"{BASE}/content/x.jpg"
    (item,) = load(tmp_path, {**GOOD, "url": "https://cdn.example.net/a?b=1"})
    assert item["url"] == "https://cdn.example.net/a?b=1" and item["image"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": 5}, r"item 'xmas'\.image: a URL or path"),
        ({"image": "javascript:alert(1)"}, r"item 'xmas'\.image: 'javascript:alert\(1\)' is not"),
        ({"url": "shop.example.com/x"}, r"item 'xmas'\.url: .* is not an absolute http\(s\) URL"),
        ({"url": "ftp://example.com/x"}, r"item 'xmas'\.url: "),
        ({"url": "/a path"}, r"item 'xmas'\.url: "),
        ({"title": ["Christmas"]}, r"item 'xmas'\.title: required, a non-empty string"),
        ({"body": 7}, r"item 'xmas'\.body: must be a string"),
        ({"tags": [{"a": 1}]}, r"item 'xmas'\.tags: must be a list of party, garden"),
        ({"tiers": "gold"}, r"item 'xmas'\.tiers: must be a list of bronze, gold"),
        ({"valid_from": 20111201}, r"item 'xmas'\.valid_from: must be a date, YYYY-MM-DD"),
        ({"valid_to": "2011-02-30"}, r"item 'xmas'\.valid_to: '2011-02-30' is not a date"),
        ({"valid_from": "2011-12-02", "valid_to": "2011-12-01"}, r"valid_to: before valid_from"),
        ({"id": 5}, r"item 0\.id: required, a non-empty string"),
    ],
)
def test_bad_values_name_the_item_and_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {**GOOD, **change})
