"""Stitching anonymous sessions into the customers who signed in from them.

An event log record whose ``customer`` is a session key (``session:<id>``, what the shop calls
a visitor before they sign in) belongs to the customer that some record links the session
to: a ``login`` (``customer`` = the signed-in key, ``session`` = the session key) or any other
record carrying both keys (a purchase made after signing in, say). Its customer key is
rewritten to that customer's, here and nowhere else, before the merge links and decides rows;
from there on the row is the customer's in every way (history, owned items, erasure).

- A session linked to two customers (a shared computer) goes to the latest link: the one
  received last (``received_at``; ties by source, file and record order).
- A session whose own alias is on the erasure list is never stitched: its rows stay under the
  session key and the merge erases them (``training.merge``).
- A session never linked stays anonymous: the merge counts its purchases as ``anonymous``
  (best-sellers, nobody's history) and its interactions as ``anonymous``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsvc.identity import is_session as is_session  # re-exported for the merge
from recsvc.logrecords import RECEIVED_AT, SESSION
from training.sources import SourceRows

log = logging.getLogger(__name__)
CUSTOMER = "customer_id"  # the canonical field the event log's customer key is read into


@dataclass(frozen=True)
class Stitched:
    """What stitching did: the sessions linked to a customer, and the records rewritten."""

    sessions: int
    records: int


def stitch_sessions(sources: list[SourceRows], erased: Callable[[str], bool]) -> Stitched:
    """Rewrite, in every event log source (both frames, in place), the customer key of each
    record made under a linked session to the key of the customer it is linked to.
    ``erased(session key)``: whether the session's own alias is on the erasure list."""
    frames = [
        (position, frame)
        for position, rows in enumerate(sources)
        if rows.source.kind == "events"
        for frame in (rows.frame, rows.interactions)
        if frame is not None and len(frame)
    ]
    customer_of = _latest_links(frames, erased)
    if not customer_of:
        return Stitched(0, 0)
    records = sum(rewrite_sessions(frame, customer_of) for _, frame in frames)
    log.info("stitched %d sessions into customers: %d records", len(customer_of), records)
    return Stitched(len(customer_of), records)


def rewrite_sessions(frame: pd.DataFrame, customer_of: dict[str, str]) -> int:
    """In ``frame`` (an event log's records), the customer key of each record made under a
    session in ``customer_of`` rewritten to that session's customer's; how many were."""
    column = frame[CUSTOMER]
    keys = pd.Series(column.cat.categories, dtype="str").str.strip()
    linked = keys.map(customer_of)
    if not linked.notna().any():
        return 0
    records = int(np.isin(column.cat.codes.to_numpy(), np.flatnonzero(linked.notna())).sum())
    renamed = linked.fillna(pd.Series(column.cat.categories, dtype="str"))
    codes, categories = pd.factorize(renamed)
    old = column.cat.codes.to_numpy()
    frame[CUSTOMER] = pd.Categorical.from_codes(
        np.where(old >= 0, codes[np.maximum(old, 0)], -1), categories=categories
    )
    return records


def session_links(frame: pd.DataFrame, position: int) -> pd.DataFrame | None:
    """The links of ``frame`` (an event log's records; ``position``: its source's): each
    record carrying both a session key and a customer's key, as (session, customer,
    received, source, file, record); None for none."""
    session = frame[SESSION].astype("str").str.strip()
    customer = frame[CUSTOMER].astype("str").str.strip()
    linking = (session != "") & (customer != "") & ~customer.map(is_session)
    if not linking.any():
        return None
    return pd.DataFrame(
        {
            "session": session[linking],
            "customer": customer[linking],
            "received": frame.loc[linking, RECEIVED_AT],
            "source": position,
            "file": frame.loc[linking, "file"],
            "record": frame.loc[linking, "record"],
        }
    )


# Which of a session's links is the latest: the last in this order. Spark picks it by the
# same columns (``training.spark_events``).
LINK_ORDER = ["received", "source", "file", "record"]


def _latest_links(
    frames: list[tuple[int, pd.DataFrame]], erased: Callable[[str], bool]
) -> dict[str, str]:
    """Session key -> the customer key of its latest link (frames: with their source's
    position)."""
    links = [
        found for position, frame in frames if (found := session_links(frame, position)) is not None
    ]
    if not links:
        return {}
    ordered = pd.concat(links, ignore_index=True).sort_values(LINK_ORDER, kind="stable")
    latest = ordered.drop_duplicates("session", keep="last")
    return {
        session: customer
        for session, customer in zip(latest["session"], latest["customer"], strict=True)
        if not erased(session)
    }
