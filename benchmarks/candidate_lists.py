"""Candidate-lists benchmark: the trainer's ``Ranker.candidate_lists`` on a bundle's first
customers, as ``training.pipeline.with_candidate_lists`` runs it, with each phase's time.

    python benchmarks/candidate_lists.py --bundle models/<version> [--customers 50000]
        [--threads 2] [--items 100000] [--out result.json] [--save lists.npz]
        [--compare lists.npz]

Phases are timed one thread at a time on a few batches (``--phase-batches``): the score
product, the item-item cells, the price penalty, the exclusion, the top k and the reasons.
``--save`` writes the lists; ``--compare`` fails unless they equal a saved run's exactly.
``--items`` widens the catalog to that many items with a random item side drawn like the
bundle's (factors, prior, prices resampled; 100 random neighbours per item; each purchase
moved to one of the items its own stands for), to see a larger catalog's costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsvc.bundle import BundleArrays, load_bundle  # noqa: E402
from recsvc.policy import TierTable  # noqa: E402
from recsvc.ranker import BATCH_SCORES, MAX_BATCH, Ranker, _best  # noqa: E402
from training.memory import give_back_freed_memory  # noqa: E402


def first_customers(arrays: BundleArrays, count: int) -> BundleArrays:
    """``arrays`` cut to its first ``count`` customers (the owned arrays stay whole: only
    ``owned_indptr`` is read to find a customer's)."""
    return dataclasses.replace(
        arrays,
        customer_ids=arrays.customer_ids[:count],
        user_factors=np.asarray(arrays.user_factors[:count]),
        owned_indptr=np.asarray(arrays.owned_indptr[: count + 1]),
        window_spend=np.asarray(arrays.window_spend[:count]),
        price_low=np.asarray(arrays.price_low[:count]),
        price_high=np.asarray(arrays.price_high[:count]),
    )


def wider_catalog(arrays: BundleArrays, n_items: int, seed: int = 0) -> BundleArrays:
    """``arrays`` with ``n_items`` items (at least its own count): see the module docstring."""
    rng = np.random.default_rng(seed)
    own = len(arrays.item_ids)
    drawn = rng.integers(0, own, n_items)
    noise = rng.normal(0.0, 0.1, (n_items, arrays.item_factors.shape[1])).astype(np.float32)
    neighbours = min(100, n_items - 1)
    # Distinct neighbours per item: offsets from it that rise by random gaps, below n_items.
    gaps = rng.integers(1, (n_items - 1) // neighbours + 1, (n_items, neighbours))
    offsets = np.cumsum(gaps, axis=1)
    targets = ((np.arange(n_items)[:, None] + offsets) % n_items).astype(np.int32)
    scores = -np.sort(-rng.random((n_items, neighbours)), axis=1).astype(np.float32)
    # Purchase of item i: item i * ratio plus a random offset below ratio (order kept).
    ratio = n_items // own
    moved = np.arange(own) * ratio + rng.integers(0, max(ratio, 1), own)
    return dataclasses.replace(
        arrays,
        item_ids=np.arange(n_items).astype(str),
        item_factors=arrays.item_factors[drawn] + noise,
        item_prior=arrays.item_prior[drawn],
        owned_indices=moved[arrays.owned_indices].astype(np.int32),
        neighbour_indptr=np.arange(0, n_items * neighbours + 1, neighbours, dtype=np.int64),
        neighbour_items=targets.reshape(-1),
        neighbour_scores=scores.reshape(-1),
        titles=np.arange(n_items).astype(str),
        prices=arrays.prices[drawn],
        item_group=np.arange(n_items, dtype=np.int32),
        item_min_tier=arrays.item_min_tier[drawn],
        item_premium=arrays.item_premium[drawn],
        item_categories=arrays.item_categories[drawn],
        popular_items=moved[arrays.popular_items].astype(np.int32),
        segment_items=moved[arrays.segment_items].astype(np.int32),
    )


def phases(ranker: Ranker, k: int, batches: int) -> dict[str, float]:
    """Seconds per phase over ``batches`` batches, one thread, summed. "user side" holds
    the item-item terms (the purchases' neighbours summed per cell); "cells and price" is
    what batch_scores adds to the product: those cells and the price penalty."""
    arrays = ranker.arrays
    count, n_items = len(arrays.customer_ids), len(arrays.item_ids)
    batch = min(MAX_BATCH, max(1, BATCH_SCORES // max(n_items, 1)))
    spent = dict.fromkeys(
        ("user side", "product", "cells and price", "exclusion", "top k", "reasons"), 0.0
    )
    for start in range(0, min(count, batches * batch), batch):
        rows = np.arange(start, min(start + batch, count))
        tiers = ranker.tiers.indices(arrays.window_spend[rows])
        began = time.perf_counter()
        user_side, _ = ranker._user_side(rows, tiers, True)  # with the item-item terms
        spent["user side"] += time.perf_counter() - began
        began = time.perf_counter()
        user_side @ ranker._item_side.T
        spent["product"] += time.perf_counter() - began
        began = time.perf_counter()
        block = ranker.batch_scores(rows, tiers)  # the whole: less the two parts above
        spent["cells and price"] += time.perf_counter() - began
        began = time.perf_counter()
        indptr, excluded = ranker._excluded_rows(rows)
        block[np.repeat(np.arange(len(rows)), np.diff(indptr)), excluded] = -np.inf
        spent["exclusion"] += time.perf_counter() - began
        began = time.perf_counter()
        items, _ = _best(block, k)
        spent["top k"] += time.perf_counter() - began
        began = time.perf_counter()
        ranker._candidate_reasons(rows, items)
        spent["reasons"] += time.perf_counter() - began
    spent["cells and price"] -= spent["user side"] + spent["product"]
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=None, help="default: the bundle's")
    parser.add_argument("--phase-batches", type=int, default=8)
    parser.add_argument("--items", type=int, help="widen the catalog to this many items")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()

    give_back_freed_memory()  # as the trainer runs: every array over 1 MB mapped on its own
    bundle = load_bundle(args.bundle)
    model = bundle.manifest.parameters.model  # as the trainer wrote it
    k = args.candidates or int(model["candidates"])
    arrays = first_customers(bundle.arrays, args.customers)
    if args.items:
        arrays = wider_catalog(arrays, args.items)
    ranker = Ranker(
        arrays,
        tiers=TierTable.of(bundle.manifest.tiers),
        item_item_weight=float(model["item_item_weight"]),
    )
    with threadpool_limits(limits=1, user_api="blas"):
        began = time.perf_counter()
        items, scores, reasons = ranker.candidate_lists(k, threads=args.threads)
        seconds = time.perf_counter() - began
        spent = phases(ranker, k, args.phase_batches)
    result = {
        "bundle": str(args.bundle),
        "customers": len(arrays.customer_ids),
        "items": len(arrays.item_ids),
        "candidates": k,
        "threads": args.threads,
        "seconds": round(seconds, 2),
        "customers_per_second": round(len(arrays.customer_ids) / seconds),
        "phase_batches": args.phase_batches,
        "phase_seconds": {name: round(value, 3) for name, value in spent.items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.save:
        np.savez(args.save, items=items, scores=scores, reasons=reasons)
    if args.compare:
        saved = np.load(args.compare)
        same = {
            name: bool(np.array_equal(saved[name], found))
            for name, found in (("items", items), ("scores", scores), ("reasons", reasons))
        }
        print("identical to", args.compare, same)
        if not all(same.values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
