"""Merging sources into one purchase history, with every input row accounted for.

Each row gets exactly one outcome, decided in this order:

1. ``quarantined`` (reason ``malformed_row``): a CSV row with more or fewer fields than its
   header; (reason ``missing_item``): no item id.
2. ``adjustment``: the item is not a product (postage, fees, discounts, vouchers; see ItemRules).
3. ``quarantined`` with a reason: unparseable or impossible quantity, price or timestamp
   (zero, negative price, beyond MAX_QUANTITY or MAX_UNIT_PRICE, more than a day in the future).
   Then ``erased``: the row belongs to a customer on the service's erasure list: one alias
   of theirs is listed, and every row linked to it is theirs, in every source. It is not used
   at all, and takes no part in linking the others; quarantined rows of theirs stay counted
   as quarantined, without their values.
4. ``duplicate``: the same order line (order id, item, quantity, timestamp) was already read
   from an earlier source. A line repeated inside one source is kept as many times as it appears
   there; only the copies that another source also holds count once. In the service's event
   log, where ids are unique, a repeated event id is a duplicate.
5. ``anonymous``: no customer id, email or phone that identifies anyone. Sales count for
   popularity, not for anyone's history.
6. ``cancellation``: order id with the source's cancellation prefix, or a negative quantity.
   Applied as a negative quantity: it reduces what the customer holds and what they spent.
7. ``used``: a purchase by a known customer.

Before that, each row's identifiers are linked across sources (``training.identity``) and its
item id is mapped through the item crosswalk; prices are converted to the shop currency and
naive timestamps read in the source's time zone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.identity import (
    CANONICAL,
    EMAIL,
    PHONE,
    IdentityKey,
    IdentityRules,
    normalise_email,
    normalise_phone,
)
from recsvc.logrecords import ALIAS_DIGESTS
from recsvc.manifest import ErasureReport, Identity, InvalidContacts
from recsvc.schemas import MAX_QUANTITY, MAX_UNIT_PRICE  # the API's bounds, one definition
from training.config import IdentityConfig, ItemRules, SourceConfig
from training.crosswalk import (
    ItemCrosswalk,
    load_customer_crosswalk,
    load_item_crosswalk,
    training_alias,
)
from training.dataset import run_starts
from training.errors import SourceError
from training.identity import PRIMARY_NAMESPACE, link
from training.sources import SourceRows

OUTCOMES = (
    "used",
    "duplicate",
    "cancellation",
    "anonymous",
    "adjustment",
    "erased",
    "quarantined",
)
USED, DUPLICATE, CANCELLATION, ANONYMOUS, ADJUSTMENT, ERASED, QUARANTINED = range(len(OUTCOMES))
REASONS = (
    "malformed_row",
    "missing_item",
    "bad_quantity",
    "zero_quantity",
    "quantity_out_of_range",
    "bad_price",
    "negative_price",
    "price_out_of_range",
    "bad_timestamp",
    "future_timestamp",
)
# The field whose value a reason judged (malformed_row: none, the row itself).
REASON_FIELDS = {
    "missing_item": "item_id",
    "bad_quantity": "quantity",
    "zero_quantity": "quantity",
    "quantity_out_of_range": "quantity",
    "bad_price": "unit_price",
    "negative_price": "unit_price",
    "price_out_of_range": "unit_price",
    "bad_timestamp": "timestamp",
    "future_timestamp": "timestamp",
}
FUTURE_TOLERANCE = pd.Timedelta(days=1)  # clocks and time zones, not orders from the future
UNDECIDED = -1
DEDUP_KEY = ["order", "item_id", "quantity", "timestamp"]
EVENT_COLUMNS = [
    "source",
    "trust",
    "customer_id",
    "item_id",
    "quantity",
    "unit_price",
    "timestamp",
    "order",
    "description",
    "country",
    "outcome",
]
IDENTIFIER_COLUMNS = ["raw_customer_id", "id_alias", "email_alias", "phone_alias"]
LINK_COLUMNS = [
    "source_position",
    "raw_customer_id",
    "id_alias",
    "email_alias",
    "phone_alias",
    "invalid_email",
    "invalid_phone",
]
# Each text column is dictionary-encoded as its source is parsed: from there on the merge
# works on integer codes into one sorted vocabulary per column (linking, duplicates,
# erasures), and each distinct string is held once.
TEXT_COLUMNS = [
    "raw_customer_id",
    "id_alias",
    "email_alias",
    "phone_alias",
    "item_id",
    "order",
    "description",
    "country",
]


@dataclass(frozen=True)
class MergedHistory:
    """The merge's result.

    ``events``: the rows that carry information, typed, with ``outcome`` used, duplicate,
    cancellation or anonymous. ``customer_id`` ("" for anonymous rows), ``item_id``,
    ``description`` and ``country`` are categoricals with sorted categories; ``order`` is an
    integer code, equal for the lines of one order id. Duplicates are kept because they still
    say what their own source lists as held; they never count twice towards weights, spend or
    popularity.
    ``quarantine``: malformed rows with their reason and raw values.
    ``accounting``: per source, where its rows went; the parts add up to rows_read.
    """

    events: pd.DataFrame
    quarantine: pd.DataFrame
    accounting: dict[str, dict[str, Any]]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> canonical customer id
    identity: Identity = field(default_factory=Identity)  # linking report for the manifest
    item_groups: dict[str, str] = field(default_factory=dict)  # catalog item -> group


def merge_sources(
    sources: list[SourceRows], items: ItemRules, identity: IdentityConfig | None = None
) -> MergedHistory:
    """Takes ``sources`` over: each is removed from the list once parsed, so that a source's
    raw text is freed before the next is parsed (at 20 M rows that is gigabytes)."""
    identity = identity or IdentityConfig()
    configs = [rows.source for rows in sources]
    crosswalk = load_item_crosswalk(items.crosswalk, {source.name for source in configs})
    namespace_of = {source.name: source.customer_namespace for source in configs}
    namespace_of |= {namespace: namespace for namespace in namespace_of.values()}
    frames: list[pd.DataFrame] = []
    texts: list[dict[str, pa.DictionaryArray]] = []
    quarantines: list[pd.DataFrame] = []
    for position in range(len(configs)):
        rows = sources.pop(0)
        frame, text, quarantine = _parse(
            rows, position, items, crosswalk, identity.rules, namespace_of
        )
        del rows
        texts.append(text)
        frames.append(frame)
        quarantines.append(quarantine)
    parsed, vocabulary = _concat_parsed(frames, texts)
    # The identifier vocabularies as Python strings, made once for erasures, linking and
    # the customer of each row.
    identifiers = {column: _strings(vocabulary[column]) for column in IDENTIFIER_COLUMNS}
    aliases, identity_report = _link(
        parsed, vocabulary, identifiers, configs, identity, namespace_of
    )
    erased = _erased_rows(
        parsed, identifiers, aliases, load_erasures(identity.erasures), identity.key
    )
    if erased.any():
        # Linked again without them, so that no alias, id or masked example of theirs is
        # left in the result. The others link as before: a link to an erased customer's
        # alias was refused, or it would have made them one customer.
        aliases, identity_report = _link(
            parsed.loc[~erased, LINK_COLUMNS],
            vocabulary,
            identifiers,
            configs,
            identity,
            namespace_of,
        )
    outcome = parsed["outcome"].to_numpy(copy=True)
    quarantine = _withhold_erased(
        pd.concat(quarantines, ignore_index=True), erased[outcome == QUARANTINED]
    )
    outcome[erased & (outcome == UNDECIDED)] = ERASED
    parsed["outcome"] = outcome
    identity_report = msgspec.structs.replace(
        identity_report,
        erasures=erasure_report(identity.erasures, int((outcome == ERASED).sum())),
    )
    customers = _customer_of(parsed, identifiers, aliases)
    outcome = parsed["outcome"].to_numpy(copy=True)
    has_order = parsed["order"].to_numpy() != _blank_code(vocabulary["order"])
    _mark_duplicates(parsed, outcome, has_order)
    event_logs = [position for position, source in enumerate(configs) if source.kind == "events"]
    _mark_repeated_events(parsed, outcome, has_order, event_logs)
    undecided = outcome == UNDECIDED
    anonymous = undecided & (customers.codes == 0)
    outcome[anonymous] = ANONYMOUS
    undecided &= ~anonymous
    cancelled = undecided & parsed["is_cancellation"].to_numpy()
    outcome[cancelled] = CANCELLATION
    outcome[undecided & ~cancelled] = USED
    parsed["outcome"] = outcome

    names = [source.name for source in configs]
    kept = np.isin(outcome, (USED, DUPLICATE, CANCELLATION, ANONYMOUS))
    events = parsed.loc[kept, ["trust", "quantity", "unit_price", "timestamp", "order"]]
    events = events.reset_index(drop=True)
    events["source"] = pd.Categorical.from_codes(
        parsed["source_position"].to_numpy()[kept], categories=pd.Index(names)
    )
    events["customer_id"] = customers[kept]
    for column in ("item_id", "description", "country"):
        events[column] = pd.Categorical.from_codes(
            parsed[column].to_numpy()[kept],
            categories=pd.Index(vocabulary[column].to_pylist(), dtype="str"),
        )
    events["outcome"] = pd.Categorical.from_codes(outcome[kept], categories=pd.Index(OUTCOMES))
    return MergedHistory(
        events=events[EVENT_COLUMNS],
        quarantine=quarantine,
        accounting=_accounting(parsed, names),
        aliases=aliases,
        identity=identity_report,
        item_groups=dict(crosswalk.groups),
    )


def _link(
    parsed: pd.DataFrame,
    vocabulary: dict[str, pa.Array],
    identifiers: dict[str, NDArray[np.object_]],
    sources: list[SourceConfig],
    config: IdentityConfig,
    namespace_of: dict[str, str],
) -> tuple[dict[str, str], Identity]:
    """Link every row's identifiers; return alias -> canonical id (including ``<source>:<id>``
    and ``id:<canonical>`` lookups for the service) and the linking report."""
    crosswalk = load_customer_crosswalk(config.crosswalk, config.rules, namespace_of)
    columns = ["id_alias", "email_alias", "phone_alias"]
    combinations = _first_of_each(parsed[columns])
    records = zip(
        *(identifiers[column][parsed[column].to_numpy()[combinations]] for column in columns),
        strict=True,
    )
    linked = link(records, crosswalk, config.links, config.key)
    aliases = dict(linked.customer_of)
    raw_ids, id_aliases = identifiers["raw_customer_id"], identifiers["id_alias"]
    with_id = parsed.loc[
        parsed["raw_customer_id"].to_numpy() != _blank_code(vocabulary["raw_customer_id"]),
        ["source_position", "raw_customer_id", "id_alias"],
    ]
    # A source's id alias follows from the raw id, so one row per (source, raw id) suffices.
    source_ids = with_id.iloc[_first_of_each(with_id[["source_position", "raw_customer_id"]])]
    for position, raw, alias in source_ids.itertuples(index=False, name=None):
        aliases[f"{sources[position].name}:{raw_ids[raw]}"] = linked.customer_of[id_aliases[alias]]
    for canonical in set(linked.customer_of.values()):
        aliases[f"{CANONICAL}:{canonical}"] = canonical
    report = msgspec.structs.replace(
        msgspec.convert(linked.report(), Identity),
        rules=config.rules.to_manifest(),
        invalid=InvalidContacts(
            email=int(parsed["invalid_email"].sum()), phone=int(parsed["invalid_phone"].sum())
        ),
    )
    return aliases, report


def _customer_of(
    parsed: pd.DataFrame, identifiers: dict[str, NDArray[np.object_]], aliases: dict[str, str]
) -> pd.Categorical:
    """A row belongs to the customer of its strongest identifier: id, then email, then phone
    (they differ only where linking refused a conflict); "" (code 0) where it has none."""
    customers = pd.Index(["", *sorted(set(aliases.values()))], dtype="str")
    code = np.zeros(len(parsed), dtype=np.int32)
    for column in ("phone_alias", "email_alias", "id_alias"):
        known = [aliases.get(alias, "") for alias in identifiers[column]]
        customer = customers.get_indexer(pd.Index(known, dtype="str"))[parsed[column].to_numpy()]
        code = np.where(customer > 0, customer, code)
    return pd.Categorical.from_codes(code, categories=customers)


@dataclass(frozen=True)
class _Text:
    """A text column as its distinct values and each row's code into them: the string work
    (stripping, parsing, normalising) is done once per distinct value, then spread to rows."""

    values: pd.Series  # distinct, stripped
    codes: NDArray[np.integer[Any]]  # the smallest integer type that holds them

    def per_row(self, per_value: Any) -> NDArray[Any]:
        rows: NDArray[Any] = np.asarray(per_value)[self.codes]
        return rows

    def encoded(self, values: pd.Series | None = None) -> pa.DictionaryArray:
        """The rows as an Arrow dictionary array of ``values`` (derived from ``self.values``,
        one per value) or of the text itself."""
        dictionary = pa.array(self.values if values is None else values, type=pa.large_string())
        if not len(dictionary):  # pyarrow would type an empty dictionary null
            dictionary = pa.array([""], type=pa.large_string())
        return pa.DictionaryArray.from_arrays(pa.array(self.codes, pa.int32()), dictionary)

    @staticmethod
    def blank(count: int) -> _Text:
        """``count`` rows of ""."""
        return _Text(pd.Series([""], dtype="str"), np.zeros(count, dtype=np.int32))


def _text(raw: pd.DataFrame, field: str) -> _Text:
    """A source's text column (categorical, see SourceRows) with its values stripped."""
    if field not in raw:
        return _Text.blank(len(raw))
    column = raw[field]
    values = pd.Series(column.cat.categories, dtype="str").str.strip()
    return _Text(values, column.cat.codes.to_numpy())  # int8, int16 or int32


