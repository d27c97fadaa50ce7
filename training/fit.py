"""Collaborative-filtering models fitted with ``implicit``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.nearest_neighbours import bm25_weight
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from training.config import ModelParams


@dataclass(frozen=True)
class Factors:
    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]


def fit_als(interactions: sp.csr_matrix, params: ModelParams, progress: bool = False) -> Factors:
    """ALS on BM25-weighted, time-decayed purchase confidences. Deterministic given the seed."""
    weighted = bm25_weight(interactions, K1=params.bm25_k1, B=params.bm25_b).tocsr()
    # implicit parallelises itself; a multi-threaded BLAS underneath only adds contention.
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=params.seed,
        )
        model.fit(weighted.astype(np.float32), show_progress=progress)
    return Factors(
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
