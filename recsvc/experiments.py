"""A/B tests of models: which bundle answers which customer, how an experiment ends, and its
report.

An experiment serves two or more bundles side by side, each an arm with a weight out of 100
(``RECSVC_EXPERIMENT=champion:<version>:90,challenger:<version>:10``, or the file
``<models_dir>/experiment.json``, which every worker re-reads like ``current``). A customer
falls in bucket hash(experiment name, store key) mod 100, and the buckets go to the arms in
order by their weights. The store key is the keyed digest of the customer's canonical id
(``recsvc.store.customer_key``), or of the key the request used when the model does not know
them, so one customer sees one arm on every worker and host.

Ending an experiment writes the file: promoting an arm points ``current`` at its bundle;
dropping one gives its customers to the first arm left (the others keep theirs), and dropping
all but one promotes that one. An ended experiment in the file outlives a restart: the same
experiment in ``RECSVC_EXPERIMENT`` does not start again (another one does).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from recsvc.bundle import fsync_dir
from recsvc.errors import InvalidParameter
from recsvc.schemas import (
    ArmDifference,
    ArmReport,
    ExperimentReport,
    FigureInterval,
    SurfaceFigures,
)
from recsvc.stats import (
    Interval,
    UnitSums,
    mean,
    mean_difference,
    proportion,
    proportion_difference,
)

if TYPE_CHECKING:
    from recsvc.store import Figures, ImpressionFigures

EXPERIMENT_FILE = "experiment.json"
BUCKETS = 100  # arm weights add up to this
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # an experiment's or an arm's
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")  # a bundle version
SPEC_EXAMPLE = "champion:<version>:90,challenger:<version>:10"


class Arm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    version: str  # the bundle it serves
    weight: int  # buckets out of BUCKETS


class Experiment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """An experiment as ``experiment.json`` holds it."""

    name: str
    arms: tuple[Arm, ...]
    dropped: tuple[str, ...] = ()  # arm names whose customers the first arm left serves
    ended_at: str | None = None  # ISO 8601; None while it runs
    promoted: str | None = None  # the arm whose bundle ``current`` was pointed at

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def arm(self, name: str) -> Arm | None:
        return next((arm for arm in self.arms if arm.name == name), None)

    def live_arms(self) -> list[Arm]:
        return [arm for arm in self.arms if arm.name not in self.dropped]


class Assignment(NamedTuple):
    """The experiment and arm that chose the bundle of an answer."""

    experiment: str
    arm: str


def checked(experiment: Experiment) -> Experiment:
    """``experiment`` if it is one the service can run; ValueError saying what is wrong."""
    if not NAME.fullmatch(experiment.name):
        raise ValueError(f"experiment name {experiment.name!r}: letters, digits, '_.-' (1-64)")
    if len(experiment.arms) < 2:
        raise ValueError(f"needs two arms or more, like {SPEC_EXAMPLE}")
    names = [arm.name for arm in experiment.arms]
    for arm in experiment.arms:
        if not NAME.fullmatch(arm.name):
            raise ValueError(f"arm name {arm.name!r}: letters, digits, '_.-' (1 to 64)")
        if names.count(arm.name) > 1:
            raise ValueError(f"arm {arm.name!r} is named twice")
        if not VERSION.fullmatch(arm.version):
            raise ValueError(f"arm {arm.name!r}: {arm.version!r} is not a bundle version")
        if not 1 <= arm.weight <= BUCKETS:
            raise ValueError(f"arm {arm.name!r}: weight {arm.weight} is not from 1 to {BUCKETS}")
    total = sum(arm.weight for arm in experiment.arms)
    if total != BUCKETS:
        raise ValueError(f"the arms' weights add up to {total}, not {BUCKETS}")
    for name in experiment.dropped:
        if name not in names:
            raise ValueError(f"dropped arm {name!r} is not an arm")
    if len(experiment.live_arms()) < (2 if experiment.running else 1):
        raise ValueError("a running experiment needs two arms that are not dropped")
    if experiment.promoted is not None and experiment.promoted not in names:
        raise ValueError(f"promoted arm {experiment.promoted!r} is not an arm")
    return experiment


def parse_spec(text: str) -> Experiment | None:
    """``RECSVC_EXPERIMENT``: ``<arm>:<version>:<weight>,...`` (None when empty). Its name is
    a digest of the arms and versions, so changing only the weights keeps the experiment (its
    split moves the fewest customers and its figures go on); ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        return None
    arms = []
    for part in text.split(","):
        name, _, rest = part.strip().partition(":")
        version, _, weight = rest.rpartition(":")
        if not name or not version or not re.fullmatch(r"[0-9]{1,3}", weight.strip()):
            raise ValueError(
                f"{part.strip()!r} is not <arm>:<version>:<weight>, as in {SPEC_EXAMPLE}"
            )
        arms.append(Arm(name.strip(), version.strip(), int(weight)))
    identity = "\n".join(f"{arm.name}:{arm.version}" for arm in arms)
    name = "exp-" + hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()
    return checked(Experiment(name, tuple(arms)))


