"""Print the customers in each tier of a bundle, from its manifest: the figures the README
quotes. ``python -m benchmarks.tier_counts --models-dir models`` (the current bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsvc.bundle import MANIFEST_FILE, current_version
from recsvc.manifest import Manifest


def tier_counts(bundle: Path) -> tuple[dict[str, int], str]:
    """Customers per tier, ascending, and the date the tiers were computed at."""
    tiers = Manifest.decode((bundle / MANIFEST_FILE).read_bytes()).tiers
    return dict(tiers.customers_per_tier), str(tiers.as_of)


def sentence(counts: dict[str, int]) -> str:
    parts = [f"{count:,} in {name}" for name, count in counts.items()]
    return f"That puts {', '.join(parts[:-1])} and {parts[-1]}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    version = current_version(args.models_dir)
    counts, as_of = tier_counts(args.models_dir / version)
    print(f"bundle {version}, tiers as of {as_of}")
    print(sentence(counts))


if __name__ == "__main__":
    main()
