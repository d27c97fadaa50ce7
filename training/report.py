"""The evaluation report as one self-contained HTML page (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from training.evaluate import HISTORY_GROUPS, MODEL_KEYS  # noqa: E402

RANK_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


def render_html(report: dict[str, Any]) -> str:
    protocol = report["protocol"]
    k = protocol["k"]
    models = [name for name in MODEL_KEYS if name in report]
    figures = [
        ("Ranking metrics by model", _metrics_plot(report, models, k)),
        (f"NDCG@{k} by customer history length", _history_plot(report, models, k)),
        (f"Catalog coverage@{k}", _coverage_plot(report, models, k)),
        (f"NDCG@{k} by tier, with and without the tier policy", _tier_plot(report, k)),
    ]
    columns = [f"{m}@{k}" for m in RANK_METRICS] + [
        f"coverage@{k}",
        "owned_violations",
        "test_customers",
    ]
    rows = "".join(
        "<tr><th>"
        + html.escape(name)
        + "</th>"
        + "".join(f"<td>{_cell(report[name].get(c))}</td>" for c in columns)
        + "</tr>"
        for name in models
    )
    protocol_rows = _rows(protocol)
    baskets = report["baskets"]
    basket_columns = [f"hit_rate@{k}", f"ndcg@{k}", "queries", "mean_listed"]
    basket_header = "".join(f"<th>{html.escape(c)}</th>" for c in basket_columns)
    basket_rows = "".join(
        f"<tr><th>{html.escape(protocol_name)}</th><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_cell(scores.get(c))}</td>" for c in basket_columns)
        + "</tr>"
        for protocol_name in ("similar", "cart")
        for name, scores in baskets[protocol_name].items()
    )
    images = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
        f"src='data:image/png;base64,{png}'>"
        for title, png in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>recsvc evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th {{ background: #f4f4f4; text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>recsvc evaluation, cutoff {html.escape(str(protocol["cutoff"]))}</h1>
<p>Time-based holdout ranked through the service's own ranker: owned items excluded, the
fallback and scoring as served. <code>recsvc</code> is the model the trainer ships; the others
are baselines.</p>
<table><tr><th>model</th>{"".join(f"<th>{html.escape(c)}</th>" for c in columns)}</tr>
{rows}</table>
<p>{report["recsvc"]["reasons_coverage"]:.2%} of the items listed by <code>recsvc</code> carry a
<code>bought_with</code> reason.</p>
<h2>Similar items and carts</h2>
<p>Test-window orders of two or more items the model knows: {baskets["test_baskets"]}
({baskets["evaluated_baskets"]} evaluated). <code>similar</code>: each item of an order is asked
for its similar items, the order's other items are relevant. <code>cart</code>: each item is
held out of its order, the others are the cart, the held-out item is relevant.
<code>cooccurrence</code> lists by counts of co-purchase in the same training order.</p>
<table><tr><th>protocol</th><th>model</th>{basket_header}</tr>
{basket_rows}</table>
{images}
<h2>Protocol</h2><table>{protocol_rows}</table>
</body></html>
"""


def _metrics_plot(report: dict[str, Any], models: list[str], k: int) -> str:
    figure, axes = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(models)
    for index, name in enumerate(models):
        values = [report[name].get(f"{metric}@{k}", 0.0) for metric in RANK_METRICS]
        positions = [i + index * width for i in range(len(RANK_METRICS))]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(RANK_METRICS))])
    axes.set_xticklabels([f"{metric}@{k}" for metric in RANK_METRICS])
    axes.legend()
    return _png(figure)


def _history_plot(report: dict[str, Any], models: list[str], k: int) -> str:
    figure, axes = plt.subplots(figsize=(10, 4))
    groups = [name for name, _, _ in HISTORY_GROUPS]
    width = 0.8 / len(models)
    for index, name in enumerate(models):
        by_history = report[name]["by_history"]
        values = [by_history[group].get(f"ndcg@{k}", 0.0) for group in groups]
        axes.bar([i + index * width for i in range(len(groups))], values, width, label=name)
    labels = [
        f"{group} ({report[models[0]]['by_history'][group]['test_customers']} customers)"
        for group in groups
    ]
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    axes.set_xticklabels(labels)
    axes.set_ylabel(f"ndcg@{k}")
    axes.legend()
    return _png(figure)


def _tier_plot(report: dict[str, Any], k: int) -> str:
    figure, axes = plt.subplots(figsize=(8, 4))
    tiers = list(report["recsvc"]["by_tier"])
    for offset, name in ((0.0, "recsvc"), (0.4, "recsvc_no_policy")):
        values = [report[name]["by_tier"][t].get(f"ndcg@{k}", 0.0) for t in tiers]
        axes.bar([i + offset for i in range(len(tiers))], values, 0.4, label=name)
    axes.set_xticks([i + 0.2 for i in range(len(tiers))])
    axes.set_xticklabels(
        [f"{t} ({report['recsvc']['by_tier'][t]['test_customers']})" for t in tiers]
    )
    axes.set_ylabel(f"ndcg@{k}")
    axes.legend()
    return _png(figure)


def _coverage_plot(report: dict[str, Any], models: list[str], k: int) -> str:
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.bar(models, [report[name][f"coverage@{k}"] for name in models])
    axes.set_ylabel("share of catalog recommended")
    return _png(figure)


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _rows(values: dict[str, Any]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{_value(value)}</td></tr>"
        for key, value in values.items()
    )


def _value(value: Any) -> str:
    """A protocol value as a reader takes it in: a mapping as a nested table, a list of
    mappings (the tier levels) as one nested table each, other lists comma-separated."""
    if isinstance(value, dict):
        return f"<table>{_rows(value)}</table>" if value else "none"
    if isinstance(value, list):
        if value and all(isinstance(entry, dict) for entry in value):
            return "".join(_value(entry) for entry in value)
        return html.escape(", ".join(str(entry) for entry in value)) or "none"
    if value is None:
        return "none"
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))