def read(models_dir: Path) -> Experiment | None:
    """The experiment in ``models_dir``'s file (None: no file); ValueError naming the file."""
    path = models_dir / EXPERIMENT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        return checked(msgspec.json.decode(data, type=Experiment))
    except (msgspec.DecodeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def write(models_dir: Path, experiment: Experiment) -> None:
    """Replace ``models_dir``'s experiment file atomically (every worker reads it)."""
    temporary = models_dir / f".{EXPERIMENT_FILE}.{os.getpid()}"
    with temporary.open("wb") as handle:
        handle.write(msgspec.json.format(msgspec.json.encode(checked(experiment))) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, models_dir / EXPERIMENT_FILE)
    fsync_dir(models_dir)


def effective(configured: Experiment | None, written: Experiment | None) -> Experiment | None:
    """The experiment in force: the file's, unless it records the end of another experiment
    than the configured one (then the configured one starts)."""
    if written is None:
        return configured
    if not written.running and configured is not None and configured.name != written.name:
        return configured
    return written


def bucket(experiment: str, unit: str) -> int:
    """The bucket (0 to 99) of a customer's store key in one experiment."""
    digest = hashlib.blake2b(f"{experiment}\0{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Split:
    """A running experiment's buckets, each given to an arm."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        live = experiment.live_arms()
        arms: list[Arm] = []
        for arm in experiment.arms:
            arms += [arm if arm in live else live[0]] * arm.weight
        self._arms = tuple(arms)

    def arm_of(self, unit: str) -> Arm:
        return self._arms[bucket(self.experiment.name, unit)]


def end(
    experiment: Experiment, now: datetime, promote: str | None = None, drop: str | None = None
) -> Experiment:
    """The experiment after promoting an arm, or dropping one (the last arm left is promoted).
    InvalidParameter naming the parameter when the arm is not one of its live arms."""
    name = promote if promote is not None else drop
    parameter = "promote" if promote is not None else "drop"
    live = [arm.name for arm in experiment.live_arms()]
    if name not in live:
        arms = ", ".join(live)
        raise InvalidParameter(parameter, f"{name!r} is not a live arm of the experiment ({arms})")
    if promote is None:
        left = [arm for arm in live if arm != drop]
        if len(left) >= 2:
            return msgspec.structs.replace(experiment, dropped=(*experiment.dropped, name))
        promote = left[0]
    return msgspec.structs.replace(
        experiment, ended_at=now.isoformat(timespec="seconds"), promoted=promote
    )


# The report


def _interval(interval: Interval) -> FigureInterval:
    return FigureInterval(interval.value, interval.low, interval.high)


def _sums(values: dict[str, float], metric: str) -> UnitSums:
    return UnitSums(
        values.get("customers", 0.0),
        values.get("n", 0.0),
        values.get("n_sq", 0.0),
        values.get(metric, 0.0),
        values.get(f"{metric}_sq", 0.0),
        values.get(f"n_{metric}", 0.0),
    )


def report(experiment: Experiment, figures: ImpressionFigures) -> ExperimentReport:
    """Each arm's figures over its customers (see ``recsvc.stats``), and each arm's
    difference from the first arm."""
    arms: list[ArmReport] = []
    first: tuple[Interval, Interval, Interval] | None = None
    for arm in experiment.arms:
        values = figures.units.get((experiment.name, arm.name), {})
        ctr = proportion(_sums(values, "clicked"))
        conversion = proportion(_sums(values, "converted"))
        revenue = mean(_sums(values, "revenue"))
        difference = None
        if first is None:
            first = (ctr, conversion, revenue)
        else:
            difference = ArmDifference(
                ctr=_interval(proportion_difference(first[0], ctr)),
                conversion_rate=_interval(proportion_difference(first[1], conversion)),
                revenue_per_impression=_interval(mean_difference(first[2], revenue)),
            )
        arms.append(
            ArmReport(
                name=arm.name,
                model_version=arm.version,
                weight=arm.weight,
                dropped=arm.name in experiment.dropped,
                customers=int(values.get("customers", 0)),
                impressions=int(values.get("n", 0)),
                clicked=int(values.get("clicked", 0)),
                converted=int(values.get("converted", 0)),
                revenue=round(values.get("revenue", 0.0), 2),
                ctr=_interval(ctr),
                conversion_rate=_interval(conversion),
                revenue_per_impression=_interval(revenue),
                difference=difference,
            )
        )
    return ExperimentReport(
        name=experiment.name,
        running=experiment.running,
        ended_at=experiment.ended_at,
        promoted=experiment.promoted,
        arms=arms,
    )


def surface_figures(figures: Sequence[Figures]) -> list[SurfaceFigures]:
    """Counts per model version, experiment arm and surface, with their rates."""
    found = []
    for group in sorted(figures, key=lambda g: (g.model_version, g.experiment, g.arm, g.surface)):
        values = group.values
        impressions = int(values.get("impressions", 0))
        clicked, converted = int(values.get("clicked", 0)), int(values.get("converted", 0))
        found.append(
            SurfaceFigures(
                model_version=group.model_version,
                experiment=group.experiment or None,
                arm=group.arm or None,
                surface=group.surface,
                impressions=impressions,
                clicked=clicked,
                clicks=int(values.get("clicks", 0)),
                converted=converted,
                purchases=int(values.get("purchases", 0)),
                revenue=round(values.get("revenue", 0.0), 2),
                ctr=clicked / impressions if impressions else None,
                conversion_rate=converted / impressions if impressions else None,
            )
        )
    return found
