"""The CRM triggers feed: the bundle's triggers indexed once, merged with those fired since.

The feed is ordered by (fired_at, customer id, kind, reason), a trigger's key: the reason
tells apart two spend thresholds that one order crossed. The bundle's triggers are sorted into
that order once per served bundle, with each kind's positions in it, so a page costs the page:
a binary search to where it starts, then as many triggers as it holds (plus those of erased
customers it skips). Triggers fired by events since come from the store, oldest first, and are
merged in. A cursor is the key of the last trigger a page held, not an offset, so triggers
fired between two pages neither repeat nor push earlier ones onto the next page.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import operator
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import orjson
from numpy.typing import NDArray

from recsvc.bundle import BundleArrays
from recsvc.identity import CANONICAL, IdentityKey
from recsvc.policy import TRIGGER_KINDS
from recsvc.store import customer_key

KINDS = TRIGGER_KINDS  # sorted, so that a kind's code orders as its name does
MAX_CURSOR = 4096  # characters; a cursor holds one customer id


class Key(NamedTuple):
    """A trigger's place in the feed."""

    fired_at: float  # seconds since the epoch
    customer_id: str
    kind: str
    reason: str


# A trigger on its way into a page: the four fields of its Key, then fired_at in ISO 8601
# (None: not written yet) and its figures (a JSON object, parsed or, from the bundle, as an
# orjson.Fragment). A plain tuple: a page builds one per trigger it reads.
Trigger = tuple[float, str, str, str, str | None, Any]


_ORDER = operator.itemgetter(0, 1, 2, 3)  # a trigger's key as a plain tuple, to sort by


def _key(trigger: Trigger) -> Key:
    fired_at, customer, kind, reason = trigger[:4]
    return Key(float(fired_at), customer, kind, reason)


def as_json(trigger: Trigger) -> dict[str, Any]:
    """A trigger as GET /v1/triggers answers it."""
    fired_at, customer, kind, reason, moment, figures = trigger
    return {
        "customer_id": customer,
        "kind": kind,
        "fired_at": moment or datetime.fromtimestamp(fired_at, UTC).isoformat(),
        "reason": reason,
        "figures": figures,
    }


class BadCursor(ValueError):
    """A cursor this feed did not hand out."""


def encode_cursor(key: Key) -> str:
    text = orjson.dumps(list(key))
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> Key:
    if len(cursor) > MAX_CURSOR:
        raise BadCursor("too long")
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        at, customer, kind, reason = orjson.loads(text)
    except (binascii.Error, ValueError, TypeError):
        raise BadCursor("not a cursor") from None
    if (
        isinstance(at, bool)
        or not isinstance(at, int | float)
        or not math.isfinite(at)
        or not isinstance(customer, str)
        or kind not in KINDS
        or not isinstance(reason, str)
    ):
        raise BadCursor("not a cursor")
    return Key(float(at), customer, kind, reason)


def live_since(since: float, after: Key | None) -> float:
    """The ``since`` to ask the store with: triggers fired at the cursor's time are still
    wanted when they sort after it."""
    if after is None:
        return since
    return max(since, math.nextafter(after.fired_at, -math.inf))


