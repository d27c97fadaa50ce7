"""The model being served: the current verified bundle and the ranker built on it.

A new bundle is picked up without a restart: each worker process watches the ``current``
pointer (every ``reload_seconds``) and swaps in the new bundle once it has loaded and
verified it. A request takes one reference to the served model and uses it throughout, so no
response mixes two versions. A bundle that fails verification is refused, logged once, and
not tried again until the pointer moves; the previous one keeps serving.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from recsvc.bundle import Bundle, current_version, load_current
from recsvc.errors import BundleCorrupt, BundleError
from recsvc.identity import SECRET_VARIABLE, IdentityKey, IdentityRules
from recsvc.ranker import Ranker
from recsvc.tiers import TierTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    bundle: Bundle
    ranker: Ranker
    item_index: dict[str, int]  # item id -> catalog index
    # Item metadata as plain Python values, so responses need no numpy conversions.
    item_ids: list[str]
    titles: list[str]
    prices: list[float | None]
    item_categories: list[list[str]]  # names; items with the same categories share one list
    loaded_at: float = 0.0  # seconds since the epoch
    created: float = 0.0  # when the bundle was trained, seconds since the epoch

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def events_through(self) -> float:
        """Receipt time of the last reported event the bundle learned from (0: none)."""
        return float(self.bundle.manifest.get("events_through") or 0.0)


class ModelRegistry:
    """Holds the served model; a request takes one reference and uses it throughout."""

    def __init__(self, models_dir: Path, key: IdentityKey | None = None) -> None:
        """``key``: this deployment's secret; a bundle trained with another is refused.
        None: the development key."""
        self.models_dir = models_dir
        self.key = key or IdentityKey.development_key()
        self.model: ServedModel | None = None
        self.last_error: str | None = None
        self.refused: str | None = None  # the version refused last, not retried
        self.refusals = 0  # bundles refused since this process started
        self._watcher_pid: int | None = None

    def load(self) -> bool:
        """Load the bundle ``current`` points at. On failure keep serving the previous one."""
        try:
            bundle = load_current(self.models_dir)
            _check_key(bundle, self.key)
        except BundleError as error:
            self.last_error = str(error)
            self.refused = self._pointer()
            self.refusals += 1
            log.error(
                "bundle refused, still serving %s: %s",
                self.model.version if self.model else "nothing",
                error,
            )
            return False
        identity = bundle.manifest.get("identity", {})
        ranker = Ranker(
            bundle.arrays,
            IdentityRules.from_manifest(identity.get("rules", {})),
            identity.get("namespaces", []),
            TierTable.from_manifest(bundle.manifest.get("tiers")),
            self.key,
        )
        item_ids = [str(item) for item in bundle.arrays.item_ids.tolist()]
        prices = [None if math.isnan(price) else price for price in bundle.arrays.prices.tolist()]
        self.model = ServedModel(
            bundle=bundle,
            ranker=ranker,
            item_index={item: i for i, item in enumerate(item_ids)},
            item_ids=item_ids,
            titles=[str(title) for title in bundle.arrays.titles.tolist()],
            prices=prices,
            item_categories=_category_names(bundle),
            loaded_at=time.time(),
            created=_timestamp(bundle.manifest.get("created")),
        )
        self.last_error = None
        self.refused = None
        log.info("serving bundle %s from %s", bundle.version, bundle.path)
        return True

    def check(self) -> bool:
        """Load the bundle ``current`` names if it is new (and not already refused)."""
        pointer = self._pointer()
        if pointer is None or pointer == self.refused:
            return False
        if self.model is not None and pointer == self.model.version:
            return False
        return self.load()

    def watch(self, interval: float) -> None:
        """Check the pointer every ``interval`` seconds from a daemon thread of this process
        (idempotent; a forked worker starts its own)."""
        if interval <= 0 or self._watcher_pid == os.getpid():
            return
        self._watcher_pid = os.getpid()

        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.check()
                except Exception:  # the watcher must outlive any surprise
                    log.exception("bundle check failed")

        threading.Thread(target=loop, name="recsvc-bundle-watch", daemon=True).start()

    def _pointer(self) -> str | None:
        try:
            return current_version(self.models_dir)
        except BundleError:
            return None


def _check_key(bundle: Bundle, key: IdentityKey) -> None:
    """A bundle's alias digests only match the secret they were made with. A bundle that
    records no fingerprint (made by hand, as in tests) is taken as it is."""
    recorded = bundle.manifest.get("identity", {}).get("key_fingerprint")
    if recorded is not None and recorded != key.fingerprint:
        raise BundleCorrupt(
            f"{bundle.path}: trained with another {SECRET_VARIABLE} (key fingerprint "
            f"{str(recorded)[:8]}…, this service's is {key.fingerprint[:8]}…); retrain it with "
            "this deployment's secret"
        )


def _timestamp(text: object) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


def _category_names(bundle: Bundle) -> list[list[str]]:
    """Each item's category names, from its bit mask over the catalog's categories."""
    names = bundle.categories
    masks, item_mask = np.unique(bundle.arrays.item_categories, return_inverse=True)
    named = [[name for bit, name in enumerate(names) if mask >> bit & 1] for mask in masks.tolist()]
    return [named[position] for position in item_mask.tolist()]
