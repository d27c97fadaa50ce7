"""Collaborative-filtering models fitted with ``implicit``, and the trending-items prior."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, bm25_weight
from implicit.recommender_base import ModelFitError
from implicit.utils import ParameterWarning
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from training.config import EngineConfig, ModelParams
from training.errors import TrainingError


@dataclass(frozen=True)
class Factors:
    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]


def fit_factors(interactions: sp.csr_matrix, params: ModelParams, engine: EngineConfig) -> Factors:
    """ALS on the engine ``engine`` names: implicit in this process, or Spark MLlib."""
    if engine.kind == "spark":
        from training.spark_als import fit_als_spark

        return fit_als_spark(interactions, params, engine)
    return fit_als(interactions, params)


def confidences(interactions: sp.csr_matrix, params: ModelParams) -> sp.csr_matrix:
    """The BM25-weighted, time-decayed purchases both ALS fits learn from."""
    weighted: sp.csr_matrix = bm25_weight(interactions, K1=params.bm25_k1, B=params.bm25_b).tocsr()
    return weighted


def als_model(params: ModelParams) -> AlternatingLeastSquares:
    """implicit's ALS with the ``[model]`` parameters, not fitted yet."""
    return AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
    )


def fit_als(interactions: sp.csr_matrix, params: ModelParams, progress: bool = False) -> Factors:
    """ALS on BM25-weighted, time-decayed purchase confidences. Deterministic given the seed."""
    # As float32 at once: the float64 weights are not kept beside implicit's copies.
    weighted = confidences(interactions, params).astype(np.float32)
    # implicit parallelises itself; a multi-threaded BLAS underneath only adds contention.
    with threadpool_limits(limits=1, user_api="blas"):
        model = als_model(params)
        try:
            model.fit(weighted, show_progress=progress)
        except ModelFitError as error:
            raise TrainingError(f"ALS did not converge with {params}: {error}") from error
    return _factors(model)


def fit_bpr(interactions: sp.csr_matrix, params: ModelParams, progress: bool = False) -> Factors:
    """Bayesian personalised ranking on which items each customer holds (a baseline).

    Uses implicit's own learning rate and regularisation: ALS's regularisation is on a
    different scale. One thread: implicit's multi-threaded SGD is not reproducible."""
    with threadpool_limits(limits=1, user_api="blas"):
        model = BayesianPersonalizedRanking(
            factors=params.factors, iterations=100, random_state=params.seed, num_threads=1
        )
        model.fit((interactions > 0).astype(np.float32).tocsr(), show_progress=progress)
    return _factors(model)


def item_knn_model(neighbours: int = 100) -> BM25Recommender:
    """implicit's BM25 item-item model, ``neighbours`` kept per item, not fitted yet: its own
    K1 and B (which weigh the items x customers matrix, not ``[model]``'s bm25_k1 and
    bm25_b, which weigh ALS's customers x items confidences)."""
    return BM25Recommender(K=neighbours)


def fit_item_knn(interactions: sp.csr_matrix, neighbours: int = 100) -> sp.csr_matrix:
    """Item-item BM25 similarities, ``neighbours`` per item (a baseline): items x items."""
    model = item_knn_model(neighbours)
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # implicit BM25-weights into a COO matrix internally, then warns about its own input.
        warnings.filterwarnings("ignore", "Method expects CSR input", ParameterWarning)
        model.fit(interactions.tocsr(), show_progress=False)
    similarity: sp.csr_matrix = model.similarity.tocsr()
    return similarity


def trend_prior(trending: NDArray[np.float64], weight: float) -> NDArray[np.float32]:
    """weight * standardised log(1 + trending sales): lifts what is selling now, on the scale
    of the standardised factor scores it is added to.

    The spread is floored at one log unit (real catalogs measure about 1.3), so a catalog
    where every item sells alike cannot blow a one-sale difference up to several deviations.
    """
    logged = np.log1p(trending)
    spread = max(float(logged.std()), 1.0)
    prior: NDArray[np.float32] = (weight * (logged - logged.mean()) / spread).astype(np.float32)
    return prior


def _factors(model: AlternatingLeastSquares | BayesianPersonalizedRanking) -> Factors:
    return Factors(
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
