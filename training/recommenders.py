"""The models the evaluation compares, behind one contract: fit on a history, list one customer.

Every model ranks the items of ``history.data`` (the dataset the served model trains on) by
index, so one scoring loop serves them all. ``tests/test_recommenders.py`` runs one suite
against each: a known answer, owned items never shown, the same lists from the same seed, lists
longer than the catalog and a customer the model has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.policy import TierTable
from recsvc.ranker import Ranker, top_n
from training.config import EngineConfig, ModelParams
from training.dataset import TrainingData, build_dataset
from training.fit import Factors, fit_als, fit_bpr, fit_factors, fit_item_knn
from training.itemitem import Neighbours, fit_ease, fit_neighbours, item_item_kind
from training.pipeline import bundle_arrays, served_arrays
from training.tiers import Crm, CustomerLines, TierConfig, build_crm

T = TypeVar("T")


@dataclass(frozen=True)
class History:
    """What a model is fitted on: the merged rows (see ``training.merge.MergedHistory``), the
    dataset built from them with the served model's half-lives, the catalog's edition groups,
    and the customers' tiers (None: every customer in the first tier, no candidate lists)."""

    events: pd.DataFrame
    data: TrainingData
    item_groups: dict[str, str]
    crm: Crm | None = None

    @classmethod
    def build(
        cls,
        events: pd.DataFrame,
        params: ModelParams,
        item_groups: dict[str, str],
        tiers: TierConfig | None = None,
        interactions: pd.DataFrame | None = None,
    ) -> History:
        """The dataset from ``events`` (and ``interactions``, weighted by ``params.weights``)
        and, given ``tiers``, each customer's tier in it."""
        data = build_dataset(
            events,
            params.half_life_days,
            params.trend_half_life_days,
            item_groups,
            interactions,
            params.weights,
        )
        if tiers is None:
            return cls(events, data, item_groups)
        crm = build_crm(
            CustomerLines.of(events, data.customer_ids),
            len(data.customer_ids),
            data.item_ids,
            data.prices,
            data.as_of,
            tiers,
        )
        return cls(events, data, item_groups, crm)


class Recommender(Protocol):
    """A model fitted on a history, then asked for one customer's list.

    - ``fit`` is deterministic: the same history and parameters (seed included) give the
      same lists.
    - ``recommend(row, n)`` lists at most ``n`` distinct item indices of ``history.data``,
      best first, none that the customer owned in the history (editions included), and every
      item it may show when ``n`` exceeds them. ``row`` None is a customer the model has
      never seen: they get the best-sellers, as the service serves them.
    """

    def fit(self, history: History) -> None: ...

    def recommend(self, row: int | None, n: int) -> list[int]: ...


class ServedModel:
    """What ``train`` ships: ALS and the item-item model (on ``TrainingData.feedback``: the
    purchases, and the interactions ``params.weights`` weigh) and the trending prior, ranked by the
    service's ``Ranker`` as the service ranks (with ``history.crm``: each customer's tier and
    candidate list), under the tier policy unless ``policy`` is false. ALS is fitted by the
    engine ``engine`` names (``training.fit.fit_factors``)."""

    def __init__(
        self, params: ModelParams, policy: bool = True, engine: EngineConfig | None = None
    ) -> None:
        self.params = params
        self.policy = policy
        self.engine = engine or EngineConfig()
        self._fits: tuple[History, Factors, Neighbours] | None = None
        self._ranker: Ranker | None = None

    def fit(self, history: History) -> None:
        feedback = history.data.feedback
        factors = fit_factors(feedback, self.params, self.engine)
        self._rank(history, factors, fit_neighbours(feedback, self.params))

    def reblended(self, **weights: float) -> ServedModel:
        """The same fitted models blended with other weights (``item_item_weight``,
        ``trend_weight``): no refit."""
        other = ServedModel(
            msgspec.structs.replace(self.params, **weights), self.policy, self.engine
        )
        other._rank(*_fitted(self, self._fits))
        return other

    def _rank(self, history: History, factors: Factors, neighbours: Neighbours) -> None:
        crm = history.crm
        tiers = None if crm is None else TierTable.of(crm.policy)
        arrays = served_arrays(history.data, factors, neighbours, self.params, crm=crm)
        self._fits = (history, factors, neighbours)
        self._ranker = Ranker(arrays, tiers=tiers, item_item_weight=self.params.item_item_weight)

    @property
    def ranker(self) -> Ranker:
        """The service's ranker over the fitted models: similar items, carts and reasons."""
        return _fitted(self, self._ranker)

    def recommend(self, row: int | None, n: int) -> list[int]:
        return _as_served(self.ranker, row, n, self.policy)


