"""One training run: read every source, merge, build the dataset, fit, publish a bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from recsvc.bundle import (
    CONTENT_FILE,
    QUARANTINE_FILE,
    BundleArrays,
    bundle_versions,
    load_arrays,
    new_version,
    publish_bundle,
    sha256_file,
)
from recsvc.errors import BundleError
from recsvc.identity import CANONICAL, AliasDigests, IdentityKey, alias_table
from recsvc.manifest import (
    Accounting,
    Catalog,
    Contribution,
    ItemRulesSection,
    Manifest,
    Parameters,
    Quarantine,
    Returns,
    SourceSummary,
)
from recsvc.policy import TierTable, tier_indices
from recsvc.ranker import Ranker
from training.catalog import unavailable_items, withdraw
from training.channels import item_categories, load_content, load_taxonomy
from training.config import ModelParams, SourceConfig, TrainConfig
from training.dataset import TrainingData, build_dataset, outcome_is, present, value_is
from training.errors import QuarantineError, TrainingError
from training.fit import Factors, fit_factors, trend_prior
from training.interactions import accounting as interaction_accounting
from training.itemitem import Neighbours, fit_neighbours, item_item_kind
from training.memory import give_back_freed_memory
from training.merge import (
    NO_ERASURE_LIST,
    REASON_FIELDS,
    MergedHistory,
    load_erasures,
    merge_sources,
)
from training.progress import Progress
from training.quarantine import QuarantinedRows
from training.segments import sales_of, segment_arrays
from training.sources import (
    DatabaseSlices,
    SourceFiles,
    SourceInput,
    SourceRows,
    database_content,
    database_digest,
    events_through,
    read_source,
)
from training.spark_als import fit_ratings_on_spark
from training.spark_candidates import spark_served_arrays
from training.spark_dataset import (
    NOTHING_TO_TRAIN,
    SparkDataset,
    built_on_executors,
    contributions_on_executors,
)
from training.spark_itemitem import neighbours_on_executors
from training.spark_sources import read_by_executors
from training.tiers import (
    Crm,
    CustomerLines,
    build_crm,
    empty_crm,
    resolve_levels,
    window_spend,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    version: str
    path: Path
    seconds: float
    accounting: dict[str, dict[str, Any]]
    # Per event log, per interaction kind: read and each outcome (training.interactions).
    interactions: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)


def train(
    config: TrainConfig,
    models_dir: Path,
    progress: Progress | None = None,
    allow_quarantine: bool = False,
) -> TrainReport:
    """``allow_quarantine``: publish even where a source's quarantined share is over its
    ``max_quarantine_share`` (the manifest records it). ``progress``: where each step is
    reported (default: one log line per step)."""
    progress = progress or Progress.silent()
    started = time.perf_counter()
    give_back_freed_memory()
    if config.identity.erasures is None:
        log.warning(NO_ERASURE_LIST)
    if config.identity.key.development:
        log.warning(
            "RECSVC_ID_SECRET is not set: the bundle's alias digests use the published "
            "development secret, and a service with authentication on refuses it"
        )
    sources = read_sources(config, progress)
    contents = source_contents(sources)
    received = [events_through(rows) for rows in sources if isinstance(rows, SourceRows)]
    with progress.step("merging sources and linking customers", "rows") as step:
        merged = merge_sources(  # frees the raw rows
            sources,
            config.items,
            config.identity,
            config.engine,
            # On Spark the rows stay on the executors, which build the matrix from them.
            keep_on_executors=True,
        )
        step.add(sum(counts["rows_read"] for counts in merged.accounting.values()))
    fingerprint = data_fingerprint(config, contents | merged.database_contents)
    quarantine = quarantine_gate(config.sources, merged, allow_quarantine)
    # On Spark: what the executors built, whose confidences ALS learns from.
    executors: SparkDataset | None = None
    if merged.rows is not None:
        assert merged.spark_aliases is not None  # kept on the executors with the rows
        with progress.step("the matrix, tiers, signals, segments, alias table (Spark executors)"):
            try:
                contributions = _source_summaries(
                    config.sources, contributions_on_executors(merged.rows)
                )
                executors = built_on_executors(
                    merged.rows,
                    merged.spark_aliases,
                    merged.spark_records,
                    merged.item_groups,
                    config.model,
                    config.tiers,
                    config.engine,
                    config.identity.key,
                    sum(
                        counts[outcome]
                        for counts in merged.accounting.values()
                        for outcome in ("used", "duplicate", "cancellation", "anonymous")
                    ),
                )
            finally:
                merged.rows.release()
        data, crm, segments = executors.data, executors.crm, executors.segments
        digests, interactions = executors.alias_digests, executors.interactions
        merged = dataclasses.replace(merged, rows=None, spark_aliases=None, spark_records=None)
    else:
        if not (
            outcome_is(merged.events, "used", "anonymous") & (merged.events["quantity"] > 0)
        ).any():
            raise TrainingError(NOTHING_TO_TRAIN)
        with progress.step("building the interaction matrix"):
            data = build_dataset(
                merged.events,
                config.model.half_life_days,
                config.model.trend_half_life_days,
                merged.item_groups,
                merged.interactions,
                config.model.weights,
            )
        interactions = interaction_accounting(merged.interactions, data.interaction_outcome)
        # Only the matrix reads the rows' trust and descriptions: dropped before the next
        # step, the run's peak (at 20 M purchases, 0.1 GB of it).
        merged = dataclasses.replace(
            merged, events=merged.events.drop(columns=["trust", "description"])
        )
        # The alias dict (millions of strings at 20 M purchases) as the bundle's digests
        # now, so that it is not held through the fits and the candidate lists.
        digests = alias_digests(merged.aliases, data.customer_ids, config.identity.key)
        merged = dataclasses.replace(merged, aliases={})
        with progress.step("each customer's purchase lines, each source's contribution, segments"):
            contributions = _source_summaries(config.sources, _contributions(merged.events))
            lines = CustomerLines.of(merged.events, data.customer_ids, data.settlement)
            # The segments' best sellers need each customer's tier, which the tiers step
            # computes the same way; their sales (0.4 GB at 20 M purchases) are counted and
            # ranked here, before the rows go, rather than held through the tiers.
            spend = window_spend(
                lines, len(data.customer_ids), data.as_of, config.tiers.window_days
            )
            levels = resolve_levels(config.tiers, spend)
            segments = segment_arrays(
                sales_of(
                    merged.events,
                    data.item_ids,
                    data.customer_ids,
                    data.as_of,
                    config.model.half_life_days,
                ),
                len(data.item_ids),
                tier_indices(levels, spend),
                [level.name for level in levels],
            )
            del spend
            # The merged rows are not needed past this point: at 20 M rows they hold a GB,
            # which the fits would otherwise hold memory beside. Copied: an empty slice is
            # a view that keeps every row's memory.
            merged = dataclasses.replace(
                merged,
                events=merged.events.iloc[:0].copy(),
                interactions=merged.interactions.iloc[:0].copy(),
            )
        # The tiers are built before the fits rather than beside them: on two cores the
        # overlap saved a few per cent of a run, and cost their working memory on top of
        # ALS's (the run's peak at 20 M purchases).
        with progress.step("tiers"):
            crm = build_crm(
                lines,
                len(data.customer_ids),
                data.item_ids,
                data.prices,
                data.as_of,
                config.tiers,
            )
            del lines
    try:
        with progress.step("catalog"):
            tier_names = TierTable.of(crm.policy).names
            taxonomy = load_taxonomy(config.items.taxonomy)
            crm.arrays["item_categories"] = item_categories(data.titles, taxonomy)
            crm.arrays["item_min_tier"] = withdraw(
                crm.arrays["item_min_tier"],
                data.item_ids,
                unavailable_items(config.items),
                len(tier_names),
            )
            content = load_content(
                config.channels.content, list(taxonomy), tier_names, config.channels.base_url
            )
        als = f"fitting ALS ({config.model.factors} factors, {config.model.iterations} iterations)"
        item_item = (
            f"fitting the item-item model ({item_item_kind(config.model, len(data.item_ids))}, "
            f"{config.model.neighbours} neighbours per item)"
        )
        if executors is None:
            with progress.step(als):
                factors = fit_factors(data.feedback, config.model, config.engine)
            with progress.step(item_item):
                neighbours = fit_neighbours(data.feedback, config.model)
            arrays = bundle_arrays(
                data,
                factors,
                trend_prior(data.trending, config.model.trend_weight),
                digests,
                crm.arrays,
                neighbours=neighbours,
            )
            arrays = with_candidate_lists(arrays, config.model, crm, config.identity.key, progress)
        else:
            with progress.step(als):
                # The customer factors stay on the executors, which rank with them.
                spark_factors = fit_ratings_on_spark(executors.ratings, config.model, config.engine)
                executors.ratings.frame.unpersist()
            # From the feedback parts the executors wrote, not the joined matrix.
            with progress.step(f"{item_item} (Spark executors)"):
                neighbours = neighbours_on_executors(
                    config.engine,
                    executors.feedback_directory,
                    config.model,
                    len(data.item_ids),
                )
            arrays = spark_served_arrays(
                data,
                spark_factors,
                neighbours,
                config.model,
                digests,
                crm,
                executors.customer_side_directory,
                config.engine,
                progress,
            )
    finally:
        # What the executors left for the fits and the ranking, however the run ends.
        if executors is not None:
            executors.release()
    arrays = dataclasses.replace(arrays, **segments)
    version = new_version(fingerprint)
    manifest = Manifest(
        model=model_kind(config.model, len(data.item_ids)),
        data_fingerprint=fingerprint,
        data_as_of=None if data.as_of is None else data.as_of.isoformat(),
        parameters=parameters(config),
        accounting=msgspec.convert(merged.accounting, dict[str, Accounting]),
        interactions=interactions,
        # Receipt time of the last reported event learned from; the service only applies
        # events received after it, so none counts twice.
        events_through=max(
            (t for t in [*received, merged.events_through] if t is not None), default=None
        ),
        tiers=crm.policy,
        catalog=Catalog(categories=tuple(taxonomy)),
        channels=config.channels.to_manifest(),
        sources=contributions,
        quarantine=quarantine,
        returns=msgspec.convert(data.settlement.report, Returns),
        identity=msgspec.structs.replace(
            merged.identity,
            namespaces=tuple(
                sorted(
                    {s.name for s in config.sources}
                    | {s.customer_namespace for s in config.sources}
                )
            ),
            # The service refuses the bundle unless its RECSVC_ID_SECRET has this fingerprint.
            key_fingerprint=config.identity.key.fingerprint,
        ),
    )
    with progress.step("publishing the bundle"):
        path = publish(models_dir, version, manifest, merged, arrays, content)
        prune_erased(models_dir, version, load_erasures(config.identity))
    return TrainReport(
        version, path, time.perf_counter() - started, merged.accounting, interactions
    )


def read_sources(config: TrainConfig, progress: Progress) -> list[SourceInput]:
    """Every source, side by side on the usable cores: Arrow and pandas parse without the
    GIL (at 20 M purchases three sources took 16.4 s one after another, 10.0 s on two
    cores, for 0.5 GB more at the peak of reading, under the run's). A source Spark's
    executors read (``read_by_executors``) is only listed (its files,
    or its slices): the merge reads it."""

    def timed(source: SourceConfig) -> tuple[SourceInput, float]:
        started = time.perf_counter()
        if read_by_executors(source, config.engine):
            if source.kind == "postgresql":
                return DatabaseSlices.of(source), 0.0
            return SourceFiles.of(source), 0.0
        return read_source(source), time.perf_counter() - started

    sources = []
    workers = min(_usable_cores(), len(config.sources))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        for rows, seconds in pool.map(timed, config.sources):
            if isinstance(rows, SourceRows):
                name, count = rows.source.name, len(rows.frame)
                progress.done(f"reading source {name!r}", seconds, count, "rows")
            sources.append(rows)
    return sources


def merged_history(config: TrainConfig, progress: Progress | None = None) -> MergedHistory:
    progress = progress or Progress.silent()
    sources = read_sources(config, progress)
    with progress.step("merging sources and linking customers", "rows") as step:
        merged = merge_sources(sources, config.items, config.identity, config.engine)
        step.add(sum(counts["rows_read"] for counts in merged.accounting.values()))
        return merged


def model_kind(params: ModelParams, n_items: int) -> str:
    """The manifest's name for the blend served: "als+ease+trend", "als+knn+trend"."""
    return f"als+{item_item_kind(params, n_items)}+trend"


def served_arrays(
    data: TrainingData,
    factors: Factors,
    neighbours: Neighbours | None,
    params: ModelParams,
    aliases: dict[str, str] | None = None,
    crm: Crm | None = None,
    key: IdentityKey | None = None,
    progress: Progress | None = None,
) -> BundleArrays:
    """``factors`` and ``neighbours`` plus the trending prior, as the bundle holds them, with
    each customer's candidate list under their tier's policy (given ``crm``)."""
    prior = trend_prior(data.trending, params.trend_weight)
    crm_arrays = None if crm is None else crm.arrays
    digests = alias_digests(aliases, data.customer_ids, key)
    arrays = bundle_arrays(data, factors, prior, digests, crm_arrays, key, neighbours)
    if crm is None:
        return arrays
    return with_candidate_lists(arrays, params, crm, key, progress)


def with_candidate_lists(
    arrays: BundleArrays,
    params: ModelParams,
    crm: Crm,
    key: IdentityKey | None = None,
    progress: Progress | None = None,
) -> BundleArrays:
    """``arrays`` with each customer's candidate list under their tier's policy."""
    if params.candidates == 0:
        return arrays
    ranker = Ranker(
        arrays, tiers=TierTable.of(crm.policy), key=key, item_item_weight=params.item_item_weight
    )
    # A thread per core, each with one BLAS thread: faster than one multi-threaded product,
    # and the lists come out the same whatever the machine's core count.
    customers = len(arrays.customer_ids)
    with (
        (progress or Progress.silent()).step(
            "candidate lists", "customers", total=customers
        ) as step,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        items, scores, reasons = ranker.candidate_lists(
            params.candidates, threads=_usable_cores(), done=step.add
        )
    return dataclasses.replace(
        arrays, candidate_items=items, candidate_scores=scores, candidate_reasons=reasons
    )


def _usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def alias_digests(
    aliases: dict[str, str] | None, customer_ids: NDArray[np.str_], key: IdentityKey | None
) -> AliasDigests:
    """The bundle's alias table (``recsvc.identity.alias_table``) of ``aliases`` (alias ->
    canonical id; None: each customer's canonical id only), digested with ``key`` (None:
    the development key, for evaluation, which ranks by row)."""
    customers = customer_ids.tolist()
    if aliases is None:
        aliases = {f"{CANONICAL}:{customer}": customer for customer in customers}
    return alias_table(key or IdentityKey.development_key(), aliases, customers)


def bundle_arrays(
    data: TrainingData,
    factors: Factors,
    item_prior: NDArray[np.float32],
    digests: AliasDigests | None = None,
    crm: dict[str, NDArray[Any]] | None = None,
    key: IdentityKey | None = None,
    neighbours: Neighbours | None = None,
) -> BundleArrays:
    """The served arrays. Without alias ``digests`` a customer is found by canonical id only
    (digested with ``key``, see ``alias_digests``); without ``crm`` every customer is in the
    first tier with no signals. Without ``neighbours`` no item-item model: no similar items,
    no reasons from purchases."""
    order = np.lexsort((np.arange(len(data.item_ids)), -data.popularity))
    alias_high, alias_low, alias_rows = digests or alias_digests(None, data.customer_ids, key)
    return BundleArrays(
        customer_ids=data.customer_ids,
        item_ids=data.item_ids,
        user_factors=factors.user_factors,
        item_factors=factors.item_factors,
        item_prior=item_prior,
        owned_indptr=data.held.indptr.astype(np.int64, copy=False),
        owned_indices=data.held.indices.astype(np.int32, copy=False),
        owned_quantity=data.held.data.astype(np.float32, copy=False),
        owned_weight=data.interactions.data.astype(np.float32, copy=False),
        owned_source=data.held_source,
        source_names=data.source_names,
        neighbour_indptr=(
            np.zeros(len(data.item_ids) + 1, np.int64) if neighbours is None else neighbours.indptr
        ),
        neighbour_items=np.zeros(0, np.int32) if neighbours is None else neighbours.items,
        neighbour_scores=np.zeros(0, np.float32) if neighbours is None else neighbours.scores,
        customer_spend=data.spend,
        customer_orders=data.orders,
        titles=data.titles,
        prices=data.prices,
        item_group=data.item_group,
        alias_high=alias_high,
        alias_low=alias_low,
        alias_rows=alias_rows,
        popular_items=order.astype(np.int32),
        popular_scores=data.popularity[order].astype(np.float32),
        **(crm if crm is not None else empty_crm(len(data.customer_ids), len(data.item_ids))),
        candidate_items=np.zeros((len(data.customer_ids), 0), np.int32),
        candidate_scores=np.zeros((len(data.customer_ids), 0), np.float32),
        candidate_reasons=np.zeros((len(data.customer_ids), 0), np.int32),
    )


def quarantine_gate(
    sources: Iterable[SourceConfig], merged: MergedHistory, allow: bool
) -> Quarantine:
    """Stop the run where a source's quarantined share is over its ``max_quarantine_share``
    (a wrong mapping or format quarantines most rows; publishing that would serve a model of
    what is left), unless ``allow``. Returns the manifest's record of it."""
    over: dict[str, float] = {}
    messages = []
    for source in sources:
        counts = merged.accounting[source.name]
        quarantined = sum(counts["quarantined"].values())
        share = quarantined / counts["rows_read"] if counts["rows_read"] else 0.0
        if share <= source.max_quarantine_share:
            continue
        over[source.name] = round(share, 4)
        reasons = sorted(counts["quarantined"].items(), key=lambda entry: -entry[1])
        reason = reasons[0][0]
        messages.append(
            f"source {source.name!r}: {quarantined:,} of {counts['rows_read']:,} rows "
            f"({share:.1%}) quarantined, over max_quarantine_share "
            f"{source.max_quarantine_share:.1%}; "
            + ", ".join(f"{why} {count:,}" for why, count in reasons)
            + f"; first {reason}: {_first_quarantined(source, merged.quarantine, reason)}"
        )
    if messages and not allow:
        raise QuarantineError(
            "; ".join(messages)
            + ". Nothing was published: fix the mapping or format, raise the source's "
            "max_quarantine_share, or pass --allow-quarantine"
        )
    return Quarantine(
        max_share={source.name: source.max_quarantine_share for source in sources},
        over_limit=over,
        allow_quarantine=allow,
    )


def _first_quarantined(source: SourceConfig, quarantine: QuarantinedRows, reason: str) -> str:
    """Where the first row quarantined for ``reason`` is, and the value that failed (never
    a whole row: rows hold personal data)."""
    first = quarantine.first(source.name, reason)
    where = f"file {first['file']}, record {first['record']}"
    field = REASON_FIELDS.get(reason)
    if field is None or field not in source.columns:
        return where
    value = f"{source.columns[field]} = {str(first[field])[:40]!r}"
    if field == "timestamp":
        value += f" (timestamp_format {source.timestamp_format or 'ISO 8601'})"
    return f"{where}, {value}"


def source_contents(sources: Sequence[SourceInput]) -> dict[str, str]:
    """Each source's content as the data fingerprint takes it: files by their bytes' sha256,
    a database source by its rows (``training.sources.database_digest``). A database source
    Spark's executors read is left out: the merge, which reads it, gives it
    (``MergedHistory.database_contents``)."""
    contents = {}
    for rows in sources:
        if isinstance(rows, DatabaseSlices):
            continue
        if isinstance(rows, SourceFiles):
            contents[rows.source.name] = "".join(sha256_file(path) for path in rows.files)
        elif rows.source.kind == "postgresql":
            count, total = database_digest(rows.frame, rows.source)
            contents[rows.source.name] = database_content(count, total)
        else:
            contents[rows.source.name] = "".join(sha256_file(Path(path)) for path in rows.files)
    return contents


def data_fingerprint(config: TrainConfig, contents: dict[str, str]) -> str:
    """sha256 over every input's content (``source_contents``), the config that shapes how
    it is read (each source's declaration: mappings, formats, time zone, prefixes), the
    identity rules and crosswalks, the erasure list and the parameters: same inputs, same
    model."""
    digest = hashlib.sha256()
    for source in config.sources:
        part = contents[source.name]
        declared = {
            key: value
            for key, value in msgspec.structs.asdict(source).items()
            if key not in ("base_dir", "path", "dsn", "dsn_env")  # where, not what
        }
        digest.update(f"{source.name}\0{part}\0".encode())
        digest.update(json.dumps(declared, sort_keys=True, default=str).encode())
    identity = config.identity
    shaping = {
        "identity_rules": msgspec.to_builtins(identity.rules.to_manifest()),
        "links": dataclasses.asdict(identity.links),
        "tiers": dataclasses.asdict(config.tiers),
    }
    digest.update(json.dumps(shaping, sort_keys=True, default=str).encode())
    files = (
        identity.crosswalk,
        *identity.erasure_files(),
        config.items.crosswalk,
        config.items.taxonomy,
        config.tiers.exclusive_items,
        config.channels.content,
    )
    for path in files:
        present = path is not None and Path(path).is_file()  # an erasure list may not exist
        digest.update((sha256_file(Path(path)) if path and present else "-").encode() + b"\0")
    digest.update(json.dumps(msgspec.to_builtins(parameters(config)), sort_keys=True).encode())
    return digest.hexdigest()


def publish(
    models_dir: Path,
    version: str,
    manifest: Manifest,
    merged: MergedHistory,
    arrays: BundleArrays,
    content: list[dict[str, Any]],
) -> Path:
    """Write the bundle: arrays, the manifest, the quarantine file and the content catalog."""
    with tempfile.TemporaryDirectory() as scratch:
        content_path = Path(scratch) / CONTENT_FILE
        content_path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
        attachments = {QUARANTINE_FILE: merged.quarantine.path, CONTENT_FILE: content_path}
        return publish_bundle(models_dir, version, arrays, manifest, attachments)


def prune_erased(models_dir: Path, keep: str, erased: set[str]) -> list[str]:
    """Delete the earlier bundles that still hold a customer on the erasure list (their ids,
    and in the quarantine file their addresses): once a bundle without them is published, an
    erasure leaves nothing behind in the models directory. Returns the versions deleted."""
    if not erased:
        return []
    wanted = {bytes.fromhex(d) for d in erased}
    highs = np.array([int.from_bytes(d[:8], "big") for d in wanted], dtype=np.uint64)
    deleted = []
    for version in bundle_versions(models_dir):
        if version == keep:
            continue
        try:
            _, aliases = load_arrays(models_dir / version, ("alias_high", "alias_low"))
        except BundleError:  # not a bundle this trainer can read: not ours to judge
            continue
        high, low = aliases["alias_high"], aliases["alias_low"]
        candidates = np.flatnonzero(np.isin(high, highs))
        if any(
            int(high[p]).to_bytes(8, "big") + int(low[p]).to_bytes(8, "big") in wanted
            for p in candidates
        ):
            shutil.rmtree(models_dir / version)
            deleted.append(version)
            log.info("deleted bundle %s: it holds customers on the erasure list", version)
    return deleted


def _source_summaries(
    sources: Iterable[SourceConfig], contributions: dict[str, Contribution]
) -> tuple[SourceSummary, ...]:
    """What each source is and what it contributed (provenance)."""
    return tuple(
        SourceSummary(
            name=source.name,
            kind=source.kind,
            location=str(source.path or source.table or "query"),
            customer_namespace=source.customer_namespace,
            trust=source.trust,
            currency_rate=source.currency_rate,
            timezone=source.timezone,
            contribution=contributions.get(source.name, Contribution()),
        )
        for source in sources
    )


def _contributions(merged_events: pd.DataFrame) -> dict[str, Contribution]:
    """Per source: its purchases used, the customers of its purchases and returns, the
    items of its merged rows (``training.spark_dataset.contributions_on_executors`` counts
    the same on Spark)."""
    used = outcome_is(merged_events, "used")
    personal = outcome_is(merged_events, "used", "cancellation")
    customers = merged_events["customer_id"].cat.codes.to_numpy()
    items = merged_events["item_id"].cat.codes.to_numpy()
    n_customers = len(merged_events["customer_id"].cat.categories)
    n_items = len(merged_events["item_id"].cat.categories)
    found = {}
    for name in merged_events["source"].cat.categories:
        mine = value_is(merged_events["source"], name)
        found[str(name)] = Contribution(
            purchases=int((mine & used).sum()),
            customers=len(present(customers[mine & personal], n_customers)),
            items=len(present(items[mine], n_items)),
        )
    return found


def parameters(config: TrainConfig) -> Parameters:
    model = msgspec.structs.asdict(config.model)
    weights = model.pop("weights")
    return Parameters(
        model=model,
        weights=msgspec.structs.asdict(weights),
        tuned_from=None if config.tuned_from is None else str(config.tuned_from),
        items=ItemRulesSection(
            non_product_ids=tuple(sorted(config.items.non_product_ids)),
            non_product_pattern=config.items.non_product_pattern,
        ),
    )
