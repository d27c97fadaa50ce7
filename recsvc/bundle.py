"""The model bundle format: the one module that writes, verifies and loads bundles.

A bundle is a directory ``<models_dir>/<version>/`` holding numpy archives, a manifest with
the sha256 of every file, and optional attachments (e.g. the quarantine file). The file
``<models_dir>/current`` names the version being served; it is replaced atomically only after
the bundle directory is complete, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, get_args, get_type_hints

import msgspec
import numpy as np
from numpy.typing import NDArray

from recsvc.errors import BundleCorrupt, BundleNotFound
from recsvc.manifest import BUNDLE_FORMAT, Counts, Manifest
from recsvc.schemas import ContentKind

# A customer owns an item from this net quantity on, in training and in the service alike: a
# line of 0.0001 (a fractional export artefact) owns nothing, half a unit or more rounds to one.
OWNED_QUANTITY = 0.5
MANIFEST_FILE = "manifest.json"
CONTENT_FILE = "content.json"  # the content catalog for website blocks (a JSON list)
# The rows training set aside, with source, file, record, reason and raw values (a CSV).
QUARANTINE_FILE = "quarantine.csv"
CURRENT_POINTER = "current"
_STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class BundleArrays:
    """Everything the service needs, indexed by matrix row (customer) and column (item).

    Raw ids stay in ``customer_ids`` / ``item_ids``; every other array refers to positions in
    them. ``owned_indptr``/``owned_indices``/``owned_quantity`` is a CSR list of the catalog
    items each customer holds and their net quantities (items grouped with them are owned
    too; see ``item_group``), with ``owned_weight``, the time-decayed purchase weight the
    models learned from, and ``owned_source``, the source (of ``source_names``; -1: none
    known) of the customer's latest purchase of it. ``neighbour_*`` is the item-item model
    (see training.itemitem), a CSR list over items: each item's neighbours, best first, with
    their positive weights. ``item_prior`` is added to a customer's standardised factor
    scores (see recsvc.ranker). ``prices`` is NaN where no price is known. ``item_group`` gives
    items that are one work (editions) the same value; ``item_min_tier`` is the lowest tier
    that may see an item; ``item_premium`` marks premium-priced items. Per customer: spend and
    orders (all time), spend in the tier window, first/last purchase (seconds since the epoch,
    0 = none), median days between orders (NaN: too few), usual order hour and weekday (and
    whether from their own orders), and their usual unit-price band. ``trigger_*`` list the
    CRM triggers that fired in training. ``alias_high``/``alias_low`` (sorted together) and
    ``alias_rows`` map the digest of every customer alias (see recsvc.identity) to its row.
    """

    customer_ids: NDArray[np.str_]
    item_ids: NDArray[np.str_]
    user_factors: NDArray[np.float32]
    item_factors: NDArray[np.float32]
    item_prior: NDArray[np.float32]
    owned_indptr: NDArray[np.int64]
    owned_indices: NDArray[np.int32]
    owned_quantity: NDArray[np.float32]
    owned_weight: NDArray[np.float32]
    owned_source: NDArray[np.int16]
    source_names: NDArray[np.str_]
    neighbour_indptr: NDArray[np.int64]
    neighbour_items: NDArray[np.int32]
    neighbour_scores: NDArray[np.float32]
    customer_spend: NDArray[np.float64]
    customer_orders: NDArray[np.int32]
    window_spend: NDArray[np.float64]
    first_purchase: NDArray[np.int64]
    last_purchase: NDArray[np.int64]
    median_interval_days: NDArray[np.float32]
    best_hour: NDArray[np.int8]
    best_weekday: NDArray[np.int8]
    timing_own: NDArray[np.bool_]
    price_low: NDArray[np.float32]
    price_high: NDArray[np.float32]
    titles: NDArray[np.str_]
    prices: NDArray[np.float64]
    item_group: NDArray[np.int32]
    item_min_tier: NDArray[np.int8]
    item_premium: NDArray[np.bool_]
    item_categories: NDArray[np.int64]  # bit i: the i-th of the manifest's catalog categories
    alias_high: NDArray[np.uint64]
    alias_low: NDArray[np.uint64]
    alias_rows: NDArray[np.int32]
    popular_items: NDArray[np.int32]
    popular_scores: NDArray[np.float32]
    trigger_rows: NDArray[np.int32]
    trigger_kinds: NDArray[np.str_]
    trigger_at: NDArray[np.int64]
    trigger_reasons: NDArray[np.str_]
    trigger_figures: NDArray[np.str_]  # JSON objects
    candidate_items: NDArray[np.int32]  # [C, K] each customer's best items, -1 padded
    candidate_scores: NDArray[np.float32]  # [C, K]
    # [C, K] the purchase that explains each candidate (recsvc.reasons): an offset into the
    # customer's owned items, -1 for none
    candidate_reasons: NDArray[np.int32]
    # Best sellers per segment ("country:Germany", "tier:gold"), a CSR list: segment i's
    # items, best first, are segment_items[segment_indptr[i]:segment_indptr[i + 1]]. Older
    # bundles have none.
    segment_names: NDArray[np.str_] = field(default_factory=lambda: np.array([], dtype=str))
    segment_indptr: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    segment_items: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    segment_scores: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def check(self) -> None:
        """Raise ValueError when the arrays do not describe one consistent model: an array of
        another dtype or number of dimensions than declared here, or lengths and indices
        that disagree."""
        for name, scalar in DTYPES.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype.type is not scalar:
                found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise ValueError(f"{name} is {found}, expected {np.dtype(scalar).name}")
            dimensions = 2 if name in MATRICES else 1
            if array.ndim != dimensions:
                raise ValueError(f"{name} has {array.ndim} dimensions, expected {dimensions}")
        n_customers, n_items = len(self.customer_ids), len(self.item_ids)
        if len(self.owned_indptr) != n_customers + 1:
            raise ValueError(
                f"owned_indptr length is {len(self.owned_indptr)}, expected {n_customers + 1}"
            )
        for name in ("owned_indptr", "neighbour_indptr"):
            indptr = getattr(self, name)
            if not len(indptr) or indptr[0] != 0 or (np.diff(indptr) < 0).any():
                raise ValueError(f"{name} does not start at 0 and rise")
        lengths = {name: n_customers for name in PER_CUSTOMER} | {
            name: n_items for name in PER_ITEM
        }
        lengths |= {"owned_indices": int(self.owned_indptr[-1])}
        lengths |= {
            name: len(self.owned_indices)
            for name in ("owned_quantity", "owned_weight", "owned_source")
        }
        lengths |= {"neighbour_indptr": n_items + 1}
        lengths |= {"neighbour_items": int(self.neighbour_indptr[-1])}
        lengths |= {"neighbour_scores": len(self.neighbour_items)}
        lengths |= {name: len(self.alias_high) for name in ("alias_low", "alias_rows")}
        lengths |= {"popular_scores": len(self.popular_items)}
        lengths |= {name: len(self.trigger_rows) for name in TRIGGER_ARRAYS}
        for name, expected in lengths.items():
            actual = len(getattr(self, name))
            if actual != expected:
                raise ValueError(f"{name} length is {actual}, expected {expected}")
        if self.user_factors.shape[1] != self.item_factors.shape[1]:
            raise ValueError("user and item factors differ in width")
        if len(self.segment_indptr) != len(self.segment_names) + 1:
            raise ValueError("segment_indptr length is not one more than segment_names'")
        if (
            self.segment_indptr[0] != 0
            or (np.diff(self.segment_indptr) < 0).any()
            or self.segment_indptr[-1] != len(self.segment_items)
            or len(self.segment_scores) != len(self.segment_items)
        ):
            raise ValueError("segment_indptr does not delimit segment_items and segment_scores")
        if (
            not self.candidate_items.shape
            == self.candidate_scores.shape
            == (self.candidate_reasons.shape)
        ):
            raise ValueError("candidate items, scores and reasons differ in shape")
        if self.candidate_reasons.size:
            history = np.diff(self.owned_indptr)[:, None]
            if ((self.candidate_reasons < -1) | (self.candidate_reasons >= history)).any():
                raise ValueError("candidate_reasons refers to purchases outside the customer's")
        for name, indices, size in (
            ("owned_indices", self.owned_indices, n_items),
            ("popular_items", self.popular_items, n_items),
            ("segment_items", self.segment_items, n_items),
            ("neighbour_items", self.neighbour_items, n_items),
            ("alias_rows", self.alias_rows, n_customers),
            ("trigger_rows", self.trigger_rows, n_customers),
        ):
            if len(indices) and (indices.min() < 0 or indices.max() >= size):
                raise ValueError(f"{name} refers to rows outside the bundle")
        if len(self.owned_source) and (
            self.owned_source.min() < -1 or self.owned_source.max() >= len(self.source_names)
        ):
            raise ValueError("owned_source refers to sources outside source_names")
        if self.candidate_items.size and (
            self.candidate_items.min() < -1 or self.candidate_items.max() >= n_items
        ):
            raise ValueError("candidate_items refers to items outside the bundle")
        if len(self.alias_high) > 1:
            order = np.lexsort((self.alias_low, self.alias_high))
            if (order != np.arange(len(order))).any():
                raise ValueError("alias digests are not sorted")


CUSTOMER_FIGURES = (
    "customer_spend",
    "customer_orders",
    "window_spend",
    "first_purchase",
    "last_purchase",
    "median_interval_days",
    "best_hour",
    "best_weekday",
    "timing_own",
    "price_low",
    "price_high",
)
OWNED = ("owned_indptr", "owned_indices", "owned_quantity", "owned_weight", "owned_source")
CATALOG = ("titles", "prices", "item_group", "item_min_tier", "item_premium", "item_categories")
TRIGGER_ARRAYS = ("trigger_kinds", "trigger_at", "trigger_reasons", "trigger_figures")
CANDIDATES = ("candidate_items", "candidate_scores", "candidate_reasons")
SEGMENTS = ("segment_names", "segment_indptr", "segment_items", "segment_scores")
PER_CUSTOMER = ("user_factors", *CUSTOMER_FIGURES, *CANDIDATES)
PER_ITEM = ("item_factors", "item_prior", *CATALOG)
MATRICES = ("user_factors", "item_factors", *CANDIDATES)  # two dimensions; the rest one


def _declared_dtypes() -> dict[str, type[np.generic]]:
    """Each array's scalar type, as BundleArrays declares it (``NDArray[np.float32]``)."""
    declared: dict[str, type[np.generic]] = {}
    for name, hint in get_type_hints(BundleArrays).items():
        (scalar,) = get_args(get_args(hint)[1])
        declared[name] = scalar
    return declared


