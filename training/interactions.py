"""Interactions (views, cart adds, clicks) as weaker implicit feedback, and where each went.

An event log's records of kinds other than purchase and return are read beside the purchases
(``training.sources``), their sessions stitched (``training.sessions``), and their customers
resolved by the merge's linking (``training.merge``). Each gets exactly one outcome, decided in
this order:

1. ``invalid``: a record with a list or object for a value, or a timestamp that does not
   parse or is more than a day in the future.
2. ``erased``: its customer (after stitching) is on the erasure list, or its session is.
3. ``duplicate``: its event id was already read from the same source.
4. ``not_feedback``: a kind that never trains (login, email_open, unsubscribe, cart_remove)
   or one without an item (an email_click that names none).
5. ``anonymous``: a session never stitched into a customer.
6. ``unknown_customer``: its customer has no row in the model (bought nothing it holds).
7. ``unknown_item``: its item is not in the model (never sold, or not a product).
8. ``unweighted``: its kind's weight in ``[model.weights]`` is 0 (the default).
9. ``used``: it adds weight x decay x source trust to its customer x item cell of the
   matrix ALS and the item-item model learn from (``TrainingData.feedback``).

Steps 1-5 are the merge's (``merged_outcomes``), 6-9 the dataset's (``weigh``). Owned items
(``TrainingData.held``/``owned``, the bundle's ``owned_*`` arrays) come from purchases only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pandas as pd
import scipy.sparse as sp
from msgspec import Meta, Struct
from numpy.typing import NDArray

from recsvc.schemas import EVENT_KINDS, PURCHASE_KINDS

Weight = Annotated[float, Meta(ge=0.0, le=10.0)]


class InteractionWeights(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[model.weights]``: how much one interaction of each kind (from an event log source)
    counts towards a customer x item cell, against 1 for a purchase line, before the time
    decay. 0 (every default) leaves the kind out: purchase-only data trains as without them.
    Interactions never make an item owned."""

    view: Weight = 0.0
    cart_add: Weight = 0.0
    email_click: Weight = 0.0  # only a click that names an item
    rec_click: Weight = 0.0

    def of(self, kind: str) -> float:
        """The weight of ``kind``; 0 for a kind that is never feedback (login, cart_remove...)."""
        return float(getattr(self, kind)) if kind in self.__struct_fields__ else 0.0


assert set(InteractionWeights.__struct_fields__) <= set(EVENT_KINDS) - PURCHASE_KINDS


OUTCOMES = (
    "used",
    "unweighted",
    "unknown_item",
    "unknown_customer",
    "anonymous",
    "not_feedback",
    "duplicate",
    "erased",
    "invalid",
)
(
    USED,
    UNWEIGHTED,
    UNKNOWN_ITEM,
    UNKNOWN_CUSTOMER,
    ANONYMOUS,
    NOT_FEEDBACK,
    DUPLICATE,
    ERASED,
    INVALID,
) = range(len(OUTCOMES))
UNDECIDED = -1  # left by the merge for the dataset to decide
FEEDBACK_KINDS = frozenset(InteractionWeights.__struct_fields__)
# MergedHistory.interactions: one row per interaction record read.
COLUMNS = ["source", "kind", "customer_id", "item_id", "timestamp", "trust", "outcome"]


def merged_outcomes(
    kind: NDArray[np.object_],
    invalid: NDArray[np.bool_],
    erased: NDArray[np.bool_],
    duplicate: NDArray[np.bool_],
    has_item: NDArray[np.bool_],
    session: NDArray[np.bool_],
    customer_known: NDArray[np.bool_],
) -> NDArray[np.int8]:
    """Steps 1-5 (and 6 for a key that names nobody at all), per record; ``UNDECIDED`` for
    the records of known customers. ``session``: the record's customer is a session key
    still (never stitched)."""
    outcome = np.full(len(kind), UNDECIDED, dtype=np.int8)

    def decide(mask: NDArray[np.bool_], value: int) -> None:
        outcome[(outcome == UNDECIDED) & mask] = value

    decide(invalid, INVALID)
    decide(erased, ERASED)
    decide(duplicate, DUPLICATE)
    decide(~np.isin(kind, sorted(FEEDBACK_KINDS)) | ~has_item, NOT_FEEDBACK)
    decide(session, ANONYMOUS)
    decide(~customer_known, UNKNOWN_CUSTOMER)
    return outcome