def _parse(
    rows: SourceRows,
    position: int,
    items: ItemRules,
    crosswalk: ItemCrosswalk,
    identity_rules: IdentityRules,
    namespace_of: dict[str, str],
) -> tuple[pd.DataFrame, dict[str, pa.DictionaryArray], pd.DataFrame]:
    """Typed rows with a provisional outcome, their text columns (see TEXT_COLUMNS), and the
    quarantined rows with their raw values."""
    raw = rows.frame
    source = rows.source
    count = len(raw)
    texts: dict[str, _Text] = {}

    def text(field: str) -> _Text:
        if field not in texts:
            texts[field] = _text(raw, field)
        return texts[field]

    item = text("item_id")
    item_ids = item.values.str.upper()
    if crosswalk.catalog_ids:
        item_ids = item_ids.map(lambda value: crosswalk.catalog_id(source.name, value))
    reason = np.full(count, UNDECIDED, dtype=np.int8)

    def flag(mask: Any, why: str) -> None:
        reason[(reason == UNDECIDED) & np.asarray(mask, dtype=bool)] = REASONS.index(why)

    malformed = text("malformed")
    flag(malformed.per_row(malformed.values != ""), "malformed_row")
    flag(item.per_row(item_ids == ""), "missing_item")
    non_product_ids = item_ids.isin(items.non_product_ids).to_numpy(copy=True)
    if items.non_product_pattern:
        non_product_ids |= item_ids.str.contains(items.non_product_pattern, regex=True).to_numpy()
    non_product = item.per_row(non_product_ids) & (reason == UNDECIDED)

    if "quantity" in raw:
        quantities = text("quantity")
        quantity = quantities.per_row(parse_numbers(quantities.values))
        flag(~np.isfinite(quantity) & ~non_product, "bad_quantity")
        flag((quantity == 0) & ~non_product, "zero_quantity")
        flag((np.abs(quantity) > MAX_QUANTITY) & ~non_product, "quantity_out_of_range")
    else:
        quantity = np.ones(count)
    if "unit_price" in raw:
        prices = text("unit_price")
        price = prices.per_row(parse_numbers(prices.values) * source.currency_rate)
        flag(~np.isfinite(price) & ~non_product, "bad_price")
        flag((price < 0) & ~non_product, "negative_price")
        flag((price > MAX_UNIT_PRICE) & ~non_product, "price_out_of_range")
    else:
        price = np.full(count, np.nan)
    if "timestamp" in raw:
        stamps = text("timestamp")
        parsed_stamps = parse_timestamps(stamps.values, source.timestamp_format, source.timezone)
        timestamp = stamps.per_row(parsed_stamps.to_numpy().astype("datetime64[us]"))
        flag(np.isnat(timestamp) & ~non_product, "bad_timestamp")
        latest = pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_TOLERANCE
        flag((timestamp > latest.to_datetime64()) & ~non_product, "future_timestamp")
    else:
        timestamp = np.full(count, np.datetime64("NaT"), dtype="datetime64[us]")

    order = text("order_id")
    is_cancellation = quantity < 0
    if "order_id" in raw and source.cancellation_prefix and source.kind != "events":
        is_cancellation |= order.per_row(order.values.str.startswith(source.cancellation_prefix))
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
            "detail": bad["malformed"].to_numpy() if "malformed" in bad else "",
        }
    )
    customer = text("customer_id")
    if source.kind == "events":
        ids, emails, phones = _key_aliases(customer.values, identity_rules, namespace_of)
        identifiers = {
            "raw_customer_id": _Text.blank(count).encoded(),
            "id_alias": customer.encoded(ids),
            "email_alias": customer.encoded(_prefixed(EMAIL, emails)),
            "phone_alias": customer.encoded(_prefixed(PHONE, phones)),
        }
        invalid_email = invalid_phone = np.zeros(count, dtype=bool)
    else:
        raw_ids = customer_ids(customer.values)
        email, phone = text("email"), text("phone")
        emails = _normalised(email.values, lambda value: normalise_email(value, identity_rules))
        phones = _normalised(phone.values, lambda value: normalise_phone(value, identity_rules))
        identifiers = {
            "raw_customer_id": customer.encoded(raw_ids),
            "id_alias": customer.encoded(_prefixed(source.customer_namespace, raw_ids)),
            "email_alias": email.encoded(_prefixed(EMAIL, emails)),
            "phone_alias": phone.encoded(_prefixed(PHONE, phones)),
        }
        invalid_email = email.per_row((emails == "") & (email.values != ""))
        invalid_phone = phone.per_row((phones == "") & (phone.values != ""))
    parsed = pd.DataFrame(
        {
            "source_position": np.full(count, position, dtype=np.int16),
            "trust": np.full(count, source.trust, dtype=np.float32),
            "invalid_email": invalid_email,
            "invalid_phone": invalid_phone,
            "quantity": quantity,
            "unit_price": price,
            "timestamp": timestamp,
            "is_cancellation": is_cancellation,
            "outcome": outcome,
            "reason": reason,
        }
    )
    encoded = {
        **identifiers,
        "item_id": item.encoded(item_ids),
        "order": order.encoded(),
        "description": text("description").encoded(),
        "country": text("country").encoded(),
    }
    return parsed, encoded, quarantine


