"""The model being served: the current verified bundle and the ranker built on it.

A new bundle is picked up without a restart: each worker process watches the ``current``
pointer (every ``reload_seconds``) and swaps in the new bundle once it has loaded and
verified it (its per-customer arrays memory-mapped, so the workers of a host share one copy
through the page cache; verified in full only by the first process of the host to load it:
recsvc.bundle.VerificationRecords). A request takes one reference to the served model and
uses it throughout, so no response mixes two versions. A bundle that fails verification (or
cannot be read or served in any way) is refused, logged once, and not tried again until the
pointer moves; the previous one keeps serving, and the refusal is over once the pointer names
a bundle that serves.

At start there is no previous one: then the newest bundle in the models directory that
verifies is served instead (a fallback), and ``current`` is left as the operator wrote it.

An experiment (``recsvc.experiments``) serves its arms' bundles beside ``current``, each
verified the same way; the watcher re-reads the experiment file with the pointer. An
experiment whose file or bundles cannot be served is not run (everyone gets ``current``), and
says why in ``experiment_error``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from recsvc import experiments
from recsvc.bundle import (
    CURRENT_POINTER,
    Bundle,
    VerificationRecords,
    bundle_versions,
    current_version,
    load_bundle,
)
from recsvc.errors import BundleCorrupt, BundleError, BundleNotFound
from recsvc.experiments import Experiment, Split
from recsvc.identity import SECRET_VARIABLE, IdentityKey, IdentityRules
from recsvc.policy import TierTable
from recsvc.ranker import Ranker
from recsvc.triggers import TriggerIndex

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
    triggers: TriggerIndex
    loaded_at: float = 0.0  # seconds since the epoch
    created: float = 0.0  # when the bundle was trained, seconds since the epoch
    # Where the tier window of the bundle's spend starts (its data's end less the window):
    # a reported purchase counts in the window from there on. 0: count them all.
    window_start: float = 0.0

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def events_through(self) -> float:
        """Receipt time of the last reported event the bundle learned from (0: none)."""
        return self.bundle.manifest.events_through or 0.0


@dataclass(frozen=True)
class RunningExperiment:
    """An experiment being served: its split and each live arm's model."""

    experiment: Experiment
    split: Split
    models: dict[str, ServedModel]  # by arm name


_NOT_READ = Experiment("", ())  # no experiment looked at yet (or one to look at again)
_REFUSED = Experiment("-", ())  # the experiment file could not be read


