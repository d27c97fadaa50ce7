"""The model bundle format: the one module that writes, verifies and loads bundles.

A bundle is a directory ``<models_dir>/<version>/`` holding numpy files, a manifest with
the sha256 of every file, and optional attachments (e.g. the quarantine file). The file
``<models_dir>/current`` names the version being served; it is replaced atomically only after
the bundle directory is complete, so a reader never sees a half-written bundle.

Format 4 stores every array whose length grows with the customers, their purchases, aliases
or triggers (and the item-item lists) as one uncompressed ``.npy`` file each, which loading
maps read-only: every worker of a host reads the same pages of the page cache, so a host
holds them once however many workers it runs. The catalog-sized arrays sit in ``.npz``
archives and are read into each worker's memory. A published bundle is never modified in
place (a file shrunk under a mapping would crash the processes reading it); it is replaced by
publishing another. Format 3 bundles (every array in a ``.npz``) still load, into memory.

Checking a bundle (every checksum, then the arrays' consistency) reads all of it. A host
does it once per bundle: the first process to load it records the fact under a lock in a
host-local directory (``VerificationRecords``), and the others trust that record for as long
as every file's identity, size and times are as recorded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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

log = logging.getLogger(__name__)

# A customer owns an item from this net quantity on, in training and in the service alike: a
# line of 0.0001 (a fractional export artefact) owns nothing, half a unit or more rounds to one.
OWNED_QUANTITY = 0.5
MANIFEST_FILE = "manifest.json"
CONTENT_FILE = "content.json"  # the content catalog for website blocks (a JSON list)
# The rows training set aside, with source, file, record, reason and raw values (a CSV).
QUARANTINE_FILE = "quarantine.csv"
CURRENT_POINTER = "current"
_STAGING_PREFIX = ".staging-"
_CHECK_ROWS = 1 << 16  # customers checked at a time


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
            if not len(indptr) or indptr[0] != 0 or not _sorted(indptr):
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
        # A block of rows at a time: the arrays may be memory-mapped files larger than memory.
        for start in range(0, n_customers if self.candidate_reasons.size else 0, _CHECK_ROWS):
            history = np.diff(self.owned_indptr[start : start + _CHECK_ROWS + 1])[:, None]
            reasons = self.candidate_reasons[start : start + _CHECK_ROWS]
            if ((reasons < -1) | (reasons >= history)).any():
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
        if not _sorted(self.alias_high, self.alias_low):
            raise ValueError("alias digests are not sorted")


def _sorted(first: NDArray[Any], second: NDArray[Any] | None = None) -> bool:
    """Whether ``first`` never falls (and, with ``second``, whether ``second`` never falls
    where ``first`` repeats): a block at a time, as the arrays may be mapped files larger
    than memory."""
    for start in range(0, max(len(first) - 1, 0), _CHECK_ROWS):
        block = first[start : start + _CHECK_ROWS + 1]
        if (block[1:] < block[:-1]).any():
            return False
        if second is not None:
            within = second[start : start + _CHECK_ROWS + 1]
            if ((block[1:] == block[:-1]) & (within[1:] < within[:-1])).any():
                return False
    return True


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

# Arrays whose length grows with customers, purchases, aliases or triggers, and the item-item
# lists: each is one .npy file, memory-mapped when loaded.
MAPPED = (
    "customer_ids",
    "user_factors",
    *OWNED,
    *CUSTOMER_FIGURES,
    *CANDIDATES,
    "neighbour_indptr",
    "neighbour_items",
    "neighbour_scores",
    "alias_high",
    "alias_low",
    "alias_rows",
    "trigger_rows",
    *TRIGGER_ARRAYS,
)
# Which array lives in which file: the single definition of the on-disk layout. A .npy file
# holds one array and is memory-mapped; a .npz archive's arrays are read into memory.
ARRAY_FILES: dict[str, tuple[str, ...]] = {
    "ids.npz": ("item_ids", "source_names"),
    "factors.npz": ("item_factors", "item_prior"),
    "catalog.npz": CATALOG,
    "popular.npz": ("popular_items", "popular_scores"),
    "segments.npz": SEGMENTS,
    **{f"{name}.npy": (name,) for name in MAPPED},
}
# Format 3's layout (every array in memory), still read.
FORMAT_3_FILES: dict[str, tuple[str, ...]] = {
    "ids.npz": ("customer_ids", "item_ids", "source_names"),
    "factors.npz": ("user_factors", "item_factors", "item_prior"),
    "owned.npz": OWNED,
    "neighbours.npz": ("neighbour_indptr", "neighbour_items", "neighbour_scores"),
    "customers.npz": CUSTOMER_FIGURES,
    "catalog.npz": CATALOG,
    "aliases.npz": ("alias_high", "alias_low", "alias_rows"),
    "popular.npz": ("popular_items", "popular_scores"),
    "triggers.npz": ("trigger_rows", *TRIGGER_ARRAYS),
    "candidates.npz": CANDIDATES,
    "segments.npz": SEGMENTS,
}
LAYOUTS = {3: FORMAT_3_FILES, BUNDLE_FORMAT: ARRAY_FILES}
OPTIONAL_FILES = frozenset({"segments.npz"})  # a format-3 bundle written before them loads


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, its per-customer arrays memory-mapped (format 4)."""

    path: Path
    manifest: Manifest
    arrays: BundleArrays
    content: list[dict[str, Any]]
    # False when this load trusted the host's record of an earlier verification.
    verified_now: bool = True

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def attachments(self) -> dict[str, Path]:
        """The bundle's files other than its arrays (quarantine, content), by name: what to
        pass to ``publish_bundle`` to publish its arrays again with them."""
        arrays = LAYOUTS[self.manifest.format]
        return {name: self.path / name for name in self.manifest.files if name not in arrays}

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
            _write(staging / file_name, {name: getattr(arrays, name) for name in array_names})
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


