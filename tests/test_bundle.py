"""Bundle format: round trip, verification, atomic publication."""

from __future__ import annotations

import io
import json
import mmap
import multiprocessing
import os
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from recsvc.bundle import (
    ARRAY_FILES,
    CURRENT_POINTER,
    FORMAT_3_FILES,
    MANIFEST_FILE,
    MAPPED,
    BundleArrays,
    VerificationRecords,
    bundle_versions,
    current_version,
    load_bundle,
    load_current,
    publish_bundle,
    sha256_file,
)
from recsvc.errors import BundleCorrupt, BundleNotFound
from recsvc.identity import IdentityKey, alias_table
from recsvc.manifest import BUNDLE_FORMAT, Manifest
from recsvc.registry import ModelRegistry
from training.tiers import empty_crm


def tiny_arrays(scale: float = 1.0) -> BundleArrays:
    return BundleArrays(
        **empty_crm(2, 3),
        customer_ids=np.array(["c1", "c2"]),
        item_ids=np.array(["i1", "i2", "i3"]),
        user_factors=np.ones((2, 4), dtype=np.float32) * scale,
        item_factors=np.arange(12, dtype=np.float32).reshape(3, 4),
        item_prior=np.zeros(3, dtype=np.float32),
        owned_indptr=np.array([0, 1, 1], dtype=np.int64),
        owned_indices=np.array([2], dtype=np.int32),
        owned_quantity=np.array([1.0], dtype=np.float32),
        owned_weight=np.array([0.5], dtype=np.float32),
        owned_source=np.array([0], dtype=np.int16),
        source_names=np.array(["shop"]),
        neighbour_indptr=np.array([0, 1, 2, 2], dtype=np.int64),
        neighbour_items=np.array([2, 0], dtype=np.int32),
        neighbour_scores=np.array([0.5, 0.25], dtype=np.float32),
        customer_spend=np.array([10.0, 0.0]),
        customer_orders=np.array([1, 0], dtype=np.int32),
        titles=np.array(["One", "Two", "Thrée"]),
        prices=np.array([1.0, np.nan, 3.5]),
        item_group=np.array([0, 1, 1], dtype=np.int32),
        **dict(
            zip(
                ("alias_high", "alias_low", "alias_rows"),
                alias_table(
                    IdentityKey.development_key(), {"id:c1": "c1", "id:c2": "c2"}, ["c1", "c2"]
                ),
                strict=True,
            )
        ),
        popular_items=np.array([1, 0, 2], dtype=np.int32),
        popular_scores=np.array([3.0, 2.0, 1.0], dtype=np.float32),
        candidate_items=np.array([[1, 0], [2, -1]], dtype=np.int32),
        candidate_scores=np.array([[2.0, 1.0], [1.0, -np.inf]], dtype=np.float32),
        candidate_reasons=np.array([[0, -1], [-1, -1]], dtype=np.int32),
    )


def test_layout_covers_every_array() -> None:
    on_disk = {name for names in ARRAY_FILES.values() for name in names}
    assert on_disk == {field.name for field in fields(BundleArrays)}


def test_round_trip(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest(model="als"))
    bundle = load_current(tmp_path)
    assert bundle.version == "v1" and bundle.path == path
    assert bundle.manifest.model == "als"
    assert set(bundle.manifest.files) == set(ARRAY_FILES)
    np.testing.assert_array_equal(bundle.arrays.prices, tiny_arrays().prices)
    assert bundle.arrays.titles[2] == "Thrée"


def test_no_bundle_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFound, match="current"):
        load_current(tmp_path)


@pytest.mark.parametrize("damage", ["flip_byte", "delete", "truncate"])
@pytest.mark.parametrize("file_name", ["factors.npz", "user_factors.npy", "candidate_items.npy"])
def test_corrupt_file_is_refused_by_name(tmp_path: Path, damage: str, file_name: str) -> None:
    """An archive read into memory or a file memory-mapped: refused alike, naming it."""
    path = publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    target = path / file_name
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(BundleCorrupt, match=file_name):
        load_bundle(path)
    with pytest.raises(BundleCorrupt, match=file_name):
        load_bundle(path, VerificationRecords(tmp_path / "verified"))


def test_manifest_edits_are_refused(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["files"]["owned_indices.npy"]
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleCorrupt, match="owned_indices.npy"):
        load_bundle(path)
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleCorrupt, match=MANIFEST_FILE):
        load_bundle(path)


