"""Catalog enrichment and channel content, prepared at training time.

- A keyword taxonomy (TOML, ``[categories] name = ["keyword", "two words", ...]``) gives each
  item the categories whose keywords appear, as whole words, in its title.
- A content catalog (JSON list of banners, articles and offers) is validated here and shipped
  inside the bundle, so the service serves exactly what the bundle was checked with.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from training.errors import ConfigError

MAX_CATEGORIES = 63  # one bit each in an int64
WORD = re.compile(r"\w+")
CONTENT_KINDS = ("banner", "article", "offer")
CONTENT_FIELDS = {
    "id",
    "kind",
    "title",
    "body",
    "image",
    "url",
    "tags",
    "tiers",
    "valid_from",
    "valid_to",
}


def load_taxonomy(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the taxonomy ({error})") from error
    categories = raw.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise ConfigError(f"{path}: needs a [categories] table of name = [keywords]")
    if len(categories) > MAX_CATEGORIES:
        raise ConfigError(f"{path}: at most {MAX_CATEGORIES} categories")
    taxonomy: dict[str, list[str]] = {}
    for name, keywords in categories.items():
        if not re.fullmatch(r"[a-z0-9_-]+", name):
            raise ConfigError(f"{path}: category {name!r}: use lower-case letters, digits, _ -")
        if (
            not isinstance(keywords, list)
            or not keywords
            or not all(isinstance(k, str) and k.strip() for k in keywords)
        ):
            raise ConfigError(f"{path}: category {name!r} needs a list of keywords")
        taxonomy[name] = [keyword.strip().lower() for keyword in keywords]
    return taxonomy


def item_categories(titles: NDArray[np.str_], taxonomy: dict[str, list[str]]) -> NDArray[np.int64]:
    """Per item, a bit mask of its categories (bit i = the i-th category of the taxonomy).

    A keyword matches whole words of the lower-cased title, with or without a trailing "s":
    the search ``\\b<keyword>s?\\b``. One-word keywords are looked up in an index of the
    titles' words; a phrase is searched for only in the titles holding its first word."""
    texts = [title.lower() for title in titles.tolist()]
    with_word: dict[str, list[int]] = {}
    for item, text in enumerate(texts):
        for word in set(WORD.findall(text)):
            with_word.setdefault(word, []).append(item)
    masks = np.zeros(len(titles), dtype=np.int64)
    for bit, keywords in enumerate(taxonomy.values()):
        found: set[int] = set()
        for keyword in keywords:
            found.update(_titles_with(keyword, texts, with_word))
        masks[sorted(found)] |= np.int64(1) << bit
    return masks


def _titles_with(keyword: str, texts: list[str], with_word: dict[str, list[int]]) -> list[int]:
    if WORD.fullmatch(keyword):
        return with_word.get(keyword, []) + with_word.get(keyword + "s", [])
    pattern = re.compile(rf"\b{re.escape(keyword)}s?\b")
    first = WORD.match(keyword)  # a whole word of any title the phrase is in
    candidates = with_word.get(first.group(), []) if first else range(len(texts))
    return [item for item in candidates if pattern.search(texts[item])]


def load_content(
    path: Path | None, categories: list[str], tiers: list[str], base_url: str
) -> list[dict[str, Any]]:
    """The content catalog, validated so that the service can render every item as it is:
    every problem names the item and the field. Relative ``image`` and ``url`` paths are
    made absolute with ``base_url`` here, so the bundle holds only absolute http(s) URLs."""
    if path is None:
        return []
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the content catalog ({error})") from error
    if not isinstance(items, list):
        raise ConfigError(f"{path}: must be a JSON list of content items")
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"{path}: item {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be an object")
        if isinstance(item.get("id"), str):
            where = f"{path}: item {item['id']!r}"
        unknown = set(item) - CONTENT_FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        for key in ("id", "title", "url"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}.{key}: required, a non-empty string")
        if item["id"] in seen:
            raise ConfigError(f"{where}: duplicate id")
        seen.add(item["id"])
        if item.get("kind") not in CONTENT_KINDS:
            raise ConfigError(f"{where}.kind: one of {', '.join(CONTENT_KINDS)}")
        if not isinstance(item.setdefault("body", ""), str):
            raise ConfigError(f"{where}.body: must be a string")
        for key, allowed in (("tags", categories), ("tiers", tiers)):
            values = item.setdefault(key, [])
            if (
                not isinstance(values, list)
                or not all(isinstance(value, str) for value in values)
                or not set(values) <= set(allowed)
            ):
                raise ConfigError(f"{where}.{key}: must be a list of {', '.join(allowed)}")
        item["url"] = _absolute_url(item["url"], base_url, f"{where}.url")
        image = item.setdefault("image", None)
        if image is not None:
            if not isinstance(image, str) or not image.strip():
                raise ConfigError(f"{where}.image: a URL or path (a non-empty string), or null")
            item["image"] = _absolute_url(image, base_url, f"{where}.image")
        valid: dict[str, date] = {}
        for key in ("valid_from", "valid_to"):
            if item.get(key) is not None:
                value = item[key]
                if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\d", value):
                    raise ConfigError(f"{where}.{key}: must be a date, YYYY-MM-DD")
                try:
                    valid[key] = date.fromisoformat(value)
                except ValueError:
                    raise ConfigError(f"{where}.{key}: {value!r} is not a date") from None
        if len(valid) == 2 and valid["valid_to"] < valid["valid_from"]:
            raise ConfigError(f"{where}.valid_to: before valid_from")
    return items


def _absolute_url(value: str, base_url: str, where: str) -> str:
    """``value`` as an absolute http(s) URL: a path ("/content/x.jpg") is joined to
    ``base_url``; anything else must already be one."""
    value = value.strip()
    url = value if "://" in value or not value.startswith("/") else base_url + value
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"\s", url):
        raise ConfigError(
            f"{where}: {value[:80]!r} is not an absolute http(s) URL or a path starting with /"
        )
    return url