DTYPES = _declared_dtypes()

# Which array lives in which file: the single definition of the on-disk layout.
ARRAY_FILES: dict[str, tuple[str, ...]] = {
    "ids.npz": ("customer_ids", "item_ids", "source_names"),
    "factors.npz": ("user_factors", "item_factors", "item_prior"),
    "owned.npz": (
        "owned_indptr",
        "owned_indices",
        "owned_quantity",
        "owned_weight",
        "owned_source",
    ),
    "neighbours.npz": ("neighbour_indptr", "neighbour_items", "neighbour_scores"),
    "customers.npz": CUSTOMER_FIGURES,
    "catalog.npz": CATALOG,
    "aliases.npz": ("alias_high", "alias_low", "alias_rows"),
    "popular.npz": ("popular_items", "popular_scores"),
    "triggers.npz": ("trigger_rows", *TRIGGER_ARRAYS),
    "candidates.npz": CANDIDATES,
    "segments.npz": SEGMENTS,
}
OPTIONAL_FILES = frozenset({"segments.npz"})  # a bundle written before them loads without


@dataclass(frozen=True)
class Bundle:
    """A verified bundle loaded into memory."""

    path: Path
    manifest: Manifest
    arrays: BundleArrays
    content: list[dict[str, Any]]

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def categories(self) -> list[str]:
        """The catalog's category names; bit i of an item's mask is the i-th."""
        return list(self.manifest.catalog.categories)