def test_a_minimal_manifest_loads_with_default_sections(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    minimal = {key: manifest[key] for key in ("format", "version", "files")}
    (path / MANIFEST_FILE).write_text(json.dumps(minimal))
    loaded = load_bundle(path).manifest
    assert loaded.tiers.lapsing_factor == 2.0 and loaded.tiers.thank_you_spend is None
    assert loaded.identity.key_fingerprint is None and loaded.channels.slots


def test_a_manifest_section_of_the_wrong_shape_is_refused_naming_it(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["tiers"]["thank_you_spend"] = "lots"
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(
        BundleCorrupt, match=r"manifest.json: not a bundle manifest: .*tiers\.thank_you_spend"
    ):
        load_bundle(path)
    manifest["format"] = BUNDLE_FORMAT + 1
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    found = f"format {BUNDLE_FORMAT + 1}, this service reads formats 3 and {BUNDLE_FORMAT}"
    with pytest.raises(BundleCorrupt, match=found):
        load_bundle(path)


def test_inconsistent_arrays_are_not_published(tmp_path: Path) -> None:
    arrays = tiny_arrays()
    broken = BundleArrays(**{**arrays.__dict__, "prices": np.array([1.0])})
    with pytest.raises(ValueError, match="prices length"):
        publish_bundle(tmp_path, "v1", broken, Manifest())
    assert not any(tmp_path.iterdir())


def test_failed_publish_leaves_current_untouched(tmp_path: Path) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    with pytest.raises(FileNotFoundError):
        publish_bundle(
            tmp_path, "v2", tiny_arrays(), Manifest(), attachments={"q.csv": tmp_path / "nope"}
        )
    assert current_version(tmp_path) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT_POINTER, "v1"]


def test_registry_keeps_serving_previous_bundle_when_new_one_is_corrupt(tmp_path: Path) -> None:
    publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())
    registry = ModelRegistry(tmp_path)
    assert registry.load()
    path = publish_bundle(tmp_path, "v2", tiny_arrays(2.0), Manifest())
    (path / "ids.npz").write_bytes(b"garbage")

    assert not registry.load()

    assert registry.model is not None and registry.model.version == "v1"
    assert registry.last_error is not None and "ids.npz" in registry.last_error


