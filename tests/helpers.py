"""Small builders for test sources and configs, and the clocks tests drive."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SHOP_COLUMNS = {
    "order_id": "InvoiceNo",
    "item_id": "StockCode",
    "description": "Description",
    "quantity": "Quantity",
    "timestamp": "InvoiceDate",
    "unit_price": "UnitPrice",
    "customer_id": "CustomerID",
    "country": "Country",
}
SHOP_HEADER = list(SHOP_COLUMNS.values())


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def source_toml(name: str, path: str, columns: dict[str, str], **options: str | float) -> str:
    lines = ["[[sources]]", f'name = "{name}"', 'kind = "csv"', f'path = "{path}"']
    lines += [
        f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        for key, value in options.items()
    ]
    lines += ["[sources.columns]"] + [f'{k} = "{v}"' for k, v in columns.items()]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, *sources: str, model: str = "", items: str = "") -> Path:
    """A config with a small, fast model; ``model`` adds or overrides [model] lines."""
    model_table = f"[model]\nfactors = 8\niterations = 10\nseed = 1\n{model}\n"
    text = model_table + "\n" + items + "\n" + "\n".join(sources)
    path = directory / "train.toml"
    path.write_text(text)
    return path


def purchase_rows(
    baskets: dict[str, list[str]], start_order: int = 1000, when: str = "2011-01-05 10:00:00"
) -> list[list[object]]:
    """One order per customer, one line per item, in the SHOP_HEADER layout."""
    rows: list[list[object]] = []
    for number, (customer, items) in enumerate(sorted(baskets.items()), start=start_order):
        for item in items:
            rows.append(
                [
                    number,
                    item,
                    f"Item {item}",
                    1,
                    when,
                    1.5,
                    customer,
                    "United Kingdom",
                ]
            )
    return rows


class ManualClock:
    """A clock (``create_app(clock=...)``) that stands still until the test advances it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WatcherTicks:
    """The bundle watcher's wait (``create_app(wait=...)``), released by hand: ``step()``
    lets one wait end and returns once the watcher waits again, so its check is done."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout  # only bounds a watcher that never comes: a failure
        self.intervals: list[float] = []
        self._waiting = threading.Semaphore(0)
        self._go = threading.Semaphore(0)

    def __call__(self, seconds: float) -> None:
        self.intervals.append(seconds)
        self._waiting.release()
        self._go.acquire()

    def step(self) -> None:
        assert self._waiting.acquire(timeout=self.timeout), "the watcher is not waiting"
        self._go.release()
        assert self._waiting.acquire(timeout=self.timeout), "the watcher did not come back"
        self._waiting.release()  # it waits again: the next step may release it
