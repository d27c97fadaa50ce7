"""ALS with Spark MLlib (``[engine] kind = "spark"``), on the confidences the single-host fit
uses (``training.fit.confidences``).

The interaction matrix and its BM25 weighting are built on the driver, as for the single-host
fit; the nonzero confidences go to the executors as (customer row, item column, confidence)
rows and Spark's ALS fits there. The item factors come back to the driver; the customer
factors stay on the executors (``SparkFactors``), where ``training.spark_candidates`` ranks
with them. The evaluation, which scores on the driver, collects both (``fit_als_spark``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from training.config import EngineConfig, ModelParams
from training.engine import quiet, spark_session
from training.errors import TrainingError
from training.fit import Factors, confidences

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Spark splits customers and items into this many blocks each (its own default). Fixed, not
# taken from the cluster's cores: the blocks decide the order of the sums, so the same data
# and seed give the same factors on any cluster (up to Spark's order of shuffled rows).
ALS_BLOCKS = 10
# Spark's ALS builds one lineage across all its iterations; the reference data's 20 overflowed
# the JVM's stack serialising it. Checkpointing the factors every few iterations cuts it, and
# needs a checkpoint directory.
CHECKPOINT_INTERVAL = 5


@dataclass(frozen=True)
class Ratings:
    """What Spark's ALS learns from: (customer, item, confidence) rows on the executors,
    the BM25-weighted, time-decayed purchases (``training.fit.confidences``) of a
    ``customers`` x ``items`` matrix, ``positive`` of them above zero."""

    frame: DataFrame
    customers: int
    items: int
    positive: int

    @classmethod
    def of(cls, session: SparkSession, interactions: sp.csr_matrix, params: ModelParams) -> Ratings:
        """``interactions``'s confidences, sent from this process."""
        weighted = confidences(interactions, params).tocoo()
        rows = pa.table(
            {
                "customer": pa.array(weighted.row, pa.int32()),
                "item": pa.array(weighted.col, pa.int32()),
                "confidence": pa.array(weighted.data, pa.float32()),
            }
        )
        with quiet():
            frame = session.createDataFrame(rows)
        customers, items = weighted.shape
        return cls(frame, customers, items, int(np.count_nonzero(weighted.data > 0)))


def spark_als_settings(params: ModelParams, ratings: Ratings) -> dict[str, Any]:
    """``params`` (implicit's ALS) as ``pyspark.ml.recommendation.ALS`` takes them.

    - rank = factors, maxIter = iterations, seed = seed, alpha = alpha, the same confidences
      r. Spark's confidence in a purchase is 1 + alpha * r, implicit's alpha * r: the same for
      recent purchases, but a purchase decayed to r near 0 (on the reference data half of them
      are under 1e-4) is all but ignored by implicit and weighs as much as an unbought item
      in Spark, which cannot weigh a purchase below that. Dropping them instead scored worse.
    - regParam: implicit adds ``regularization`` * |x|^2 for every customer and item; Spark
      (ALS-WR) adds regParam * n * |x|^2, n being that customer's or item's number of
      purchases (nonzero confidences). regParam = regularization * (customers + items) /
      (2 * nonzeros) makes the two penalties' total weight over all factor vectors equal
      (each nonzero counts once for its customer and once for its item); a customer with the
      average number of purchases is regularised about as implicit regularises everyone,
      heavier buyers more, lighter ones less.
    """
    customers, items = ratings.customers, ratings.items
    purchases = max(ratings.positive, 1)
    return {
        "rank": params.factors,
        "maxIter": params.iterations,
        "alpha": params.alpha,
        "regParam": params.regularization * (customers + items) / (2 * purchases),
        "seed": params.seed,
        "implicitPrefs": True,
        "nonnegative": False,
        "numUserBlocks": ALS_BLOCKS,
        "numItemBlocks": ALS_BLOCKS,
        "checkpointInterval": CHECKPOINT_INTERVAL,
    }


@dataclass(frozen=True)
class SparkFactors:
    """A Spark ALS fit: the customer factors as Spark's (id, features) rows, on the
    executors; the item factors collected (a customer or item with no positive confidence
    has none in Spark's rows: zero factors)."""

    user_factors: DataFrame
    item_factors: NDArray[np.float32]
    customers: int


def fit_als_spark(
    interactions: sp.csr_matrix, params: ModelParams, engine: EngineConfig
) -> Factors:
    """ALS on Spark at ``engine.master``; the factors collected, as ``training.fit.fit_als``
    returns them."""
    fitted = fit_als_on_spark(interactions, params, engine)
    return Factors(
        user_factors=_collected(fitted.user_factors, fitted.customers, params.factors),
        item_factors=fitted.item_factors,
    )


def fit_als_on_spark(
    interactions: sp.csr_matrix, params: ModelParams, engine: EngineConfig
) -> SparkFactors:
    """ALS on Spark at ``engine.master`` of this process's ``interactions``, the customer
    factors left on the executors."""
    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    return fit_ratings_on_spark(Ratings.of(session, interactions, params), params, engine)


def fit_ratings_on_spark(
    ratings: Ratings, params: ModelParams, engine: EngineConfig
) -> SparkFactors:
    """ALS on Spark at ``engine.master`` of ``ratings``, the customer factors left on the
    executors."""
    session = spark_session(engine.master, tuple(sorted(engine.conf.items())))
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException
    from pyspark.ml.recommendation import ALS

    context = session.sparkContext
    if context.getCheckpointDir() is None:
        if not engine.master.startswith("local"):
            raise TrainingError(
                '[engine] kind = "spark": ALS needs a checkpoint directory on storage every '
                'executor reaches: set conf "spark.checkpoint.dir" (e.g. an hdfs:// path)'
            )
        context.setCheckpointDir(_local_checkpoints().name)
    als = ALS(userCol="customer", itemCol="item", ratingCol="confidence")
    als.setParams(**spark_als_settings(params, ratings))
    try:
        model = als.fit(ratings.frame)
    except (PySparkException, Py4JJavaError) as error:
        # The JVM's failure comes with its whole stack: the first lines say what failed.
        lines = [line for line in str(error).splitlines() if line.strip() and "\tat " not in line]
        raise TrainingError(f"Spark ALS failed with {params}: {' '.join(lines[:2])}") from None
    return SparkFactors(
        user_factors=model.userFactors,
        item_factors=_collected(model.itemFactors, ratings.items, params.factors),
        customers=ratings.customers,
    )


@cache
def _local_checkpoints() -> tempfile.TemporaryDirectory[str]:
    """A local Spark's checkpoint directory: one per process, removed when it exits."""
    return tempfile.TemporaryDirectory(prefix="recsvc-spark-checkpoints-")


def _collected(frame: DataFrame, rows: int, rank: int) -> NDArray[np.float32]:
    """Spark's (id, features) rows as a dense rows x rank array, in id order."""
    with quiet():
        table = frame.toArrow()
    factors = np.zeros((rows, rank), dtype=np.float32)
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks().flatten().to_numpy()
    factors[ids] = features.reshape(len(ids), rank)
    return factors
