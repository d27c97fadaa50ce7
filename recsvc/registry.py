"""The model being served: the current verified bundle and the ranker built on it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from recsvc.bundle import Bundle, load_current
from recsvc.errors import BundleError
from recsvc.identity import IdentityRules
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

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def events_through(self) -> float:
        """Receipt time of the last reported event the bundle learned from (0: none)."""
        return float(self.bundle.manifest.get("events_through") or 0.0)


class ModelRegistry:
    """Holds the served model; a request takes one reference and uses it throughout."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.model: ServedModel | None = None
        self.last_error: str | None = None

    def load(self) -> bool:
        """Load the bundle ``current`` points at. On failure keep serving the previous one."""
        try:
            bundle = load_current(self.models_dir)
        except BundleError as error:
            self.last_error = str(error)
            log.error("bundle refused: %s", error)
            return False
        identity = bundle.manifest.get("identity", {})
        ranker = Ranker(
            bundle.arrays,
            IdentityRules.from_manifest(identity.get("rules", {})),
            identity.get("namespaces", []),
            TierTable.from_manifest(bundle.manifest.get("tiers")),
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
        )
        self.last_error = None
        log.info("serving bundle %s from %s", bundle.version, bundle.path)
        return True
