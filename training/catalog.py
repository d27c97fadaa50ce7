"""Items the bundle must never recommend: ``[items] discontinued`` and the items the service's
catalog log last marked ``available: false`` (recsvc.catalog). They stay in the history (what
customers bought, what they own); they are only hidden, in every tier, by giving them a
lowest tier above the highest (the ranker's exclusive-items mechanism)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from recsvc.logrecords import catalog_state, read_catalog_logs
from training.config import ItemRules


def unavailable_items(rules: ItemRules) -> set[str]:
    withdrawn = {item.strip().upper() for item in rules.discontinued}
    if rules.catalog_log is not None and rules.catalog_log.is_dir():
        for item, fields in catalog_state(read_catalog_logs(rules.catalog_log)).items():
            if fields.get("available") is False:
                withdrawn.add(item)
            elif fields.get("available") is True and item not in rules.discontinued:
                withdrawn.discard(item)
    return withdrawn


def withdraw(
    min_tier: NDArray[np.int8], item_ids: NDArray[np.str_], unavailable: set[str], n_tiers: int
) -> NDArray[np.int8]:
    """``min_tier`` with every unavailable item out of reach of all ``n_tiers`` tiers."""
    hidden = np.isin(item_ids.astype(str), sorted(unavailable))
    withdrawn: NDArray[np.int8] = np.where(hidden, np.int8(n_tiers), min_tier).astype(np.int8)
    return withdrawn