def _prefixed(kind: str, values: pd.Series) -> pd.Series:
    """``<kind>:<value>`` aliases; "" stays "" (no identifier)."""
    return values.where(values == "", f"{kind}:" + values)


def _concat_parsed(
    frames: list[pd.DataFrame], texts: list[dict[str, pa.DictionaryArray]]
) -> tuple[pd.DataFrame, dict[str, pa.Array]]:
    """One frame, each text column as int32 codes into its sorted vocabulary (returned).
    Empties ``frames`` and ``texts`` column by column as it goes."""
    parsed = pd.DataFrame(
        {
            column: np.concatenate([frame.pop(column).to_numpy() for frame in frames])
            for column in list(frames[0].columns)
        },
        copy=False,
    )
    vocabulary: dict[str, pa.Array] = {}
    for column in TEXT_COLUMNS:
        parts = [text.pop(column) for text in texts]
        merged = pa.concat_arrays([part.dictionary for part in parts]).dictionary_encode()
        order = pc.array_sort_indices(merged.dictionary).to_numpy()
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        # Each source's dictionary entry -> its position in the sorted vocabulary.
        code_of = rank[merged.indices.to_numpy()]
        starts = np.cumsum([0, *(len(part.dictionary) for part in parts)])
        parsed[column] = np.concatenate(
            [
                code_of[start : start + len(part.dictionary)][part.indices.to_numpy()]
                for start, part in zip(starts, parts, strict=False)
            ]
        )
        vocabulary[column] = merged.dictionary.take(order)
    return parsed, vocabulary


