"""The ``recsvc`` command: train bundles, serve them, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from training.config import load_config, tuned_path
from training.errors import TrainingError
from training.merge import OUTCOMES
from training.pipeline import TrainReport, train

DEFAULT_MODELS_DIR = Path("models")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.run(args)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_cmd = commands.add_parser("train", help="train a model bundle from a sources config")
    train_cmd.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    train_cmd.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    train_cmd.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train_cmd.set_defaults(run=_train)

    serve_cmd = commands.add_parser("serve", help="serve the current bundle (development server)")
    serve_cmd.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.set_defaults(run=_serve)

    evaluate_cmd = commands.add_parser(
        "evaluate", help="time-based holdout of the served model against baselines"
    )
    evaluate_cmd.add_argument("--config", type=Path, required=True)
    evaluate_cmd.add_argument("--cutoff", type=_date, required=True, help="e.g. 2011-11-09")
    evaluate_cmd.add_argument("--end", type=_date, help="end of the test window (default: all)")
    evaluate_cmd.add_argument("--k", type=int, default=10)
    evaluate_cmd.add_argument("--out", type=Path, required=True, help="report directory")
    evaluate_cmd.set_defaults(run=_evaluate)

    tune_cmd = commands.add_parser(
        "tune", help="search model parameters on a validation window before the cutoff"
    )
    tune_cmd.add_argument("--config", type=Path, required=True)
    tune_cmd.add_argument("--cutoff", type=_date, required=True)
    tune_cmd.add_argument("--trials", type=int, default=30)
    tune_cmd.add_argument("--validation-days", type=int, default=30)
    tune_cmd.add_argument("--k", type=int, default=10)
    tune_cmd.add_argument("--seed", type=int, default=0)
    tune_cmd.set_defaults(run=_tune)

    sources_cmd = commands.add_parser("sources", help="inspect the sources a config declares")
    sources_commands = sources_cmd.add_subparsers(dest="sources_command", required=True)
    check_cmd = sources_commands.add_parser(
        "check", help="validate the config and sample every source; non-zero exit on errors"
    )
    check_cmd.add_argument("--config", type=Path, required=True)
    check_cmd.set_defaults(run=_check_sources)

    export_cmd = commands.add_parser(
        "export-picks", help="email picks of one send for a whole campaign (CSV or JSONL)"
    )
    export_cmd.add_argument("--send-id", required=True)
    who = export_cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--customers", type=Path, help="a file with one customer key per line")
    who.add_argument("--segment", help="customers of one tier, e.g. tier=gold")
    export_cmd.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    export_cmd.add_argument("--out", type=Path, required=True)
    export_cmd.add_argument("--n", type=int, default=4)
    export_cmd.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    export_cmd.set_defaults(run=_export_picks)

    keys_cmd = commands.add_parser("keys", help="API keys for the service")
    keys_commands = keys_cmd.add_subparsers(dest="keys_command", required=True)
    mint_cmd = keys_commands.add_parser("mint", help="make a new API key and its config line")
    mint_cmd.add_argument("--name", required=True, help="who uses it, e.g. web or email")
    mint_cmd.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: blocks:read, recs:read, events:write, metrics:read, admin",
    )
    mint_cmd.add_argument(
        "--rate",
        type=int,
        help="this key's requests per second (0: unlimited); default: RECSVC_RATE_LIMIT",
    )
    mint_cmd.set_defaults(run=_mint_key)

    tokens_cmd = commands.add_parser("tokens", help="visitor tokens for website blocks")
    tokens_commands = tokens_cmd.add_subparsers(dest="tokens_command", required=True)
    token_cmd = tokens_commands.add_parser(
        "mint", help="a visitor token for one customer key, signed with RECSVC_SECRET_KEY"
    )
    token_cmd.add_argument("--customer", required=True, help="the key the page names")
    token_cmd.add_argument(
        "--ttl", type=int, default=None, help="seconds it stays valid (default 3600, at most 86400)"
    )
    token_cmd.set_defaults(run=_mint_token)

    demo_cmd = commands.add_parser(
        "demo", help="train on the bundled sample and serve it on the embedded store"
    )
    demo_cmd.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    demo_cmd.add_argument("--host", default="127.0.0.1")
    demo_cmd.add_argument("--port", type=int, default=8000)
    demo_cmd.set_defaults(run=_demo)
    return parser


def _train(args: argparse.Namespace) -> int:
    report = train(load_config(args.config), args.models_dir, progress=not args.no_progress)
    print_report(report)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import MODEL_KEYS, evaluate
    from training.report import render_html

    if args.k < 1:
        raise TrainingError(f"--k must be at least 1, got {args.k}")
    report = evaluate(load_config(args.config), args.cutoff, args.k, args.end, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.html").write_text(render_html(report))
    metric = f"ndcg@{args.k}"
    print(f"{report['protocol']['test_customers']} test customers, cutoff {args.cutoff.date()}")
    for name in MODEL_KEYS:
        scores = report[name]
        violations = scores["owned_violations"]
        print(f"  {name:8} {metric} {scores[metric]:.4f}  owned_violations {violations}")
    print(f"report: {args.out / 'report.json'}, {args.out / 'report.html'}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from training.pipeline import merged_history
    from training.tune import tune, write_tuned

    if args.trials < 1 or args.validation_days < 1:
        raise TrainingError("--trials and --validation-days must be at least 1")
    config = load_config(args.config)
    result = tune(
        merged_history(config),
        config.model,
        args.cutoff,
        args.trials,
        args.validation_days,
        args.k,
        args.seed,
        progress=True,
    )
    target = tuned_path(args.config)
    write_tuned(target, result)
    print(
        f"best {result.metric} {result.best.score:.4f} on the {args.validation_days} days "
        f"before {args.cutoff.date()} (base config: {result.trials[0].score:.4f})"
    )
    print(f"parameters written to {target}; `recsvc train` picks them up")
    return 0


def _check_sources(args: argparse.Namespace) -> int:
    from training.check import check_sources

    results = check_sources(load_config(args.config))
    for result in results:
        status = "error" if result.errors else "ok"
        print(f"{status:5}  {result.name} ({result.kind}): {result.rows:,} rows")
        for message in result.errors:
            print(f"  error: source {result.name!r}: {message}")
        for message in result.warnings:
            print(f"  warning: source {result.name!r}: {message}")
    return 1 if any(result.errors for result in results) else 0


def _export_picks(args: argparse.Namespace) -> int:
    """Each row is the email-picks endpoint's answer for that customer and send id: the
    service is run in-process with the same RECSVC_* store settings, so a send exported here
    and one rendered by the live service share their snapshots."""
    import csv
    from urllib.parse import quote

    from tqdm import tqdm

    from recsvc import create_app
    from recsvc.config import ServiceConfig

    environment = {**os.environ, "RECSVC_MODELS_DIR": str(args.models_dir), "RECSVC_AUTH": "off"}
    app = create_app(ServiceConfig.from_mapping(environment))
    client = app.test_client()
    keys = _campaign_customers(args, app)
    query = f"send_id={quote(args.send_id, safe='')}&n={args.n}"
    written = 0
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if args.format == "csv":
            writer.writerow(
                ["send_id", "customer_id", "rank", "item_id", "title", "price", "url", "image"]
            )
        for key in tqdm(keys, desc="exporting", unit="customer"):
            response = client.get(f"/v1/customers/{quote(key, safe='')}/email-picks?{query}")
            if response.status_code != 200:
                raise TrainingError(f"customer {key!r}: {response.get_data(as_text=True)}")
            picks = response.get_json()
            if args.format == "jsonl":
                handle.write(json.dumps(picks, ensure_ascii=False, sort_keys=True) + "\n")
            else:
                for rank, item in enumerate(picks["items"], start=1):
                    writer.writerow(
                        [
                            picks["send_id"],
                            picks["customer_id"],
                            rank,
                            item["item_id"],
                            item["title"],
                            item["price"],
                            item["url"],
                            item["image"],
                        ]
                    )
            written += 1
    print(f"{written} customers written to {args.out}")
    return 0


def _campaign_customers(args: argparse.Namespace, app: Any) -> list[str]:
    if args.customers is not None:
        try:
            lines = args.customers.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise TrainingError(f"--customers: {error}") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    kind, _, value = args.segment.partition("=")
    model = app.extensions["recsvc.registry"].model
    if model is None:
        raise TrainingError(f"no bundle in {args.models_dir}")
    names = [level["name"] for level in model.ranker.tiers.levels]
    if kind != "tier" or value not in names:
        raise TrainingError(f"--segment: tier=<one of {', '.join(names)}>, got {args.segment!r}")
    realtime = app.extensions["recsvc.realtime"]
    customers = [str(c) for c in model.ranker.arrays.customer_ids]
    return [
        c
        for c in customers
        if model.ranker.tiers.levels[
            model.ranker.tiers.index(realtime.view(model, c).window_spend)
        ]["name"]
        == value
    ]


def _mint_key(args: argparse.Namespace) -> int:
    from recsvc.auth import SCOPES, mint

    scopes = {scope.strip() for scope in args.scopes.split(",") if scope.strip()}
    unknown = scopes - set(SCOPES)
    if not scopes or unknown or not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise TrainingError(
            f"--name: letters, digits, '_', '.', '-'; --scopes: some of {', '.join(SCOPES)}"
        )
    if args.rate is not None and args.rate < 0:
        raise TrainingError(f"--rate: requests per second, 0 or more, got {args.rate}")
    key, line = mint(args.name, scopes, args.rate)
    print(f"key (give it to the caller; it is not stored anywhere): {key}")
    print(f"config line (add to RECSVC_API_KEYS, comma-separated, or RECSVC_API_KEYS_FILE): {line}")
    return 0


def _mint_token(args: argparse.Namespace) -> int:
    from recsvc import defaults, tokens
    from recsvc.text import MAX_KEY_LENGTH, text_problem

    ttl = defaults.VISITOR_TOKEN_TTL if args.ttl is None else args.ttl
    if not 1 <= ttl <= defaults.VISITOR_TOKEN_MAX_TTL:
        raise TrainingError(f"--ttl: 1 to {defaults.VISITOR_TOKEN_MAX_TTL} seconds, got {ttl}")
    problem = text_problem(args.customer, MAX_KEY_LENGTH)
    if problem is not None:
        raise TrainingError(f"--customer: {problem}")
    try:
        secret = tokens.secret_from(os.environ.get("RECSVC_SECRET_KEY", "").strip())
    except ValueError as error:
        raise TrainingError(f"RECSVC_SECRET_KEY {error}; set it as the service has it") from None
    print(tokens.mint(secret, args.customer, ttl))
    return 0


def _date(text: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


def _serve(args: argparse.Namespace, overrides: dict[str, str] | None = None) -> int:
    """The development server, configured from RECSVC_* like gunicorn (--models-dir wins)."""
    from recsvc import create_app
    from recsvc.config import ServiceConfig
    from recsvc.errors import ConfigError
    from recsvc.logs import JsonFormatter

    # The service logs JSON lines, as under gunicorn. Werkzeug's request lines carry the raw
    # path, and paths hold customer ids; recsvc logs each request itself, without them.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    environment = {**os.environ, "RECSVC_MODELS_DIR": str(args.models_dir), **(overrides or {})}
    try:
        app = create_app(ServiceConfig.from_mapping(environment))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    with resources.as_file(resources.files("training") / "sample" / "sample.toml") as config_path:
        report = train(load_config(config_path), args.models_dir, progress=True)
    print_report(report)
    from recsvc.bundle import load_bundle

    bundle = load_bundle(report.path)
    customer = str(bundle.arrays.customer_ids[0])
    base = f"http://{args.host}:{args.port}"
    print("\nTry:")
    print(f"  curl -s '{base}/v1/customers/{customer}/recommendations?n=5'")
    print(f"  curl -s '{base}/v1/customers/no-such-customer/recommendations?n=5'   # fallback")
    print(f"  curl -s '{base}/v1/customers/{customer}/profile'")
    print(f"  curl -s -X POST '{base}/v1/events' -H 'Content-Type: application/json' \\")
    print(
        f'    -d \'{{"events": [{{"event_id": "demo-1", "customer": "{customer}", '
        f'"item_id": "85123A", "quantity": 1, "price": 2.55, '
        f'"timestamp": "2011-12-10T10:00:00Z"}}]}}\''
    )
    print(f"  curl -s '{base}/readyz'\n")
    print("The demo runs with RECSVC_AUTH=off on localhost and the embedded store.\n")
    return _serve(args, {"RECSVC_AUTH": "off"})


def print_report(report: TrainReport) -> None:
    print(f"trained bundle {report.version} in {report.seconds:.1f} s -> {report.path}")
    header = ["source", "rows_read", *OUTCOMES]
    rows: list[list[Any]] = []
    for name, counts in report.accounting.items():
        rows.append([name, *(counts[k] for k in header[1:-1]), sum(counts["quarantined"].values())])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))
    for name, counts in report.accounting.items():
        for reason, count in counts["quarantined"].items():
            print(f"  quarantined in {name}: {count} {reason}")


if __name__ == "__main__":
    raise SystemExit(main())