def rewrite(path: Path, file_name: str, data: bytes) -> None:
    """Replace one file of a published bundle and its checksum, as if written so."""
    (path / file_name).write_bytes(data)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["files"][file_name] = sha256_file(path / file_name)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def unreadable_files(arrays: BundleArrays) -> dict[str, tuple[str, bytes]]:
    """Ways a file whose checksum matches can still not be a bundle's, by name: (file, data)."""
    factors = {name: getattr(arrays, name) for name in ARRAY_FILES["factors.npz"]}
    valid = npz(**factors)
    return {
        "not_npz": ("factors.npz", b"not a numpy archive"),
        "broken_zip": ("factors.npz", b"PK\x03\x04" + b"\x00" * 64),
        "truncated_zip": ("factors.npz", valid[: len(valid) // 2]),
        "missing_array": ("factors.npz", npz(item_factors=arrays.item_factors)),
        "wrong_dtype": (
            "factors.npz",
            npz(**{**factors, "item_factors": arrays.item_factors.astype(np.float64)}),
        ),
        "wrong_shape": (
            "factors.npz",
            npz(**{**factors, "item_prior": arrays.item_prior.reshape(-1, 1)}),
        ),
        "pickled_object": (
            "ids.npz",
            npz(
                item_ids=np.array([{"a": 1}, None, 3], dtype=object),
                source_names=arrays.source_names,
            ),
        ),
        # Memory-mapped files
        "not_npy": ("user_factors.npy", b"not a numpy file"),
        "truncated_npy": ("user_factors.npy", npy(arrays.user_factors)[:-4]),
        "npy_wrong_dtype": ("user_factors.npy", npy(arrays.user_factors.astype(np.float64))),
        "npy_wrong_shape": ("candidate_items.npy", npy(arrays.candidate_items[:1])),
        "empty_indptr": ("owned_indptr.npy", npy(np.zeros(0, np.int64))),
        "npy_pickled_object": ("customer_ids.npy", npy(np.array([{"a": 1}, None], dtype=object))),
        "npy_row_outside": ("alias_rows.npy", npy(arrays.alias_rows + 5)),
        "content_not_json": ("content.json", b"\xff\xfe not json"),
        "content_not_a_list": ("content.json", b'{"a": 1}'),
        # Trained before content was checked at training: every block showing it would fail.
        "content_image_a_number": (
            "content.json",
            b'[{"id": "a", "kind": "offer", "title": "t", "body": "", "url": "/x", "image": 5}]',
        ),
        "content_bad_date": (
            "content.json",
            b'[{"id": "a", "kind": "offer", "title": "t", "body": "", "url": "/x",'
            b' "valid_to": "2026-13-01"}]',
        ),
    }


@pytest.mark.parametrize("damage", sorted(unreadable_files(tiny_arrays())))
def test_a_checksummed_file_that_cannot_be_read_is_corrupt(tmp_path: Path, damage: str) -> None:
    content = tmp_path / "content.json"
    content.write_text("[]")
    path = publish_bundle(
        tmp_path, "v1", tiny_arrays(), Manifest(), attachments={"content.json": content}
    )
    file_name, data = unreadable_files(tiny_arrays())[damage]
    rewrite(path, file_name, data)
    with pytest.raises(BundleCorrupt, match=file_name if "content" in damage else "v1"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("customer_orders", np.array([1, 0], dtype=np.int64), "customer_orders is int64"),
        ("titles", np.array([1, 2, 3]), "titles is int64, expected str"),
        ("user_factors", np.ones(2, dtype=np.float32), "user_factors has 1 dimensions"),
        ("candidate_items", np.array([[1, 7], [2, -1]], dtype=np.int32), "candidate_items"),
        ("neighbour_items", np.array([2, 3], dtype=np.int32), "neighbour_items refers"),
        ("candidate_reasons", np.array([[0, 1], [-1, -1]], dtype=np.int32), "outside"),
        ("neighbour_indptr", np.array([0, 1, 2], dtype=np.int64), "neighbour_indptr length"),
        ("owned_source", np.array([1], dtype=np.int16), "owned_source refers"),
        ("owned_indptr", np.array([0, 1, 0], dtype=np.int64), "owned_indptr does not start"),
        ("alias_high", np.array([9, 1], dtype=np.uint64), "alias digests are not sorted"),
    ],
)
def test_arrays_of_another_dtype_or_shape_are_not_published(
    tmp_path: Path, name: str, value: np.ndarray, message: str
) -> None:
    broken = BundleArrays(**{**tiny_arrays().__dict__, name: value})
    with pytest.raises(ValueError, match=message):
        publish_bundle(tmp_path, "v1", broken, Manifest())


def test_bundle_versions_lists_published_bundles_newest_first(tmp_path: Path) -> None:
    for version in ("v1", "v3", "v2"):
        publish_bundle(tmp_path, version, tiny_arrays(), Manifest())
    (tmp_path / ".staging-v4-1").mkdir()
    (tmp_path / "stray").mkdir()
    # v1 claims to be the newest; v3 and v2 were created at one moment, so their names
    # decide. Written, not left to the clock: two publishes can fall in one second or not.
    for version, created in (("v1", "2999"), ("v2", "2020"), ("v3", "2020")):
        manifest = json.loads((tmp_path / version / MANIFEST_FILE).read_text())
        manifest["created"] = f"{created}-01-01T00:00:00+00:00"
        (tmp_path / version / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert bundle_versions(tmp_path) == ["v1", "v3", "v2"]
    assert bundle_versions(tmp_path / "nothing-here") == []


def test_per_customer_arrays_are_memory_mapped_and_item_arrays_in_memory(tmp_path: Path) -> None:
    arrays = load_bundle(publish_bundle(tmp_path, "v1", tiny_arrays(), Manifest())).arrays
    for name in MAPPED:
        assert memory_mapped(getattr(arrays, name)), name
        assert not getattr(arrays, name).flags.writeable, name
    for name in ("item_ids", "item_factors", "titles", "popular_items", "segment_items"):
        assert not memory_mapped(getattr(arrays, name)), name


def memory_mapped(array: np.ndarray) -> bool:
    """Whether the array's memory is a file's mapping (somewhere down its chain of bases)."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap)


def test_a_host_verifies_a_bundle_once(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path / "models", "v1", tiny_arrays(), Manifest())
    records = VerificationRecords(tmp_path / "verified")
    assert load_bundle(path, records).verified_now  # the first load on this host checks it all
    assert not load_bundle(path, records).verified_now  # the next ones trust the record
    assert load_bundle(path).verified_now  # without records: every load checks
    assert (tmp_path / "verified").stat().st_mode & 0o777 == 0o700

    # A file rewritten since (same size, bytes changed): its stats differ, it is checked again.
    target = path / "candidate_scores.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    later = target.stat().st_mtime_ns + 1_000_000_000  # whatever the clock's granularity
    os.utime(target, ns=(later, later))
    with pytest.raises(BundleCorrupt, match="candidate_scores.npy: sha256"):
        load_bundle(path, records)


def test_records_in_a_directory_others_can_write_are_not_trusted(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path / "models", "v1", tiny_arrays(), Manifest())
    shared = tmp_path / "verified"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    records = VerificationRecords(shared)
    assert load_bundle(path, records).verified_now
    assert load_bundle(path, records).verified_now
    assert not any(shared.iterdir())


def verified_now(path: Path, records: Path) -> bool:
    return load_bundle(path, VerificationRecords(records)).verified_now


def test_of_processes_loading_a_bundle_at_once_one_verifies_it(tmp_path: Path) -> None:
    path = publish_bundle(tmp_path / "models", "v1", tiny_arrays(), Manifest())
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        found = list(pool.map(verified_now, [path] * 3, [tmp_path / "verified"] * 3))
    assert sorted(found) == [False, False, True]


def publish_format_3(models_dir: Path, version: str, arrays: BundleArrays) -> Path:
    """A bundle as format 3 wrote them: every array in a .npz archive."""
    path = models_dir / version
    path.mkdir(parents=True)
    for file_name, names in FORMAT_3_FILES.items():
        (path / file_name).write_bytes(npz(**{name: getattr(arrays, name) for name in names}))
    files = {p.name: sha256_file(p) for p in sorted(path.iterdir())}
    manifest = {"format": 3, "version": version, "files": files}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    (models_dir / CURRENT_POINTER).write_text(version + "\n")
    return path


def test_a_format_3_bundle_still_loads_into_memory(tmp_path: Path) -> None:
    publish_format_3(tmp_path, "v1", tiny_arrays())
    bundle = load_current(tmp_path, VerificationRecords(tmp_path / "verified"))
    assert bundle.manifest.format == 3
    assert not memory_mapped(bundle.arrays.user_factors)
    np.testing.assert_array_equal(bundle.arrays.candidate_items, tiny_arrays().candidate_items)
    assert ModelRegistry(tmp_path).load()
    (tmp_path / "v1" / "owned.npz").write_bytes(b"garbage")
    with pytest.raises(BundleCorrupt, match="owned.npz"):
        load_current(tmp_path)


def test_publish_streams_memory_mapped_arrays(tmp_path: Path) -> None:
    """A trainer may hand over per-customer arrays larger than memory as np.memmap files:
    publishing writes them without reading any whole into memory."""
    customers, width = 200_000, 64

    def mapped(name: str, shape: tuple[int, ...], dtype: type, fill: float) -> np.memmap:
        array = np.lib.format.open_memmap(tmp_path / f"{name}.npy", "w+", dtype, shape)
        array[:] = fill
        return array

    arrays = BundleArrays(
        **{
            **tiny_arrays().__dict__,
            **empty_crm(customers, 3),
            "customer_ids": np.char.add("c", np.arange(customers).astype(str)),
            "item_factors": np.ones((3, width), np.float32),
            "user_factors": mapped("user_factors", (customers, width), np.float32, 0.5),
            "owned_indptr": np.zeros(customers + 1, np.int64),
            "owned_indices": np.zeros(0, np.int32),
            "owned_quantity": np.zeros(0, np.float32),
            "owned_weight": np.zeros(0, np.float32),
            "owned_source": np.zeros(0, np.int16),
            "customer_spend": np.zeros(customers),
            "customer_orders": np.zeros(customers, np.int32),
            "alias_high": np.zeros(0, np.uint64),
            "alias_low": np.zeros(0, np.uint64),
            "alias_rows": np.zeros(0, np.int32),
            "candidate_items": mapped("candidate_items", (customers, 3), np.int32, 1),
            "candidate_scores": mapped("candidate_scores", (customers, 3), np.float32, 1.0),
            "candidate_reasons": mapped("candidate_reasons", (customers, 3), np.int32, -1),
        }
    )
    mapped_bytes = arrays.user_factors.nbytes + 3 * arrays.candidate_items.nbytes
    tracemalloc.start()
    try:
        path = publish_bundle(tmp_path / "models", "v1", arrays, Manifest())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < mapped_bytes / 4, f"peak {peak:,} bytes for {mapped_bytes:,} mapped"
    loaded = load_bundle(path).arrays
    assert loaded.user_factors.shape == (customers, width) and loaded.user_factors[-1, -1] == 0.5
    np.testing.assert_array_equal(loaded.candidate_reasons[-1], [-1, -1, -1])