def _write(file_path: Path, arrays: dict[str, Any]) -> None:
    with file_path.open("wb") as handle:
        if file_path.suffix != ".npy":
            np.savez(handle, **arrays)
            return
        (array,) = arrays.values()
        # C order, so that a customer's row is one run of the mapped file. An np.memmap
        # (say, a trainer's array larger than memory) is written from its pages as they are,
        # never loaded whole.
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


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


def load_current(models_dir: Path, records: VerificationRecords | None = None) -> Bundle:
    """Load and verify the bundle that ``current`` points at."""
    return load_bundle(models_dir / current_version(models_dir), records)


def load_bundle(path: Path, records: VerificationRecords | None = None) -> Bundle:
    """Load a bundle, verifying its manifest, every checksum and the array shapes.

    ``records``: this host's record of the bundles already verified; a bundle it lists, with
    every file as it was then, is trusted without reading it all again. None: verify it all.
    Raises BundleNotFound when the directory does not exist and BundleCorrupt, naming the
    file, for anything else that is wrong.
    """
    if not path.is_dir():
        raise BundleNotFound(f"bundle directory {path} does not exist")
    manifest, raw = _read_manifest(path)
    layout = LAYOUTS[manifest.format]
    listed = manifest.files
    for file_name in layout.keys() - OPTIONAL_FILES:
        if file_name not in listed:
            raise BundleCorrupt(f"{path / MANIFEST_FILE}: does not list {file_name}")
    with _verification(records, path, raw, listed) as trusted:
        if not trusted:
            _verify_all(path, listed)
        loaded: dict[str, NDArray[Any]] = {}
        for file_name, array_names in layout.items():
            if file_name not in listed:  # optional, and absent: the arrays' defaults
                continue
            loaded |= _read_file(path / file_name, array_names)
        arrays = BundleArrays(**loaded)
        if not trusted:
            try:
                arrays.check()
            except Exception as error:
                raise BundleCorrupt(f"{path}: inconsistent arrays: {_describe(error)}") from error
        content: list[dict[str, Any]] = []
        if CONTENT_FILE in listed:
            content = _read_content(path / CONTENT_FILE)
    return Bundle(path, manifest, arrays, content, verified_now=not trusted)


def _read_content(file_path: Path) -> list[dict[str, Any]]:
    try:
        content = json.loads(file_path.read_text(encoding="utf-8"))
    except Exception as error:
        raise BundleCorrupt(f"{file_path}: unreadable ({_describe(error)})") from error
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        raise BundleCorrupt(f"{file_path}: is not a list of objects")
    _check_content(file_path, content)
    return content


