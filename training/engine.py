"""Where the merge's SQL runs: DuckDB inside this process (the default), or Spark SQL.

``training.merge`` writes each query once, in SQLGlot's dialect-neutral SQL; an engine
transpiles it to its own dialect (``duckdb`` or ``spark``) and runs it. Tables go in and
results come out as Arrow, so both engines see the same typed rows and hand back the same
typed answers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import sqlglot
from numpy.typing import NDArray

import recsvc
import training
from training.config import EngineConfig
from training.errors import TrainingError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The dialect the merge's queries are written in: SQLGlot's own, which it reads as standard
# SQL and writes into each engine's.
QUERY_DIALECT = ""
# A local Spark (``local[N]``) binds to the loopback interface only, shows no web UI,
# shuffles into a few partitions (the default 200 are for clusters: on two cores they make
# the reference merge four times slower), and has 2 GB of heap, driver and executors in one
# JVM (with Spark's default 1 GB, merges of 2 M purchases ran out of it while linking), in
# pages of 1 MB: each join table Spark broadcasts is held in whole pages (64 MB by default
# here) until the cleaner drops it, so a reference merge left 742 MB of the heap live
# (23 MB with 1 MB pages, and as fast), and a session merging again and again ran out of it.
# It keeps the last 20 queries' plans for its (unshown) UI, not 1,000: each merge left 45 MB
# of them live, 1 MB with 20. A cluster's own settings are left alone. ``[engine] conf``
# overrides either.
LOCAL_SPARK_CONF = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "2g",
    "spark.buffer.pageSize": "1m",
    "spark.sql.ui.retainedExecutions": "20",
}
# DuckDB's settings that ``[engine] conf`` overrides: past this memory it spills to disk
# rather than let the merge's working memory grow with the rows (its default: 80 % of RAM).
# At 20 M purchases 512MB rather than 1GB took 150 MB off the merge's peak for 5 % more time.
DUCKDB_SETTINGS = {"memory_limit": "512MB"}
# PySpark warns about the installed pandas when it converts data; the engine hands it Arrow
# only, never pandas.
PANDAS_WARNING = "PySpark does not yet fully support pandas"


class Engine(Protocol):
    """Holds named tables and answers queries over them."""

    def load(self, name: str, table: pa.Table) -> None:
        """Make ``table`` queryable as ``name``."""

    def materialise(self, name: str, query: str) -> None:
        """Compute ``query`` once and keep its rows as ``name`` for later queries."""

    def query(self, query: str) -> pa.Table: ...


@cache
def transpile(query: str, dialect: str) -> str:
    (statement,) = sqlglot.transpile(query, read=QUERY_DIALECT, write=dialect)
    return statement


@contextmanager
def engine(config: EngineConfig) -> Iterator[Engine]:
    """The engine ``config`` names, for one merge; what it held is dropped afterwards."""
    if config.kind == "spark":
        spark = SparkEngine(spark_session(config.master, tuple(sorted(config.conf.items()))))
        try:
            yield spark
        finally:
            spark.close()
        return
    duck = DuckDBEngine(config.conf)
    try:
        yield duck
    finally:
        duck.close()


class DuckDBEngine:
    """An in-memory DuckDB database. Loaded Arrow tables are scanned in place, not copied;
    what does not fit in memory spills to a temporary directory, removed on close (DuckDB's
    own default is ``.tmp`` in the working directory)."""

    dialect = "duckdb"

    def __init__(self, conf: dict[str, str] | None = None) -> None:
        import duckdb

        self._spill = tempfile.TemporaryDirectory(prefix="recsvc-duckdb-")
        settings: dict[str, str | bool | int | float | list[str]] = {
            "temp_directory": self._spill.name,
            **DUCKDB_SETTINGS,
            **(conf or {}),
        }
        self._connection = duckdb.connect(config=settings)

    def load(self, name: str, table: pa.Table) -> None:
        self._connection.register(name, table)

    def materialise(self, name: str, query: str) -> None:
        sql = transpile(query, self.dialect)
        self._connection.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")

    def query(self, query: str) -> pa.Table:
        return self._connection.sql(transpile(query, self.dialect)).to_arrow_table()

    def close(self) -> None:
        self._connection.close()
        self._spill.cleanup()


def sorted_strings(values: pa.Array) -> tuple[NDArray[np.int64], pa.Array]:
    """``values`` (strings, no nulls) in ascending byte order, and the position of each in
    ``values`` (equal values in any order). DuckDB's sort runs on every core: at 20 M
    purchases the 17 M distinct order ids took 4 s, Arrow's ``array_sort_indices`` and a
    ``take`` 12 s."""
    duck = DuckDBEngine()
    try:
        positions = pa.array(np.arange(len(values), dtype=np.int64))
        duck.load("strings", pa.table({"position": positions, "value": values}))
        ordered = duck.query("SELECT position, value FROM strings ORDER BY value")
    finally:
        duck.close()
    order: NDArray[np.int64] = ordered.column("position").to_numpy()
    return order, ordered.column("value").combine_chunks()


class SparkEngine:
    """Spark SQL on the session's cluster. Loaded tables become temporary views, persisted
    on the executors until the merge ends; a materialised one is checkpointed there (an
    executor lost before the merge ends fails it, to be run again, as linking's
    checkpoints do: ``training.spark_identity``)."""

    dialect = "spark"

    def __init__(self, session: SparkSession) -> None:
        self._session = session
        self._views: list[str] = []
        self._persisted: list[DataFrame] = []
        self._closing: list[Callable[[], object]] = []

    def load(self, name: str, table: pa.Table) -> None:
        # Kept on the executors once first read: every query reads the rows.
        # Arrow batches become partitions of 10,000 rows; one task per core suits better.
        parallelism = self._session.sparkContext.defaultParallelism
        with quiet():
            self.keep(name, self._session.createDataFrame(table).coalesce(parallelism))

    def materialise(self, name: str, query: str) -> None:
        # Checkpointed, not persisted: a persisted table's plan holds the plans of every
        # persisted table it reads, and the merge's queries read ``rows`` several times
        # each, so the plan strings Spark builds grew past the driver's heap.
        self.view(name, self._session.sql(transpile(query, self.dialect)).localCheckpoint())

    def query(self, query: str) -> pa.Table:
        with quiet():
            return self.frame(query).toArrow()

    def frame(self, query: str) -> DataFrame:
        """``query``'s rows, left on the executors."""
        return self._session.sql(transpile(query, self.dialect))

    @property
    def session(self) -> SparkSession:
        return self._session

    def keep(self, name: str, frame: DataFrame) -> None:
        """``frame`` as the table ``name`` of the queries, persisted."""
        self.view(name, self.hold(frame))

    def view(self, name: str, frame: DataFrame) -> None:
        """``frame`` as the table ``name`` of the queries, computed where read."""
        frame.createOrReplaceTempView(name)
        self._views.append(name)

    def hold(self, frame: DataFrame) -> DataFrame:
        """``frame`` persisted until the merge ends."""
        frame = frame.persist()
        self._persisted.append(frame)
        return frame

    def release(self, frame: DataFrame) -> None:
        """A ``hold``'s frame no longer needed: what read it is persisted itself."""
        frame.unpersist()
        self._persisted.remove(frame)

    def closing(self, close: Callable[[], object]) -> None:
        """``close`` called when the merge ends: something the tasks need until then."""
        self._closing.append(close)

    def close(self) -> None:
        try:
            for frame in self._persisted:
                frame.unpersist()
            for name in self._views:
                self._session.catalog.dropTempView(name)
        finally:
            for close in self._closing:
                close()


@contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning)
        yield


_started: list[tuple[str, tuple[tuple[str, str], ...]]] = []


@cache
def spark_session(master: str, conf: tuple[tuple[str, str], ...]) -> SparkSession:
    """Started once and kept: starting the JVM takes seconds (tests merge many times). A JVM
    holds one Spark context, so a later call with another ``master`` gets the running one."""
    try:
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ModuleNotFoundError:
        raise TrainingError(
            "[engine] kind = \"spark\" needs pyspark: pip install 'recsvc[spark]'"
        ) from None
    builder = SparkSession.builder.master(master).appName("recsvc-train")
    local = master.startswith("local")
    settings = {}
    if local:
        settings = dict(LOCAL_SPARK_CONF)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python tasks (the candidate lists) run in this interpreter, with its packages, not in
    # whatever ``python3`` comes first on the PATH; on a cluster, the interpreter at this
    # path on every executor host, unless PYSPARK_PYTHON names another.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in {**settings, **dict(conf)}.items():
        builder = builder.config(key, value)
    try:
        with quiet():
            session = builder.getOrCreate()
    except PySparkException as error:
        raise TrainingError(
            f"Spark could not start at master {master!r} (is Java 17 or later installed?): {error}"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    if not local:
        session.sparkContext.addPyFile(str(code_archive()))
    _started.append((master, conf))
    return session


def parts_directory(engine: EngineConfig) -> Path:
    """Where executors write part files and the driver reads them: a temporary directory on
    a local master; on a cluster, under the checkpoint directory (which every executor
    reaches), which must then be a path the driver mounts too."""
    if engine.master.startswith("local"):
        return Path(tempfile.mkdtemp(prefix="recsvc-spark-parts-"))
    checkpoints = engine.conf.get("spark.checkpoint.dir", "")
    local = checkpoints.removeprefix("file://")
    if not local.startswith("/"):
        raise TrainingError(
            '[engine] kind = "spark": the executors write part files (the bundle\'s '
            "per-customer arrays, the quarantine file, each range of customers' data) under "
            'conf "spark.checkpoint.dir", '
            "which must be a shared file system path the trainer mounts too (file:///... or "
            f"/...), not {checkpoints!r}"
        )
    directory = Path(local) / f"recsvc-parts-{uuid.uuid4().hex}"
    directory.mkdir(parents=True)
    return directory


@cache
def code_archive() -> Path:
    """The trainer's own packages as a zip for the executors' Python path. Tasks unpickle the
    functions they run by module name: on a cluster they must find the driver's code, not
    whatever version of recsvc (if any) is installed where they run. Made once per process,
    removed when it exits."""
    archive = Path(_code_directory().name) / "recsvc-code.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for package in (recsvc, training):
            root = Path(package.__path__[0])
            for module in sorted(root.rglob("*.py")):
                bundle.write(module, module.relative_to(root.parent).as_posix())
    return archive


@cache
def _code_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="recsvc-code-")


def stop_spark_sessions() -> None:
    """Stop the sessions ``spark_session`` started (and the JVM with the last)."""
    for master, conf in list(_started):
        spark_session(master, conf).stop()
    _started.clear()
    spark_session.cache_clear()