@dataclass(frozen=True)
class Weighed:
    """``cells``: customers x items, the used records' weights summed (None: none used);
    ``outcome``: every record's final outcome (a code of ``OUTCOMES``)."""

    cells: sp.csr_matrix | None
    outcome: NDArray[np.int8]


def weigh(
    interactions: pd.DataFrame,
    customer_ids: pd.Index,
    item_ids: pd.Index,
    weights: InteractionWeights,
    decay: NDArray[np.float64],
) -> Weighed:
    """Steps 6-9 for the records the merge left undecided. ``decay``: each record's time
    decay, as the purchases'."""
    outcome = interactions["outcome"].to_numpy().astype(np.int8, copy=True)
    if not len(outcome):
        return Weighed(None, outcome)
    open_ = outcome == UNDECIDED
    rows = customer_ids.get_indexer(pd.Index(interactions["customer_id"].astype("str")))
    items = item_ids.get_indexer(pd.Index(interactions["item_id"].astype("str")))
    kinds = interactions["kind"].astype("str")
    weight = kinds.map({kind: weights.of(kind) for kind in kinds.unique()}).to_numpy(np.float64)
    outcome[open_ & (rows < 0)] = UNKNOWN_CUSTOMER
    open_ &= rows >= 0
    outcome[open_ & (items < 0)] = UNKNOWN_ITEM
    open_ &= items >= 0
    outcome[open_ & (weight <= 0)] = UNWEIGHTED
    open_ &= weight > 0
    outcome[open_] = USED
    if not open_.any():
        return Weighed(None, outcome)
    value = weight * decay * interactions["trust"].to_numpy(np.float64)
    cells = sp.csr_matrix(
        (value[open_].astype(np.float32), (rows[open_], items[open_])),
        shape=(len(customer_ids), len(item_ids)),
    )
    cells.sum_duplicates()
    cells.sort_indices()
    return Weighed(cells, outcome)


def records_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """``parts`` (each with ``COLUMNS``) as one frame, text as categoricals."""
    empty = pd.DataFrame(
        {
            "source": pd.Series([], dtype="str"),
            "kind": pd.Series([], dtype="str"),
            "customer_id": pd.Series([], dtype="str"),
            "item_id": pd.Series([], dtype="str"),
            "timestamp": np.zeros(0, dtype="datetime64[us]"),
            "trust": np.zeros(0, dtype=np.float32),
            "outcome": np.zeros(0, dtype=np.int8),
        }
    )
    frame = pd.concat([empty, *parts], ignore_index=True) if parts else empty
    for column in ("source", "kind", "customer_id", "item_id"):
        frame[column] = frame[column].astype("str").astype("category")
    return frame[COLUMNS]


def accounting(
    interactions: pd.DataFrame, outcome: NDArray[np.int8]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per source, per kind: ``read`` and the count of each outcome (they add up to it)."""
    return accounting_of(outcome_counts(interactions, outcome))


def outcome_counts(
    interactions: pd.DataFrame, outcome: NDArray[np.int8]
) -> list[tuple[str, str, int, int]]:
    """(source, kind, outcome, records) of each outcome that some records have."""
    assert (outcome >= 0).all(), "every record decided (weigh)"
    counts = (
        pd.DataFrame(
            {
                "source": interactions["source"].astype("str").to_numpy(),
                "kind": interactions["kind"].astype("str").to_numpy(),
                "outcome": outcome,
            }
        )
        .groupby(["source", "kind", "outcome"])
        .size()
    )
    return [
        (str(source), str(kind), int(code), int(count))
        for (source, kind, code), count in zip(counts.index.tolist(), counts.tolist(), strict=True)
    ]


def accounting_of(
    counts: Iterable[tuple[str, str, int, int]],
) -> dict[str, dict[str, dict[str, int]]]:
    """``accounting`` of ``outcome_counts`` (from one place, or summed from several)."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for source, kind, code, count in counts:
        per_kind = found.setdefault(source, {}).setdefault(
            kind, {"read": 0, **dict.fromkeys(OUTCOMES, 0)}
        )
        per_kind["read"] += count
        per_kind[OUTCOMES[code]] += count
    return {source: dict(sorted(kinds.items())) for source, kinds in sorted(found.items())}