def new_version(fingerprint: str, now: datetime | None = None) -> str:
    """A sortable, unique-per-data version name: UTC time plus a prefix of the data fingerprint."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}Z-{fingerprint[:8]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish_bundle(
    models_dir: Path,
    version: str,
    arrays: BundleArrays,
    manifest: Manifest,
    attachments: Mapping[str, Path] | None = None,
) -> Path:
    """Write a complete bundle, then point ``current`` at it. Returns the bundle directory.

    ``manifest``'s format, version, created, counts and files are set here. ``attachments``
    are extra files (name -> existing path) copied into the bundle and covered by the
    checksums. The bundle is staged in a hidden directory and renamed into place, and
    the pointer is replaced with an atomic rename, so a crash leaves the previous bundle served.
    """
    arrays.check()
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version
    if final.exists():
        raise FileExistsError(f"bundle {final} already exists")
    staging = models_dir / f"{_STAGING_PREFIX}{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        for file_name, array_names in ARRAY_FILES.items():
            with (staging / file_name).open("wb") as handle:
                np.savez(handle, **{name: getattr(arrays, name) for name in array_names})
        for file_name, source in (attachments or {}).items():
            shutil.copyfile(source, staging / file_name)
        checksums = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        full_manifest = msgspec.structs.replace(
            manifest,
            format=BUNDLE_FORMAT,
            version=version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            counts=Counts(customers=len(arrays.customer_ids), items=len(arrays.item_ids)),
            files=checksums,
        )
        (staging / MANIFEST_FILE).write_bytes(full_manifest.encode())
        _fsync_tree(staging)
        staging.rename(final)
        fsync_dir(models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    point_current(models_dir, version)
    return final


def point_current(models_dir: Path, version: str) -> None:
    """Atomically make ``version`` the bundle that loaders pick up."""
    if not (models_dir / version / MANIFEST_FILE).is_file():
        raise BundleNotFound(f"{models_dir / version} is not a published bundle")
    temporary = models_dir / f".{CURRENT_POINTER}.{os.getpid()}"
    with temporary.open("w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, models_dir / CURRENT_POINTER)
    fsync_dir(models_dir)


def current_version(models_dir: Path) -> str:
    pointer = models_dir / CURRENT_POINTER
    try:
        version = pointer.read_text().strip()
    except FileNotFoundError:
        raise BundleNotFound(
            f"no bundle published in {models_dir} ({pointer} is missing)"
        ) from None
    if not version or "/" in version or version.startswith("."):
        raise BundleCorrupt(f"{pointer}: does not name a bundle version")
    return version


def load_current(models_dir: Path) -> Bundle:
    """Load and verify the bundle that ``current`` points at."""
    return load_bundle(models_dir / current_version(models_dir))


def load_bundle(path: Path) -> Bundle:
    """Load a bundle, verifying its manifest, every checksum and the array shapes.

    Raises BundleNotFound when the directory does not exist and BundleCorrupt, naming the
    file, for anything else that is wrong.
    """
    if not path.is_dir():
        raise BundleNotFound(f"bundle directory {path} does not exist")
    manifest = _read_manifest(path)
    listed = manifest.files
    for file_name in ARRAY_FILES.keys() - OPTIONAL_FILES:
        if file_name not in listed:
            raise BundleCorrupt(f"{path / MANIFEST_FILE}: does not list {file_name}")
    for file_name, expected in listed.items():
        _verify(path / file_name, expected)
    loaded: dict[str, NDArray[Any]] = {}
    for file_name, array_names in ARRAY_FILES.items():
        if file_name not in listed:  # optional, and absent: the arrays' defaults
            continue
        loaded |= _read_archive(path / file_name, array_names)
    arrays = BundleArrays(**loaded)
    try:
        arrays.check()
    except Exception as error:
        raise BundleCorrupt(f"{path}: inconsistent arrays: {_describe(error)}") from error
    content: list[dict[str, Any]] = []
    if CONTENT_FILE in listed:
        try:
            content = json.loads((path / CONTENT_FILE).read_text(encoding="utf-8"))
        except Exception as error:
            message = f"{path / CONTENT_FILE}: unreadable ({_describe(error)})"
            raise BundleCorrupt(message) from error
        if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
            raise BundleCorrupt(f"{path / CONTENT_FILE}: is not a list of objects")
        _check_content(path / CONTENT_FILE, content)
    return Bundle(path=path, manifest=manifest, arrays=arrays, content=content)


def load_arrays(path: Path, names: tuple[str, ...]) -> tuple[Manifest, dict[str, NDArray[Any]]]:
    """The manifest and only the arrays ``names`` of a bundle (say, an earlier one to
    compare with), each file read verified against the manifest's checksum; BundleCorrupt
    or BundleNotFound as for ``load_bundle``."""
    if not path.is_dir():
        raise BundleNotFound(f"bundle directory {path} does not exist")
    manifest = _read_manifest(path)
    loaded: dict[str, NDArray[Any]] = {}
    for file_name, array_names in ARRAY_FILES.items():
        wanted = tuple(name for name in array_names if name in names)
        if wanted:
            _verify(path / file_name, manifest.files.get(file_name))
            loaded |= _read_archive(path / file_name, wanted)
    for name in names:
        if name not in loaded:
            raise BundleCorrupt(f"{path}: holds no array {name!r}")
    return manifest, loaded


def _verify(file_path: Path, expected: str | None) -> None:
    if expected is None or not file_path.is_file():
        raise BundleCorrupt(f"{file_path}: missing")
    if sha256_file(file_path) != expected:
        raise BundleCorrupt(f"{file_path}: sha256 does not match the manifest")


def _read_archive(file_path: Path, names: tuple[str, ...]) -> dict[str, NDArray[Any]]:
    """The arrays ``names`` of one numpy archive. A file whose checksum matches can still be
    unreadable (written wrong, or by another tool): whatever numpy, zipfile or zlib raise
    for it, it is a corrupt bundle."""
    try:
        # Opened here: numpy leaves a file it opened itself open when zipfile fails on it.
        with file_path.open("rb") as handle:
            with np.load(handle, allow_pickle=False) as archive:
                return {name: archive[name] for name in names}
    except Exception as error:
        raise BundleCorrupt(f"{file_path}: unreadable ({_describe(error)})") from error


def bundle_versions(models_dir: Path) -> list[str]:
    """The published bundles in ``models_dir`` (not verified), newest first: by the time their
    manifest says they were created, then by version name."""
    found: list[tuple[str, str]] = []
    for path in models_dir.iterdir() if models_dir.is_dir() else ():
        if path.name.startswith(".") or not (path / MANIFEST_FILE).is_file():
            continue
        try:
            created = str(json.loads((path / MANIFEST_FILE).read_text()).get("created", ""))
        except Exception:  # unreadable: sorted last, and refused when tried
            created = ""
        found.append((created, path.name))
    return [name for _, name in sorted(found, reverse=True)]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class ContentItem(msgspec.Struct, frozen=True):
    """What a block needs of a content item (the trainer checks more, with clearer words);
    a bundle whose items lack it is refused rather than failing every block that shows one."""

    id: str
    kind: ContentKind
    title: str
    body: str
    url: str
    image: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    tiers: list[str] = msgspec.field(default_factory=list)
    valid_from: str | None = None
    valid_to: str | None = None


def _check_content(path: Path, content: list[dict[str, Any]]) -> None:
    for position, raw in enumerate(content):
        try:
            item = msgspec.convert(raw, ContentItem)
            for moment in (item.valid_from, item.valid_to):
                if moment:
                    date.fromisoformat(moment)
        except (msgspec.ValidationError, ValueError) as error:
            raise BundleCorrupt(f"{path}: item {position}: {error}") from error


def _read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleCorrupt(f"{manifest_path}: missing") from None
    except Exception as error:
        raise BundleCorrupt(f"{manifest_path}: unreadable ({_describe(error)})") from error
    try:
        manifest = Manifest.decode(raw)
    except BundleCorrupt as error:
        raise BundleCorrupt(f"{manifest_path}: {error}") from None
    if manifest.version != path.name:
        raise BundleCorrupt(f"{manifest_path}: version {manifest.version!r} != {path.name}")
    return manifest


def _fsync_tree(directory: Path) -> None:
    for file_path in directory.iterdir():
        with file_path.open("rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
