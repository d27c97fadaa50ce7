"""Merging sources into one purchase history, with every input row accounted for.

Each row gets exactly one outcome, decided in this order:

1. ``quarantined`` (reason ``missing_item``): no item id.
2. ``adjustment``: the item is not a product (postage, fees, discounts, vouchers; see ItemRules).
3. ``quarantined`` with a reason: unparseable or impossible quantity, price or timestamp.
4. ``duplicate``: the same order line (order id, item, quantity, timestamp) was already read
   from an earlier source. A line repeated inside one source is kept as many times as it appears
   there; only the copies that another source also holds count once.
5. ``anonymous``: no customer id. Sales count for popularity, not for anyone's history.
6. ``cancellation``: order id with the source's cancellation prefix, or a negative quantity.
   Applied as a negative quantity: it reduces what the customer holds and what they spent.
7. ``used``: a purchase by a known customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from training.config import ItemRules
from training.sources import SourceRows

OUTCOMES = ("used", "duplicate", "cancellation", "anonymous", "adjustment", "quarantined")
USED, DUPLICATE, CANCELLATION, ANONYMOUS, ADJUSTMENT, QUARANTINED = range(len(OUTCOMES))
REASONS = (
    "missing_item",
    "bad_quantity",
    "zero_quantity",
    "bad_price",
    "negative_price",
    "bad_timestamp",
)
UNDECIDED = -1
DEDUP_KEY = ["order_id", "item_id", "quantity", "timestamp"]
EVENT_COLUMNS = [
    "source",
    "customer_id",
    "item_id",
    "quantity",
    "unit_price",
    "timestamp",
    "order_id",
    "description",
    "country",
    "outcome",
]


@dataclass(frozen=True)
class MergedHistory:
    """The merge's result.

    ``events``: the rows that carry information, typed, with ``outcome`` used, duplicate,
    cancellation or anonymous. Duplicates are kept because they still say what their own
    source lists as held; they never count twice towards weights, spend or popularity.
    ``quarantine``: malformed rows with their reason and raw values.
    ``accounting``: per source, where its rows went; the parts add up to rows_read.
    """

    events: pd.DataFrame
    quarantine: pd.DataFrame
    accounting: dict[str, dict[str, Any]]


def merge_sources(sources: list[SourceRows], items: ItemRules) -> MergedHistory:
    parts = [_parse(rows, position, items) for position, rows in enumerate(sources)]
    parsed = pd.concat([frame for frame, _ in parts], ignore_index=True)
    outcome = parsed["outcome"].to_numpy(copy=True)
    _mark_duplicates(parsed, outcome)
    undecided = outcome == UNDECIDED
    anonymous = undecided & (parsed["customer_id"] == "").to_numpy()
    outcome[anonymous] = ANONYMOUS
    undecided &= ~anonymous
    cancelled = undecided & parsed["is_cancellation"].to_numpy()
    outcome[cancelled] = CANCELLATION
    outcome[undecided & ~cancelled] = USED
    parsed["outcome"] = outcome

    names = [rows.source.name for rows in sources]
    kept = parsed[np.isin(outcome, (USED, DUPLICATE, CANCELLATION, ANONYMOUS))]
    kept = kept.reset_index(drop=True)
    kept["source"] = pd.Categorical.from_codes(
        kept["source_position"].to_numpy(), categories=pd.Index(names)
    )
    kept["outcome"] = pd.Categorical.from_codes(
        kept["outcome"].to_numpy(), categories=pd.Index(OUTCOMES)
    )
    return MergedHistory(
        events=kept[EVENT_COLUMNS],
        quarantine=pd.concat([bad for _, bad in parts], ignore_index=True),
        accounting=_accounting(parsed, names),
    )


def _parse(rows: SourceRows, position: int, items: ItemRules) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed rows with a provisional outcome, and the quarantined rows with their raw values."""
    raw = rows.frame
    source = rows.source
    count = len(raw)

    def text(field: str) -> pd.Series:
        if field in raw:
            return raw[field].str.strip()
        return pd.Series("", index=raw.index, dtype="str")

    item_id = text("item_id").str.upper()
    reason = np.full(count, UNDECIDED, dtype=np.int8)

    def flag(mask: Any, why: str) -> None:
        reason[(reason == UNDECIDED) & np.asarray(mask, dtype=bool)] = REASONS.index(why)

    flag(item_id == "", "missing_item")
    non_product = item_id.isin(items.non_product_ids).to_numpy(copy=True)
    if items.non_product_pattern:
        non_product |= item_id.str.contains(items.non_product_pattern, regex=True).to_numpy()
    non_product &= reason == UNDECIDED

    if "quantity" in raw:
        quantity = _numbers(text("quantity"))
        flag(~np.isfinite(quantity) & ~non_product, "bad_quantity")
        flag((quantity == 0) & ~non_product, "zero_quantity")
    else:
        quantity = np.ones(count)
    if "unit_price" in raw:
        price = _numbers(text("unit_price"))
        flag(~np.isfinite(price) & ~non_product, "bad_price")
        flag((price < 0) & ~non_product, "negative_price")
    else:
        price = np.full(count, np.nan)
    if "timestamp" in raw:
        timestamp = pd.to_datetime(
            text("timestamp"),
            format=source.timestamp_format or "ISO8601",
            errors="coerce",
            utc=True,
        ).dt.tz_localize(None)
        flag(timestamp.isna().to_numpy() & ~non_product, "bad_timestamp")
    else:
        timestamp = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")

    order_id = text("order_id")
    is_cancellation = quantity < 0
    if "order_id" in raw and source.cancellation_prefix:
        is_cancellation |= order_id.str.startswith(source.cancellation_prefix).to_numpy()
    quantity = np.where(is_cancellation, -np.abs(quantity), quantity)

    outcome = np.full(count, UNDECIDED, dtype=np.int8)
    outcome[non_product] = ADJUSTMENT
    quarantined = reason != UNDECIDED
    outcome[quarantined] = QUARANTINED
    bad = raw.loc[quarantined]
    quarantine = pd.DataFrame(
        {
            "source": source.name,
            "file": [str(rows.files[i]) for i in bad["file"]],
            "record": bad["record"].to_numpy(),
            "reason": [REASONS[r] for r in reason[quarantined]],
            **{field: bad[field].to_numpy() for field in source.columns},
        }
    )
    parsed = pd.DataFrame(
        {
            "source_position": np.full(count, position, dtype=np.int16),
            "customer_id": customer_ids(text("customer_id"), source.customer_namespace),
            "item_id": item_id,
            "quantity": quantity,
            "unit_price": price,
            "timestamp": timestamp.to_numpy(),
            "order_id": order_id,
            "description": text("description"),
            "country": text("country"),
            "is_cancellation": is_cancellation,
            "outcome": outcome,
            "reason": reason,
        }
    )
    return parsed, quarantine