class ModelRegistry:
    """Holds the served model; a request takes one reference and uses it throughout."""

    def __init__(
        self,
        models_dir: Path,
        key: IdentityKey | None = None,
        wait: Callable[[float], object] = time.sleep,
        experiment: Experiment | None = None,
        records: VerificationRecords | None = None,
    ) -> None:
        """``key``: this deployment's secret; a bundle trained with another is refused.
        None: the development key. ``wait``: the watcher's pause between two checks (a seam:
        tests pass one they release by hand). ``experiment``: the configured one
        (RECSVC_EXPERIMENT; the models directory's file comes first). ``records``: this
        host's record of the bundles verified (None: every load verifies every file)."""
        self.models_dir = models_dir
        self.records = records
        self.wait = wait
        self.configured_experiment = experiment
        self.experiment: Experiment | None = None  # in force, running or ended
        self.running: RunningExperiment | None = None  # take it once per request
        self.experiment_error: str | None = None
        self._experiment_read: Experiment | None = _NOT_READ
        self.key = key or IdentityKey.development_key()
        self.model: ServedModel | None = None
        self.last_error: str | None = None
        self.refused: str | None = None  # the version refused last, not retried
        self.refusals = 0  # bundles refused since this process started
        # True while the model served was chosen at start because ``current`` named a bundle
        # that was refused; ``refused`` then names that bundle.
        self.fallback = False
        self._watcher_pid: int | None = None

    @property
    def fallback_from(self) -> str | None:
        """The version ``current`` names while a fallback is served in its place."""
        return self.refused if self.fallback else None

    def load(self) -> bool:
        """Load the bundle ``current`` points at (and the experiment's). On failure keep
        serving the previous one, or with none (at start) the newest bundle that verifies."""
        loaded = self._load()
        self.check_experiment()
        return loaded

    def _load(self) -> bool:
        version: str | None = None
        try:
            version = current_version(self.models_dir)
            model = serve(self._bundle(version), self.key)
        except BundleError as error:
            self._refuse(version, error)
            if self.model is None and (self.models_dir / CURRENT_POINTER).exists():
                self._fall_back(version)
            return False
        self.model = model
        self._clear()
        log.info(
            "serving bundle %s from %s (%s)",
            model.version,
            model.bundle.path,
            "verified" if model.bundle.verified_now else "verified on this host before",
        )
        return True

    def check(self) -> bool:
        """Load the bundle ``current`` names if it is new (and not already refused), and the
        experiment file if it changed."""
        changed = self._check_current()
        self.check_experiment()
        return changed

    def _check_current(self) -> bool:
        pointer = self._pointer()
        if pointer is None:
            return False
        if self.model is not None and pointer == self.model.version:
            if self.refused is not None or self.fallback:
                log.info(
                    "current names %s, the bundle served, again; the refusal of %s is over",
                    pointer,
                    self.refused,
                )
                self._clear()
            return False
        if pointer == self.refused:
            return False
        return self._load()

    def check_experiment(self) -> None:
        """Serve the experiment in force (the file's, else the configured one) when it
        changed: each live arm's bundle loaded and verified, or, when one is refused, none (a
        bundle missing is looked for again at the next check, a corrupt one is not)."""
        try:
            experiment = experiments.effective(
                self.configured_experiment, experiments.read(self.models_dir)
            )
        except ValueError as error:
            self._experiment_read = _REFUSED
            self._not_running(None, str(error))
            return
        if experiment == self._experiment_read:
            return
        self._experiment_read = experiment
        if experiment is None or not experiment.running:
            self.experiment, self.running, self.experiment_error = experiment, None, None
            return
        models: dict[str, ServedModel] = {}
        for arm in experiment.live_arms():
            try:
                models[arm.name] = self._arm_model(arm.version)
            except BundleError as error:
                if isinstance(error, BundleNotFound):
                    self._experiment_read = _NOT_READ
                self._not_running(experiment, f"arm {arm.name}: {error}")
                return
        self.experiment, self.experiment_error = experiment, None
        self.running = RunningExperiment(experiment, Split(experiment), models)
        arms = ", ".join(f"{a.name} {a.version} {a.weight}%" for a in experiment.live_arms())
        log.info("serving experiment %s: %s", experiment.name, arms)

    def _not_running(self, experiment: Experiment | None, error: str) -> None:
        if error != self.experiment_error:
            log.error("experiment not served, everyone gets current: %s", error)
        self.experiment, self.running, self.experiment_error = experiment, None, error

    def _arm_model(self, version: str) -> ServedModel:
        """An arm's model: the one already served when it is that version, else loaded."""
        served = [self.model] + list(self.running.models.values() if self.running else [])
        for model in served:
            if model is not None and model.version == version:
                return model
        return serve(self._bundle(version), self.key)

    def watch(self, interval: float) -> None:
        """Check the pointer every ``interval`` seconds from a daemon thread of this process
        (idempotent; a forked worker starts its own). The first call in a process checks at
        once: a worker forked later (after a crash, a timeout or a HUP) inherits the bundle
        the master loaded at start, which may have been replaced since."""
        if interval <= 0 or self._watcher_pid == os.getpid():
            return
        self._watcher_pid = os.getpid()
        try:
            self.check()
        except Exception:  # a failed check must not fail the request that made it
            log.exception("bundle check failed")

        def loop() -> None:
            while True:
                self.wait(interval)
                try:
                    self.check()
                except Exception:  # the watcher must outlive any surprise
                    log.exception("bundle check failed")

        threading.Thread(target=loop, name="recsvc-bundle-watch", daemon=True).start()

    def _bundle(self, version: str) -> Bundle:
        return load_bundle(self.models_dir / version, self.records)

    def _refuse(self, version: str | None, error: BundleError) -> None:
        self.last_error = str(error)
        self.refused = version
        self.refusals += 1
        log.error(
            "bundle refused, still serving %s: %s",
            self.model.version if self.model else "nothing",
            error,
        )

    def _fall_back(self, refused: str | None) -> None:
        """Serve the newest bundle that verifies, other than the one refused."""
        for version in bundle_versions(self.models_dir):
            if version == refused:
                continue
            try:
                model = serve(self._bundle(version), self.key)
            except BundleError as error:
                log.warning("bundle %s cannot be the fallback either: %s", version, error)
                continue
            self.model = model
            self.fallback = True
            log.warning(
                "current names %s, which was refused; serving %s instead, the newest bundle "
                "that verifies (current is left as it is)",
                refused,
                version,
            )
            return

    def _clear(self) -> None:
        self.last_error = None
        self.refused = None
        self.fallback = False

    def _pointer(self) -> str | None:
        try:
            return current_version(self.models_dir)
        except BundleError:
            return None