class TriggerIndex:
    """The bundle's triggers in feed order, built once per served bundle."""

    def __init__(self, arrays: BundleArrays, key: IdentityKey) -> None:
        """``key`` makes the customers' store keys, to leave erased ones out. Raises
        ValueError when the bundle's triggers cannot be served (an unknown kind,
        figures that are not a JSON object)."""
        names = np.array(KINDS)
        codes = np.searchsorted(names, arrays.trigger_kinds).astype(np.int8)
        known = names[np.minimum(codes, len(KINDS) - 1)] == arrays.trigger_kinds
        if not known.all():
            position = int(np.flatnonzero(~known)[0])
            raise ValueError(f"trigger_kinds[{position}] is not one of {', '.join(KINDS)}")
        customers = arrays.customer_ids[arrays.trigger_rows]
        order = np.lexsort((arrays.trigger_reasons, codes, customers, arrays.trigger_at))
        # A key names one trigger: of triggers with the same key, the first is kept (a cursor
        # could not tell them apart).
        sorted_keys = (arrays.trigger_at, arrays.trigger_rows, codes, arrays.trigger_reasons)
        repeated = np.ones(max(len(order) - 1, 0), dtype=bool)
        for column in sorted_keys:
            ordered = column[order]
            repeated &= ordered[1:] == ordered[:-1]
        order = order[np.concatenate([[True], ~repeated])] if len(order) else order
        self._customer_ids = arrays.customer_ids
        self._key = key
        self._at = arrays.trigger_at[order]
        self._rows = arrays.trigger_rows[order]
        self._codes = codes[order]
        self._source = order  # sorted position -> position in the bundle's trigger arrays
        self._by_kind = tuple(np.flatnonzero(self._codes == code) for code in range(len(KINDS)))
        self._reasons = arrays.trigger_reasons
        self._figures = arrays.trigger_figures
        self._normalised = _check_figures(arrays.trigger_figures)

    def __len__(self) -> int:
        return len(self._at)

    def page(
        self,
        live: Iterable[str | bytes],
        erased: Collection[str],
        kinds: Collection[str],
        since: float,
        after: Key | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], Key | None]:
        """Up to ``limit`` triggers of ``kinds`` fired after ``since`` that sort after the
        cursor ``after``, from the bundle and from ``live`` (the store's JSON records, oldest
        first), leaving out ``erased`` customer keys; and the cursor of the next page (None:
        this is the last)."""
        want = limit + 1  # one more than the page tells whether there is a next one
        found = self._from_bundle(self._start(since, after), kinds, erased, want)
        fired = _from_live(live, kinds, erased, since, after, want)
        if fired:
            merged = sorted(found + fired, key=_ORDER)
            found = [
                t for i, t in enumerate(merged) if i == 0 or _ORDER(merged[i - 1]) != _ORDER(t)
            ]
            found = found[:want]
        more = len(found) > limit
        page = [as_json(trigger) for trigger in found[:limit]]
        return page, _key(found[limit - 1]) if more else None

    def _start(self, since: float, after: Key | None) -> int:
        """The first sorted position after both ``since`` and the cursor."""
        start = self._fired_by(since)
        if after is None:
            return start
        high = self._fired_by(after.fired_at)
        whole = after.fired_at == math.floor(after.fired_at)  # else none fired at it here
        low = self._fired_by(after.fired_at - 1) if whole else high
        while low < high:  # among triggers fired at the cursor's second
            middle = (low + high) // 2
            if self._key_at(middle) <= after:
                low = middle + 1
            else:
                high = middle
        return max(start, low)

    def _fired_by(self, moment: float) -> int:
        """How many triggers fired at or before ``moment``. Searched with an integer: with a
        float numpy would convert the whole array first."""
        second = math.floor(min(max(moment, -(2.0**62)), 2.0**62))
        return int(np.searchsorted(self._at, np.int64(second), side="right"))

    def _key_at(self, position: int) -> Key:
        source = self._source[position]
        return Key(
            int(self._at[position]),
            str(self._customer_ids[self._rows[position]]),
            KINDS[self._codes[position]],
            str(self._reasons[source]),
        )

    def _positions(self, start: int, codes: list[int], count: int) -> NDArray[np.int64]:
        """The next ``count`` sorted positions from ``start`` holding one of ``codes``."""
        if len(codes) == len(KINDS):
            return np.arange(start, min(start + count, len(self._at)), dtype=np.int64)
        parts = []
        for code in codes:
            of_kind = self._by_kind[code]
            first = int(np.searchsorted(of_kind, start))
            parts.append(of_kind[first : first + count])
        return np.sort(np.concatenate(parts))[:count]

    def _from_bundle(
        self, start: int, kinds: Collection[str], erased: Collection[str], want: int
    ) -> list[Trigger]:
        codes = [code for code, kind in enumerate(KINDS) if kind in kinds]
        found: list[Trigger] = []
        count = want
        while len(found) < want:
            positions = self._positions(start, codes, count)
            if not len(positions):
                break
            start = int(positions[-1]) + 1
            at = self._at[positions]
            sources = self._source[positions]
            # Whole batches through numpy: a page is a few slices, not a loop of lookups.
            moments = np.datetime_as_string(at.astype("datetime64[s]"), unit="s")
            for fired_at, moment, customer, code, source, reason, figures in zip(
                at.tolist(),
                moments.tolist(),
                self._customer_ids[self._rows[positions]].tolist(),
                self._codes[positions].tolist(),
                sources.tolist(),
                self._reasons[sources].tolist(),
                self._figures[sources].tolist(),
                strict=True,
            ):
                if erased and customer_key(self._key, f"{CANONICAL}:{customer}") in erased:
                    continue
                found.append(
                    (
                        fired_at,
                        customer,
                        KINDS[code],
                        reason,
                        moment + "+00:00",
                        orjson.Fragment(self._normalised.get(source) or figures),
                    )
                )
                if len(found) == want:
                    break
            count *= 2  # the customers of the last batch were erased: look further at once
        return found


def _from_live(
    records: Iterable[str | bytes],
    kinds: Collection[str],
    erased: Collection[str],
    since: float,
    after: Key | None,
    want: int,
) -> list[Trigger]:
    """The first ``want`` of the store's triggers in feed order, one per key. They come
    oldest first, so reading stops after the first ``want`` and any fired at the same time as
    the last."""
    found: list[Trigger] = []
    seen: set[tuple[float, str, str, str]] = set()
    last: float | None = None
    for text in records:
        record = orjson.loads(text)
        at = float(record["fired_at"])
        if last is not None and at > last:
            break
        kind = record["kind"]
        if kind not in kinds or at <= since or record["store_key"] in erased:
            continue
        key = (at, record["customer_id"], kind, record["reason"])
        if (after is not None and key <= after) or key in seen:
            continue
        seen.add(key)
        found.append((*key, None, record["figures"]))
        if len(found) == want:
            last = at
    found.sort(key=_ORDER)
    return found[:want]


def _check_figures(texts: NDArray[np.str_]) -> dict[int, bytes]:
    """Check that every trigger's figures are a JSON object. Returns the few that are not
    strict JSON (the trainer's encoder writes NaN as ``NaN``) re-encoded (NaN as null), by
    position; the rest are served as they are."""
    normalised: dict[int, bytes] = {}
    for position, text in enumerate(texts.tolist()):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"trigger_figures[{position}] is not JSON") from None
            normalised[position] = orjson.dumps(value)
        if not isinstance(value, dict):
            raise ValueError(f"trigger_figures[{position}] is not a JSON object")
    return normalised