def _blank_code(values: pa.Array) -> int:
    """The code of "" in a sorted vocabulary (-1 if absent)."""
    return 0 if len(values) and values[0].as_py() == "" else -1


def _strings(values: pa.Array) -> NDArray[np.object_]:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)


def customer_ids(raw: pd.Series) -> pd.Series:
    """Exports that went through a spreadsheet write ids as floats ("13085.0"); those are
    read as the integer id."""
    return raw.where(~raw.str.fullmatch(r"\d+\.0+"), raw.str.replace(r"\.0+$", "", regex=True))


def _key_aliases(
    keys: pd.Series, rules: IdentityRules, namespace_of: dict[str, str]
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Request keys (as the service's event log holds them) as id, email and phone aliases.
    A bare key is a canonical id: the shop's own id."""
    id_of: dict[str, str] = {}
    email_of: dict[str, str] = {}
    phone_of: dict[str, str] = {}
    for key in keys.unique():
        if not key:
            continue
        alias = training_alias(key, rules, namespace_of) or f"{PRIMARY_NAMESPACE}:{key}"
        kind, _, value = alias.partition(":")
        if kind == EMAIL:
            email_of[key] = value
        elif kind == PHONE:
            phone_of[key] = value
        else:
            id_of[key] = alias

    def column(mapping: dict[str, str]) -> pd.Series:
        if not mapping:
            return pd.Series("", index=keys.index, dtype="str")
        return keys.map(mapping).fillna("").astype("str")

    return column(id_of), column(email_of), column(phone_of)


NO_ERASURE_LIST = (
    "no erasure list configured ([identity] erasures): customers erased through the service "
    "come back in this bundle; point it at the service's RECSVC_EVENTS_DIR/erasures.jsonl"
)


def erasure_report(path: Path | None, rows_erased: int) -> ErasureReport:
    """The manifest's ``identity.erasures``; a ``warning`` when no list is configured."""
    return ErasureReport(
        list=None if path is None else str(path),
        list_present=path is not None and path.is_file(),
        rows_erased=rows_erased,
        warning=NO_ERASURE_LIST if path is None else None,
    )


def load_erasures(path: Path | None) -> set[str]:
    """Alias digests (hex) of every erased customer, from the service's erasure list."""
    if path is None or not path.is_file():
        return set()
    digests: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                digests.update(json.loads(line)[ALIAS_DIGESTS])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise SourceError(
                    f"{path}, line {number}: not an erasure record ({error})"
                ) from None
    return digests


def _erased_rows(
    parsed: pd.DataFrame,
    identifiers: dict[str, NDArray[np.object_]],
    aliases: dict[str, str],
    erased: set[str],
    key: IdentityKey,
) -> NDArray[np.bool_]:
    """Every row of every erased customer. ``aliases`` is the linking's alias -> customer
    (with ``<source>:<id>`` and ``id:<canonical>``); a customer is erased when any alias of
    theirs is listed, and a row is theirs when any identifier it carries is (a link refused
    between two customers leaves the row with both, and it goes)."""
    mask = np.zeros(len(parsed), dtype=bool)
    if not erased:
        return mask
    customers = {customer for alias, customer in aliases.items() if _erased(alias, erased, key)}
    if not customers:
        return mask
    for column in ("id_alias", "email_alias", "phone_alias"):
        theirs = [
            code
            for code, alias in enumerate(identifiers[column])
            if alias and aliases.get(alias) in customers
        ]
        mask |= np.isin(parsed[column].to_numpy(), theirs)
    return mask


def _erased(alias: str, erased: set[str], key: IdentityKey) -> bool:
    """Listed under the current secret or a retired one (records from before a rotation)."""
    return any(value in erased for value in key.all_hex(alias))


def _withhold_erased(quarantine: pd.DataFrame, erased: NDArray[np.bool_]) -> pd.DataFrame:
    """Quarantined rows of erased customers stay (they are counted) without their values:
    a raw row holds the customer's id, email and phone, maybe in any column."""
    if not erased.any():
        return quarantine
    assert len(erased) == len(quarantine), "one quarantine row per quarantined row, in order"
    kept = {"source", "file", "record", "reason"}
    for column in quarantine.columns:
        if column not in kept:
            quarantine[column] = quarantine[column].astype(object)
            quarantine.loc[erased, column] = ""
    quarantine.loc[erased, "detail"] = "erased customer: values withheld"
    return quarantine


def _normalised(values: pd.Series, normalise: Callable[[str], str | None]) -> pd.Series:
    """Apply ``normalise`` once per distinct value; "" where absent or invalid."""
    if not (values != "").any():
        return values
    distinct = {value: normalise(value) or "" for value in values.unique() if value}
    return values.map(distinct).fillna("").astype("str")


def parse_timestamps(values: pd.Series, fmt: str | None, timezone: str) -> pd.Series:
    """Naive UTC timestamps. Values without an offset are read in the source's time zone;
    an hour that does not exist or is ambiguous there (DST changes) does not parse."""
    if timezone == "UTC":
        parsed = pd.to_datetime(values, format=fmt or "ISO8601", errors="coerce", utc=True)
        return parsed.dt.tz_localize(None)
    has_offset = values.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if has_offset.any():
        aware = pd.to_datetime(
            values[has_offset], format=fmt or "ISO8601", errors="coerce", utc=True
        )
        result[has_offset] = aware.dt.tz_localize(None)
    naive = pd.to_datetime(values[~has_offset], format=fmt or "ISO8601", errors="coerce")
    local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    result[~has_offset] = local.dt.tz_convert("UTC").dt.tz_localize(None)
    return result


def parse_numbers(values: pd.Series) -> NDArray[np.float64]:
    """Parse decimal strings; anything unparseable (including "") becomes NaN."""
    try:  # fast path: every value parses
        parsed = pc.cast(pa.array(values, type=pa.string()), pa.float64())
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


def _mark_duplicates(
    parsed: pd.DataFrame, outcome: NDArray[np.int8], has_order: NDArray[np.bool_]
) -> None:
    # A line can only repeat another source's if its order id is in both: numbering the
    # lines of those orders alone is a fraction of the work.
    eligible = (outcome == UNDECIDED) & has_order
    eligible[eligible] = _shared_codes(
        parsed["order"].to_numpy()[eligible], parsed["source_position"].to_numpy()[eligible]
    )
    candidates = parsed.loc[eligible, ["source_position", *DEDUP_KEY]]
    if candidates.empty:
        return
    line = _line_ids(candidates[DEDUP_KEY])
    # The n-th copy of a line in one source matches the n-th copy in another source: the
    # first row (in source order) of each (line, n) is kept, later ones are duplicates.
    source = candidates["source_position"].to_numpy()
    occurrence = _occurrence(line * (int(source.max()) + 1) + source)
    copy = line * (int(occurrence.max()) + 1) + occurrence
    first = np.unique(copy, return_index=True)[1]
    repeated = np.ones(len(copy), dtype=bool)
    repeated[first] = False
    outcome[candidates.index.to_numpy()[repeated]] = DUPLICATE


def _shared_codes(codes: NDArray[np.int32], source: NDArray[np.int16]) -> NDArray[np.bool_]:
    """Rows whose code also occurs in another source."""
    sources_with = np.zeros(int(codes.max(initial=-1)) + 1, dtype=np.int16)
    for position in np.unique(source):
        sources_with += np.bincount(codes[source == position], minlength=len(sources_with)) > 0
    shared: NDArray[np.bool_] = sources_with[codes] > 1
    return shared


def _line_ids(keys: pd.DataFrame) -> NDArray[np.int64]:
    """One integer per distinct row of ``keys`` (missing values equal each other), numbered
    0, 1, 2, ... in order of first appearance."""
    identifiers: NDArray[np.int64] = pd.factorize(_mixed_radix(keys)[0])[0]
    return identifiers


def _mixed_radix(keys: pd.DataFrame) -> tuple[NDArray[np.int64], int]:
    """One integer per row of ``keys``, equal for equal rows, and a bound above them: the
    columns' codes as the digits of a mixed-radix number (renumbered on the way where it
    would pass 2^62)."""
    line = np.zeros(len(keys), dtype=np.int64)
    span = 1  # line < span
    for column in keys.columns:
        if column in TEXT_COLUMNS:  # already codes
            codes = keys[column].to_numpy().astype(np.int64)
            count = int(codes.max(initial=-1)) + 1
        else:
            codes, uniques = pd.factorize(keys[column], use_na_sentinel=False)
            count = len(uniques)
        if span * count >= 2**62:  # the number would overflow: renumber first
            line = pd.factorize(line)[0]
            span = int(line.max()) + 1
        line = line * count + codes
        span *= count
    return line, span


def _first_of_each(keys: pd.DataFrame) -> NDArray[np.int64]:
    """The position of the first row of each distinct row of ``keys``, ascending: what
    drop_duplicates keeps, without comparing every column of every row."""
    line, span = _mixed_radix(keys)
    if span > len(keys) + 1024:  # too sparse to index directly: number the rows
        line, span = pd.factorize(line)[0], len(keys)
    first = np.full(span, len(keys), dtype=np.int64)
    np.minimum.at(first, line, np.arange(len(keys)))
    return np.sort(first[first < len(keys)])


def _occurrence(group: NDArray[np.int64]) -> NDArray[np.int64]:
    """Each row's number among the earlier rows of its group: 0, 1, 2, ..."""
    order = np.argsort(group, kind="stable")
    ranks = np.arange(len(group))
    first_of_group = np.maximum.accumulate(np.where(run_starts(group[order]), ranks, 0))
    occurrence = np.empty(len(group), dtype=np.int64)
    occurrence[order] = ranks - first_of_group
    return occurrence


def _mark_repeated_events(
    parsed: pd.DataFrame,
    outcome: NDArray[np.int8],
    has_order: NDArray[np.bool_],
    event_logs: list[int],
) -> None:
    """In the service's event log an event id is unique, so a repeat (a log copied twice, a
    replay written again) is a duplicate, whatever its fields say."""
    if not event_logs:
        return
    candidates = parsed.loc[
        (outcome == UNDECIDED) & parsed["source_position"].isin(event_logs).to_numpy() & has_order,
        ["source_position", "order"],
    ]
    repeated = candidates.duplicated(keep="first")
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
