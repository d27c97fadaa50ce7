"""Offline evaluation "as served": a time-based holdout ranked through the service's ranker.

Protocol: train on every event before the cutoff; the test set is, for each customer the model
knows at the cutoff, the items they bought from the cutoff on that they did not own before it
(in the merged history or in any one source). The full catalog is ranked with owned items
excluded, through ``recsvc.ranker`` exactly as the service does. Events without a timestamp
cannot be placed on either side of the cutoff and are left out (counted in the protocol).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recsvc.policy import TierTable
from recsvc.ranker import Ranker
from training.baskets import basket_report
from training.config import EngineConfig, ModelParams, TrainConfig
from training.dataset import TrainingData
from training.errors import TrainingError
from training.merge import MergedHistory
from training.metrics import mean_metrics, metrics_at_k
from training.pipeline import merged_history
from training.progress import Progress
from training.recommenders import (
    BestSellers,
    Bpr,
    History,
    ItemItemAlone,
    ItemKnn,
    PlainAls,
    Recommender,
    ServedModel,
)
from training.tiers import TierConfig

# Customers by how many distinct items they owned at the cutoff.
HISTORY_GROUPS = (("cold", 1, 5), ("light", 6, 30), ("heavy", 31, math.inf))
# The brief's reference "plain ALS": 64 factors, BM25 weights, 90-day half-life decay.
PLAIN_ALS = ModelParams(factors=64, regularization=0.05, half_life_days=90.0, trend_weight=0.0)


def compared_models(
    params: ModelParams, engine: EngineConfig | None = None
) -> dict[str, Recommender]:
    """The served model (its ALS fitted by ``engine``, as ``train`` fits it) and the baselines
    it is compared with, unfitted, in report order."""
    return {
        "recsvc": ServedModel(params, engine=engine),
        "recsvc_no_policy": ServedModel(params, policy=False, engine=engine),
        "popular": BestSellers(),
        "itemknn": ItemKnn(),
        "item_item": ItemItemAlone(params),
        "als": PlainAls(msgspec.structs.replace(PLAIN_ALS, seed=params.seed)),
        "bpr": Bpr(params),
    }


MODEL_KEYS = tuple(compared_models(ModelParams()))


@dataclass(frozen=True)
class Holdout:
    train: pd.DataFrame
    test: pd.DataFrame
    undated: int
    interactions: pd.DataFrame | None = None  # those before the cutoff, which train too


def split_at(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    end: pd.Timestamp | None,
    interactions: pd.DataFrame | None = None,
) -> Holdout:
    """Events (and ``interactions``) before ``cutoff`` train; purchases in [cutoff, end) are
    the test window."""
    stamps = events["timestamp"]
    in_window = stamps >= cutoff
    if end is not None:
        in_window &= stamps < end
    bought = (events["outcome"] == "used") & (events["quantity"] > 0)
    holdout = Holdout(
        train=events[stamps < cutoff],
        test=events[in_window & bought],
        undated=int(stamps.isna().sum()),
        interactions=(
            None if interactions is None else interactions[interactions["timestamp"] < cutoff]
        ),
    )
    window = f"[{cutoff.date()}, {'end' if end is None else end.date()})"
    if not (holdout.train["quantity"] > 0).any():
        raise TrainingError(f"no purchases before {cutoff.date()} to train on")
    if holdout.test.empty:
        raise TrainingError(f"no purchases in the test window {window}")
    return holdout


def relevant_items(data: TrainingData, test: pd.DataFrame) -> dict[int, set[str]]:
    """Customer row -> items bought in the test window that the customer did not own."""
    rows = pd.Index(data.customer_ids).get_indexer(pd.Index(test["customer_id"]))
    bought: dict[int, set[str]] = {}
    for row, item in zip(rows.tolist(), test["item_id"].tolist(), strict=True):
        if row >= 0:
            bought.setdefault(row, set()).add(str(item))
    relevant = {row: items - _owned_ids(data, row) for row, items in bought.items()}
    return {row: items for row, items in relevant.items() if items}


def score_model(
    model: Recommender,
    data: TrainingData,
    relevant: dict[int, set[str]],
    k: int,
    tier_names: list[str] | None = None,
    tier_of: NDArray[np.intp] | None = None,
) -> dict[str, Any]:
    """``model``'s (fitted on ``data``) mean metrics over test customers, owned-item violations,
    coverage, per history group and (given ``tier_of``, each customer row's tier) per tier."""
    per_customer: list[dict[str, float]] = []
    history: list[int] = []
    shown: set[str] = set()
    violations = 0
    for row, items in relevant.items():
        recommended = [str(data.item_ids[item]) for item in model.recommend(row, k)]
        violations += len(set(recommended) & _owned_ids(data, row))
        shown.update(recommended)
        per_customer.append(metrics_at_k(recommended, items, k))
        history.append(int(data.owned.indptr[row + 1] - data.owned.indptr[row]))
    report: dict[str, Any] = mean_metrics(per_customer)
    report["owned_violations"] = violations
    report[f"coverage@{k}"] = len(shown) / len(data.item_ids)
    report["test_customers"] = len(per_customer)
    with_history = list(zip(per_customer, history, strict=True))
    report["by_history"] = {
        name: {
            **mean_metrics([m for m, h in with_history if lo <= h <= hi]),
            "test_customers": sum(lo <= h <= hi for h in history),
        }
        for name, lo, hi in HISTORY_GROUPS
    }
    if tier_names is not None and tier_of is not None:
        tiers = [int(tier_of[row]) for row in relevant]
        report["by_tier"] = {
            name: {
                **mean_metrics([m for m, t in zip(per_customer, tiers, strict=True) if t == index]),
                "test_customers": tiers.count(index),
            }
            for index, name in enumerate(tier_names)
        }
    return report


def evaluate(
    config: TrainConfig,
    cutoff: pd.Timestamp,
    k: int = 10,
    end: pd.Timestamp | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    merged = merged_history(config, progress)
    return evaluate_merged(
        merged, config.model, cutoff, k, end, progress, config.tiers, config.engine
    )


def evaluate_merged(
    merged: MergedHistory,
    params: ModelParams,
    cutoff: pd.Timestamp,
    k: int = 10,
    end: pd.Timestamp | None = None,
    progress: Progress | None = None,
    tier_config: TierConfig | None = None,
    engine: EngineConfig | None = None,
) -> dict[str, Any]:
    holdout = split_at(merged.events, cutoff, end, merged.interactions)
    history = History.build(
        holdout.train,
        params,
        merged.item_groups,
        tier_config or TierConfig(),
        holdout.interactions,
    )
    data, crm = history.data, history.crm
    assert crm is not None  # built with a tier config
    relevant = relevant_items(data, holdout.test)
    tiers = TierTable.of(crm.policy)
    tier_of = tiers.indices(crm.arrays["window_spend"])
    tier_names = tiers.names
    report: dict[str, Any] = {
        "protocol": {
            "cutoff": cutoff.isoformat(),
            "end": None if end is None else end.isoformat(),
            "k": k,
            "train_events": len(holdout.train),
            "test_purchases": len(holdout.test),
            "undated_events_left_out": holdout.undated,
            "customers_at_cutoff": len(data.customer_ids),
            "catalog_items": len(data.item_ids),
            "test_customers": len(relevant),
            "recsvc_parameters": msgspec.to_builtins(params),
            "tiers": msgspec.json.decode(msgspec.json.encode(crm.policy)),  # as JSON has it
        }
    }
    progress = progress or Progress.silent()
    models = compared_models(params, engine)
    for name, model in models.items():
        with progress.step(f"fitting and scoring {name}"):
            model.fit(history)
            report[name] = score_model(model, data, relevant, k, tier_names, tier_of)
    served = models["recsvc"]
    assert isinstance(served, ServedModel)
    lists = {row: served.recommend(row, k) for row in relevant}
    report["recsvc"]["reasons_coverage"] = reasons_coverage(served.ranker, lists)
    with progress.step("scoring similar items and carts on test-window orders"):
        report["baskets"] = basket_report(
            served.ranker, holdout.train, holdout.test, k, params.seed
        )
    return report


def reasons_coverage(ranker: Ranker, lists: Mapping[int, list[int]]) -> float:
    """The share of the items listed to known customers (customer row -> item indices)
    whose reason is ``bought_with``: one of their purchases adds to the item's item-item
    score, found as the service finds it (``recsvc.reasons.personal``)."""
    listed = explained = 0
    for row, items in lists.items():
        found = ranker.contributors(row, items)
        listed += len(found)
        explained += sum(position >= 0 for position in found)
    return explained / listed if listed else 0.0


def _owned_ids(data: TrainingData, row: int) -> set[str]:
    owned = data.owned.indices[data.owned.indptr[row] : data.owned.indptr[row + 1]]
    return {str(item) for item in data.item_ids[owned]}