class BestSellers:
    """The service's fallback for everyone: sales decayed with the model's half-life, minus
    what the customer owns."""

    def __init__(self) -> None:
        self._ranker: Ranker | None = None

    def fit(self, history: History) -> None:
        data = history.data
        no_factors = Factors(
            np.zeros((len(data.customer_ids), 1), np.float32),
            np.zeros((len(data.item_ids), 1), np.float32),
        )
        self._ranker = _factor_ranker(data, no_factors)

    def recommend(self, row: int | None, n: int) -> list[int]:
        ranker = _fitted(self, self._ranker)
        return [item.index for item in ranker.popular(n, ranker.excluded(row, {}))]


class PlainAls:
    """ALS without the trending prior, on interactions decayed with its own half-life, ranked
    by the service's ``Ranker`` (the brief's reference "plain ALS" with ``PLAIN_ALS``)."""

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self._ranker: Ranker | None = None

    def fit(self, history: History) -> None:
        params = self.params
        own = build_dataset(
            history.events, params.half_life_days, params.trend_half_life_days, history.item_groups
        )
        self._ranker = _factor_ranker(history.data, fit_als(own.interactions, params))

    def recommend(self, row: int | None, n: int) -> list[int]:
        return _as_served(_fitted(self, self._ranker), row, n)


class Bpr:
    """Bayesian personalised ranking on which items each customer holds, ranked by the
    service's ``Ranker`` without a prior."""

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self._ranker: Ranker | None = None

    def fit(self, history: History) -> None:
        factors = fit_bpr(history.data.interactions, self.params)
        self._ranker = _factor_ranker(history.data, factors)

    def recommend(self, row: int | None, n: int) -> list[int]:
        return _as_served(_fitted(self, self._ranker), row, n)


@dataclass(frozen=True)
class _Neighbours:
    data: TrainingData
    similarity: sp.csr_matrix
    fallback: BestSellers


class ItemKnn:
    """Item-item BM25 similarity, ``neighbours`` per item: a customer's score for an item is
    their interactions times its similarities; the best-sellers for a customer never seen."""

    def __init__(self, neighbours: int = 100) -> None:
        self.neighbours = neighbours
        self._fitted: _Neighbours | None = None

    def fit(self, history: History) -> None:
        fallback = BestSellers()
        fallback.fit(history)
        similarity = fit_item_knn(history.data.interactions, self.neighbours)
        self._fitted = _Neighbours(history.data, similarity, fallback)

    def recommend(self, row: int | None, n: int) -> list[int]:
        fitted = _fitted(self, self._fitted)
        if row is None:
            return fitted.fallback.recommend(None, n)
        data = fitted.data
        scores = np.asarray((data.interactions[row] @ fitted.similarity).todense()).ravel()
        owned = data.owned.indices[data.owned.indptr[row] : data.owned.indptr[row + 1]]
        return [item.index for item in top_n(scores, n, owned)]


@dataclass(frozen=True)
class _ItemItem:
    data: TrainingData
    weights: NDArray[np.float32] | sp.csr_matrix  # items x items
    fallback: BestSellers


class ItemItemAlone:
    """The item-item model alone, on the served model's decayed purchases: EASE^R with its
    full items x items weights (not the bundle's strongest neighbours) up to
    ``EASE_MAX_ITEMS``, the kept kNN neighbours past it. A customer's score for an item is
    their history times its column; the best-sellers for a customer never seen."""

    def __init__(self, params: ModelParams) -> None:
        self.params = params
        self._fitted: _ItemItem | None = None

    def fit(self, history: History) -> None:
        fallback = BestSellers()
        fallback.fit(history)
        interactions = history.data.interactions
        weights: NDArray[np.float32] | sp.csr_matrix
        if item_item_kind(self.params, interactions.shape[1]) == "ease":
            weights = fit_ease(interactions, self.params.ease_regularization)
        else:
            found = fit_neighbours(interactions, self.params)
            weights = sp.csr_matrix((found.scores, found.items, found.indptr))
        self._fitted = _ItemItem(history.data, weights, fallback)

    def recommend(self, row: int | None, n: int) -> list[int]:
        fitted = _fitted(self, self._fitted)
        if row is None:
            return fitted.fallback.recommend(None, n)
        data = fitted.data
        scores = np.asarray(data.interactions[row] @ fitted.weights).ravel()
        owned = data.owned.indices[data.owned.indptr[row] : data.owned.indptr[row + 1]]
        return [item.index for item in top_n(scores, n, owned)]


def _factor_ranker(data: TrainingData, factors: Factors) -> Ranker:
    """``factors`` without a prior, tiers or candidate lists, as the service would rank them."""
    return Ranker(bundle_arrays(data, factors, np.zeros(len(data.item_ids), np.float32)))


def _as_served(ranker: Ranker, row: int | None, n: int, policy: bool = True) -> list[int]:
    """The customer's list as the service serves it: in their tier at training, with no
    purchases reported since."""
    tier = 0 if row is None else ranker.trained_tier(row)
    return [item.index for item in ranker.recommend_row(row, n, None, tier, policy).items]


def _fitted(model: Recommender, state: T | None) -> T:
    if state is None:
        raise RuntimeError(f"{type(model).__name__}.recommend() before fit()")
    return state