def customer_ids(raw: pd.Series, namespace: str) -> pd.Series:
    """Canonical customer ids. Exports that went through a spreadsheet write ids as floats
    ("13085.0"); those are read as the integer id. Ids outside the shop's own namespace
    ("customer") are prefixed with their namespace so that unrelated id schemes never collide."""
    ids = raw.where(~raw.str.fullmatch(r"\d+\.0+"), raw.str.replace(r"\.0+$", "", regex=True))
    if namespace == "customer":
        return ids
    return ids.where(ids == "", namespace + ":" + ids)


def _numbers(values: pd.Series) -> NDArray[np.float64]:
    """Parse decimal strings; anything unparseable (including "") becomes NaN."""
    try:  # fast path: every value parses
        parsed = pc.cast(pa.array(values, type=pa.string()), pa.float64())
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


def _mark_duplicates(parsed: pd.DataFrame, outcome: NDArray[np.int8]) -> None:
    candidates = parsed[(outcome == UNDECIDED) & (parsed["order_id"] != "").to_numpy()]
    if candidates["source_position"].nunique() < 2:
        return
    keys = candidates[["source_position", *DEDUP_KEY]].copy()
    # The n-th copy of a line in one source matches the n-th copy in another source.
    keys["occurrence"] = keys.groupby(["source_position", *DEDUP_KEY], dropna=False).cumcount()
    repeated = keys.duplicated(subset=[*DEDUP_KEY, "occurrence"], keep="first")
    outcome[repeated[repeated].index.to_numpy()] = DUPLICATE


def _accounting(parsed: pd.DataFrame, names: list[str]) -> dict[str, dict[str, Any]]:
    accounting: dict[str, dict[str, Any]] = {}
    positions = parsed["source_position"].to_numpy()
    outcomes = parsed["outcome"].to_numpy()
    reasons = parsed["reason"].to_numpy()
    for position, name in enumerate(names):
        mine = positions == position
        by_outcome = np.bincount(outcomes[mine], minlength=len(OUTCOMES))
        by_reason = np.bincount(reasons[mine & (outcomes == QUARANTINED)], minlength=len(REASONS))
        accounting[name] = {
            "rows_read": int(mine.sum()),
            **{OUTCOMES[i]: int(by_outcome[i]) for i in range(QUARANTINED)},
            "quarantined": {REASONS[i]: int(n) for i, n in enumerate(by_reason) if n},
        }
    return accounting