def load_arrays(path: Path, names: tuple[str, ...]) -> tuple[Manifest, dict[str, NDArray[Any]]]:
    """The manifest and only the arrays ``names`` of a bundle (say, an earlier one to
    compare with), each file read verified against the manifest's checksum; BundleCorrupt
    or BundleNotFound as for ``load_bundle``."""
    if not path.is_dir():
        raise BundleNotFound(f"bundle directory {path} does not exist")
    manifest, _ = _read_manifest(path)
    loaded: dict[str, NDArray[Any]] = {}
    for file_name, array_names in LAYOUTS[manifest.format].items():
        wanted = tuple(name for name in array_names if name in names)
        if wanted:
            _verify(path / file_name, manifest.files.get(file_name))
            loaded |= _read_file(path / file_name, wanted)
    for name in names:
        if name not in loaded:
            raise BundleCorrupt(f"{path}: holds no array {name!r}")
    return manifest, loaded


class VerificationRecords:
    """The bundles verified on this host, in a host-local directory of this user's: one
    file per bundle (by its path and manifest digest) with each file's identity, size and
    times when it was verified. The first process to load a bundle verifies it and records
    it under a lock, which the others wait on; then they trust the record for as long as
    the files' stats match it. A file rewritten since (a different size, inode or time) is
    verified again; the directory can be emptied at any time."""

    def __init__(self, directory: Path | None = None) -> None:
        """``directory``: None, ``recsvc-verified-<uid>`` in the temporary directory."""
        self.directory = directory or Path(tempfile.gettempdir()) / f"recsvc-verified-{os.getuid()}"

    @contextmanager
    def verifying(self, path: Path, manifest: bytes, files: Mapping[str, str]) -> Iterator[bool]:
        """Yields whether the bundle at ``path`` is recorded as verified; when not, records it
        once the block completes (the block raises for a bundle that does not verify)."""
        directory = self._own_directory()
        if directory is None:
            yield False
            return
        name = hashlib.sha256(os.fsencode(path.resolve()) + b"\0" + manifest).hexdigest()
        record = directory / f"{name}.json"
        with (directory / f"{name}.lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
            stats = _file_stats(path, [MANIFEST_FILE, *files])
            try:
                trusted = json.loads(record.read_text()) == stats
            except (OSError, ValueError):
                trusted = False
            yield trusted
            if not trusted:
                temporary = directory / f".{name}.{os.getpid()}"
                temporary.write_text(json.dumps(stats))
                os.replace(temporary, record)

    def _own_directory(self) -> Path | None:
        """The directory, made if need be; None (verify everything) if it is not this
        user's alone: another could write a record that makes a corrupt bundle trusted."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
        except OSError as error:
            log.warning("bundles are verified in full by every process: %s", error)
            return None
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning(
                "bundles are verified in full by every process: %s is not this user's alone",
                self.directory,
            )
            return None
        return self.directory


@contextmanager
def _verification(
    records: VerificationRecords | None, path: Path, manifest: bytes, files: Mapping[str, str]
) -> Iterator[bool]:
    if records is None:
        yield False
    else:
        with records.verifying(path, manifest, files) as trusted:
            yield trusted


def _file_stats(path: Path, names: list[str]) -> dict[str, list[int] | None]:
    found: dict[str, list[int] | None] = {}
    for name in names:
        try:
            info = (path / name).stat()
        except OSError:
            found[name] = None
            continue
        found[name] = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    return found


def _verify_all(path: Path, files: Mapping[str, str]) -> None:
    """Every file's checksum, on a thread per core (hashlib lets go of the GIL): the first
    load on a host reads the whole bundle. Raises for the first file listed that fails."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(lambda name: _verify(path / name, files[name]), files):
            pass


def _verify(file_path: Path, expected: str | None) -> None:
    if expected is None or not file_path.is_file():
        raise BundleCorrupt(f"{file_path}: missing")
    if sha256_file(file_path) != expected:
        raise BundleCorrupt(f"{file_path}: sha256 does not match the manifest")


def _read_file(file_path: Path, names: tuple[str, ...]) -> dict[str, NDArray[Any]]:
    """The arrays ``names`` of one file: a .npy memory-mapped read-only, a .npz archive's read
    into memory. A file whose checksum matches can still be unreadable (written wrong, or by
    another tool): whatever numpy, zipfile or zlib raise for it, it is a corrupt bundle."""
    try:
        if file_path.suffix == ".npy":
            (name,) = names
            mapped = np.load(file_path, mmap_mode="r", allow_pickle=False)
            # A plain ndarray over the same pages: indexing an np.memmap runs Python code
            # (~1 us a time, and a request indexes a dozen arrays).
            return {name: mapped.view(np.ndarray)}
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


def _read_manifest(path: Path) -> tuple[Manifest, bytes]:
    """The manifest, and its text as read."""
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
    return manifest, raw


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