def serve(bundle: Bundle, key: IdentityKey) -> ServedModel:
    """The model a verified bundle serves, with everything requests need built once.

    Raises BundleCorrupt for anything in the bundle that makes this fail (a manifest section
    of the wrong shape, a trigger of unknown kind, another alias secret): a refusal, never a
    crash at start."""
    _check_key(bundle, key)
    try:
        return _served_model(bundle, key)
    except Exception as error:
        raise BundleCorrupt(
            f"{bundle.path}: cannot be served ({type(error).__name__}: {error})"
        ) from error


def _check_key(bundle: Bundle, key: IdentityKey) -> None:
    """A bundle's alias digests only match the secret they were made with. A bundle that
    records no fingerprint (made by hand, as in tests) is taken as it is."""
    recorded = bundle.manifest.identity.key_fingerprint
    if recorded is not None and recorded != key.fingerprint:
        raise BundleCorrupt(
            f"{bundle.path}: trained with another {SECRET_VARIABLE} (key fingerprint "
            f"{str(recorded)[:8]}…, this service's is {key.fingerprint[:8]}…); retrain it with "
            "this deployment's secret"
        )


def _served_model(bundle: Bundle, key: IdentityKey) -> ServedModel:
    identity = bundle.manifest.identity
    ranker = Ranker(
        bundle.arrays,
        IdentityRules.from_manifest(identity.rules),
        identity.namespaces,
        TierTable.of(bundle.manifest.tiers),
        key,
        float(bundle.manifest.parameters.model.get("item_item_weight", 0.0)),
    )
    item_ids = [str(item) for item in bundle.arrays.item_ids.tolist()]
    prices = [None if math.isnan(price) else price for price in bundle.arrays.prices.tolist()]
    return ServedModel(
        bundle=bundle,
        ranker=ranker,
        item_index={item: i for i, item in enumerate(item_ids)},
        item_ids=item_ids,
        titles=[str(title) for title in bundle.arrays.titles.tolist()],
        prices=prices,
        item_categories=_category_names(bundle),
        triggers=TriggerIndex(bundle.arrays, key),
        loaded_at=time.time(),
        created=_timestamp(bundle.manifest.created),
        window_start=_window_start(bundle.manifest.data_as_of, ranker.tiers.window_days),
    )


def _window_start(data_as_of: str | None, window_days: float) -> float:
    if not data_as_of:
        return 0.0
    moment = datetime.fromisoformat(data_as_of)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the trainer's times are naive UTC
    return moment.timestamp() - window_days * 86400.0


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
