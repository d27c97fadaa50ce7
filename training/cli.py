"""The ``recsvc`` command: train bundles, serve them, run the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import secrets
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc import defaults
from recsvc.events import ERASURES_FILE
from recsvc.identity import IdentityKey
from recsvc.text import spreadsheet_safe
from training.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    import pandas as pd

    from recsvc.registry import ServedModel
    from recsvc.service import Service
    from training.config import TrainConfig
    from training.pipeline import TrainReport

# The trainer's modules are imported by the commands that use them: `keys` and `tokens` run
# where only the service is installed (its image), without the `train` extra.
TRAIN_EXTRA = frozenset(
    {
        "duckdb",
        "implicit",
        "isal",
        "matplotlib",
        "pandas",
        "psycopg",
        "pyarrow",
        "scipy",
        "sqlglot",
        "threadpoolctl",
        "tqdm",
    }
)

DEFAULT_MODELS_DIR = Path("models")
ERASURES_HELP = "the service's erasure list, instead of the config's [identity] erasures"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        result: int = args.run(args)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        print(
            f"error: this command needs the trainer's dependencies (no module {error.name!r}); "
            "install them with: pip install 'recsvc[train]'",
            file=sys.stderr,
        )
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsvc", description=__doc__)
    commands = _Commands(parser.add_subparsers(dest="command", required=True))

    train_cmd = commands.add("train", "train a model bundle from a sources config")
    train_cmd.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    train_cmd.add_argument(
        "--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help=MODELS_DIR_HELP
    )
    _add_quiet(train_cmd)
    train_cmd.add_argument("--erasures", type=Path, help=ERASURES_HELP)
    train_cmd.add_argument(
        "--allow-quarantine",
        action="store_true",
        help="publish even where a source quarantines more than its max_quarantine_share",
    )
    train_cmd.set_defaults(run=_train)

    serve_cmd = commands.add("serve", "serve the current bundle (development server)")
    _add_server_options(serve_cmd)
    serve_cmd.set_defaults(run=_serve)

    evaluate_cmd = commands.add(
        "evaluate", "time-based holdout of the served model against baselines"
    )
    evaluate_cmd.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    evaluate_cmd.add_argument(
        "--cutoff",
        type=_date,
        required=True,
        help="train before this date, test from it (YYYY-MM-DD)",
    )
    evaluate_cmd.add_argument(
        "--end", type=_date, help="end of the test window, YYYY-MM-DD (default: all after --cutoff)"
    )
    evaluate_cmd.add_argument("--k", type=int, default=10, help="list length scored (metrics @k)")
    evaluate_cmd.add_argument(
        "--out", type=Path, required=True, help="report directory (report.json, report.html)"
    )
    _add_quiet(evaluate_cmd)
    evaluate_cmd.set_defaults(run=_evaluate)

    tune_cmd = commands.add(
        "tune", "search model parameters on a validation window before the cutoff"
    )
    tune_cmd.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    tune_cmd.add_argument(
        "--cutoff",
        type=_date,
        required=True,
        help="nothing on or after this date is read (YYYY-MM-DD); evaluate at it afterwards",
    )
    tune_cmd.add_argument(
        "--trials", type=int, default=30, help="candidates tried, the config's parameters first"
    )
    tune_cmd.add_argument(
        "--validation-days",
        type=int,
        default=30,
        help="days before --cutoff held out to score candidates on",
    )
    tune_cmd.add_argument("--k", type=int, default=10, help="candidates are compared by ndcg@k")
    tune_cmd.add_argument("--seed", type=int, default=0, help="seed of the random search")
    _add_quiet(tune_cmd)
    tune_cmd.set_defaults(run=_tune)

    sources_cmd = commands.add("sources", "inspect the sources a config declares")
    sources_commands = _Commands(sources_cmd.add_subparsers(dest="sources_command", required=True))
    check_cmd = sources_commands.add(
        "check", "validate the config and sample every source; non-zero exit on errors"
    )
    check_cmd.add_argument("--config", type=Path, required=True, help="training config (TOML)")
    check_cmd.add_argument("--erasures", type=Path, help=ERASURES_HELP)
    check_cmd.set_defaults(run=_check_sources)

    export_cmd = commands.add(
        "export-picks", "email picks of one send for a whole campaign (CSV or JSONL)"
    )
    export_cmd.add_argument(
        "--send-id",
        required=True,
        help="the campaign's send id: the same picks as the live service gives for it",
    )
    who = export_cmd.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--customers", type=Path, help="a file with one customer key per line (# comments)"
    )
    who.add_argument("--segment", help="customers of one tier, e.g. tier=gold")
    export_cmd.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default="jsonl",
        help="one row per pick (csv) or one JSON answer per customer (jsonl)",
    )
    export_cmd.add_argument("--out", type=Path, required=True, help="file written (whole or not)")
    export_cmd.add_argument("--n", type=int, default=4, help="picks per customer")
    export_cmd.add_argument(
        "--models-dir", type=Path, default=_service_models_dir(), help=MODELS_DIR_HELP
    )
    export_cmd.add_argument(
        "--events-dir",
        type=Path,
        default=Path(os.environ.get("RECSVC_EVENTS_DIR", "").strip() or defaults.EVENTS_DIR),
        help="the live service's RECSVC_EVENTS_DIR: its store (snapshots, live purchases) and "
        "erasure list, so the export skips whom it erased",
    )
    _add_quiet(export_cmd)
    export_cmd.set_defaults(run=_export_picks)

    keys_cmd = commands.add("keys", "API keys for the service")
    keys_commands = _Commands(keys_cmd.add_subparsers(dest="keys_command", required=True))
    mint_cmd = keys_commands.add("mint", "make a new API key and its config line")
    mint_cmd.add_argument("--name", required=True, help="who uses it, e.g. web or email")
    mint_cmd.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: blocks:read, recs:read, events:write, catalog:write, "
        "metrics:read, admin",
    )
    mint_cmd.add_argument(
        "--rate",
        type=int,
        help="this key's requests per second (0: unlimited); default: RECSVC_RATE_LIMIT",
    )
    mint_cmd.set_defaults(run=_mint_key)

    tokens_cmd = commands.add("tokens", "visitor tokens for website blocks")
    tokens_commands = _Commands(tokens_cmd.add_subparsers(dest="tokens_command", required=True))
    token_cmd = tokens_commands.add(
        "mint", "a visitor token for one customer key, signed with RECSVC_SECRET_KEY"
    )
    token_cmd.add_argument("--customer", required=True, help="the key the page names")
    token_cmd.add_argument(
        "--ttl",
        type=int,
        default=defaults.VISITOR_TOKEN_TTL,
        help=f"seconds it stays valid, at most {defaults.VISITOR_TOKEN_MAX_TTL}",
    )
    token_cmd.set_defaults(run=_mint_token)

    demo_cmd = commands.add(
        "demo", "train on the bundled sample and serve it on the embedded store"
    )
    _add_server_options(demo_cmd)
    demo_cmd.set_defaults(run=_demo)
    return parser


MODELS_DIR_HELP = "directory of model bundles (its 'current' is served)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help followed by its default, where it has one (not for flags and
    required options)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


@dataclass
class _Commands:
    """Subcommands whose --help shows each option's default."""

    parsers: Any  # argparse's _SubParsersAction, private to argparse

    def add(self, name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.parsers.add_parser(
            name,
            help=help,
            description=help,
            formatter_class=_HelpFormatter,
        )
        return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        "--no-progress",
        action="store_true",
        help="no progress bars; one log line per step with its duration (as when stderr is "
        "not a terminal)",
    )


def _service_models_dir() -> Path:
    """Where the service's commands look for bundles by default: RECSVC_MODELS_DIR, as the
    service itself does, else ``models``."""
    return Path(os.environ.get("RECSVC_MODELS_DIR", "").strip() or DEFAULT_MODELS_DIR)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir", type=Path, default=_service_models_dir(), help=MODELS_DIR_HELP
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")


def config_from(path: Path, erasures: Path | None = None) -> TrainConfig:
    """The TOML config plus what stays out of it: the alias key from RECSVC_ID_SECRET (and
    RECSVC_ID_SECRETS_RETIRED), read here once; without it, the development key. ``erasures``
    overrides the config's erasure list."""
    from training.config import load_config

    config = load_config(path)
    try:
        key = IdentityKey.from_environment(os.environ) or IdentityKey.development_key()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    identity = dataclasses.replace(
        config.identity, key=key, erasures=erasures or config.identity.erasures
    )
    return dataclasses.replace(config, identity=identity)


def _train(args: argparse.Namespace) -> int:
    from training.pipeline import train
    from training.progress import Progress

    report = train(
        config_from(args.config, args.erasures),
        args.models_dir,
        progress=Progress.on_stderr(args.quiet),
        allow_quarantine=args.allow_quarantine,
    )
    print_report(report)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import MODEL_KEYS, evaluate
    from training.progress import Progress
    from training.report import render_html

    if args.k < 1:
        raise TrainingError(f"--k must be at least 1, got {args.k}")
    progress = Progress.on_stderr(args.quiet)
    report = evaluate(config_from(args.config), args.cutoff, args.k, args.end, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.html").write_text(render_html(report))
    metric = f"ndcg@{args.k}"
    print(f"{report['protocol']['test_customers']} test customers, cutoff {args.cutoff.date()}")
    for name in MODEL_KEYS:
        scores = report[name]
        violations = scores["owned_violations"]
        print(f"  {name:8} {metric} {scores[metric]:.4f}  owned_violations {violations}")
    coverage = report["recsvc"]["reasons_coverage"]
    print(f"  recsvc's listed items with a bought_with reason: {coverage:.2%}")
    baskets = report["baskets"]
    print(
        f"{baskets['test_baskets']} test-window orders of 2 or more known items, "
        f"{baskets['evaluated_baskets']} evaluated"
    )
    hit = f"hit_rate@{args.k}"
    for protocol in ("similar", "cart"):
        for name, scores in baskets[protocol].items():
            print(
                f"  {protocol:7} {name:12} {hit} {scores.get(hit, 0.0):.4f}  "
                f"{metric} {scores.get(metric, 0.0):.4f}  queries {scores['queries']}"
            )
    print(f"report: {args.out / 'report.json'}, {args.out / 'report.html'}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from training.config import tuned_path
    from training.pipeline import merged_history
    from training.progress import Progress
    from training.tune import tune, write_tuned

    if args.trials < 1 or args.validation_days < 1:
        raise TrainingError("--trials and --validation-days must be at least 1")
    config = config_from(args.config)
    progress = Progress.on_stderr(args.quiet)
    result = tune(
        merged_history(config, progress),
        config.model,
        args.cutoff,
        args.trials,
        args.validation_days,
        args.k,
        args.seed,
        progress=progress,
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
    from training.merge import NO_ERASURE_LIST

    config = config_from(args.config, args.erasures)
    results = check_sources(config)
    if config.identity.erasures is None:
        print(f"warning: {NO_ERASURE_LIST}")
    elif not config.identity.erasure_files():
        print(f"note: erasure list {config.identity.erasures} does not exist yet (none erased)")
    for result in results:
        status = "error" if result.errors else "ok"
        print(f"{status:5}  {result.name} ({result.kind}): {result.rows:,} rows")
        for message in result.errors:
            print(f"  error: {_about_source(result.name, message)}")
        for message in result.warnings:
            print(f"  warning: {_about_source(result.name, message)}")
    return 1 if any(result.errors for result in results) else 0


def _about_source(name: str, message: str) -> str:
    """``message`` naming its source once: a read error already starts with it."""
    label = f"source {name!r}"
    return message if message.startswith(label) else f"{label}: {message}"


def _export_picks(args: argparse.Namespace) -> int:
    """Each row is the email-picks endpoint's answer for that customer and send id: the
    service core answers in-process with the same RECSVC_* store settings, so a send exported
    here and one rendered by the live service share their snapshots. Erased and unsubscribed
    customers are skipped, each customer is exported once however many of their keys are
    listed, and the file appears whole or not at all (also when the store stops answering,
    as an unsubscribe could then not be checked)."""
    import csv
    import tempfile

    import msgspec

    from recsvc.config import ServiceConfig
    from recsvc.errors import RecsvcError, Unsubscribed
    from recsvc.service import Service
    from recsvc.text import MAX_SEND_ID_LENGTH, text_problem
    from training.progress import Progress

    problem = text_problem(args.send_id, MAX_SEND_ID_LENGTH)
    if problem is not None:
        raise TrainingError(f"--send-id: {problem}")
    send_id = args.send_id.strip()  # as the endpoint takes it
    # No HTTP here, so no API keys: the core is called directly.
    environment = {
        **os.environ,
        "RECSVC_MODELS_DIR": str(args.models_dir),
        "RECSVC_EVENTS_DIR": str(args.events_dir),
        "RECSVC_AUTH": "off",
    }
    if not (args.events_dir / ERASURES_FILE).is_file():
        print(
            f"warning: {args.events_dir} has no erasure list; if the service keeps its state "
            "elsewhere, pass its RECSVC_EVENTS_DIR as --events-dir, or erased customers are "
            "exported",
            file=sys.stderr,
        )
    service = Service.start(ServiceConfig.from_mapping(environment))
    # The service's info lines (a bundle loaded) are not the export's; its warnings still show.
    logging.getLogger("recsvc").setLevel(logging.WARNING)
    logging.getLogger("recsvc.progress").setLevel(logging.INFO)  # the export's own steps
    model = service.registry.model
    if model is None:
        raise TrainingError(f"no bundle in {args.models_dir}")
    campaign = _campaign(args, service, model)
    try:
        temporary = tempfile.NamedTemporaryFile(  # renamed into place or removed below
            "w",
            dir=args.out.parent,
            prefix=f".{args.out.name}.",
            suffix=".partial",
            delete=False,
            newline="",
            encoding="utf-8",
        )
    except OSError as error:
        raise TrainingError(f"--out: {error}") from None
    try:
        with temporary as handle:
            writer = csv.writer(handle)
            if args.format == "csv":
                writer.writerow(
                    ["send_id", "customer_id", "rank", "item_id", "title", "price", "url", "image"]
                )
            progress = Progress.on_stderr(args.quiet)
            exporting = progress.each(
                campaign.keys, "exporting picks", "customers", len(campaign.keys)
            )
            for number, key in enumerate(exporting):
                try:
                    serving = service.serving(key)  # the customer's experiment arm, if any
                    picks = service.email_picks(
                        serving.model, key, send_id, args.n, assignment=serving.assignment
                    )
                except Unsubscribed:
                    campaign.unsubscribed += 1
                    continue
                except RecsvcError as error:
                    raise TrainingError(f"customer {number + 1} of the campaign: {error}") from None
                if picks.degraded:
                    raise TrainingError(
                        f"customer {number + 1} of the campaign: the store did not answer, so "
                        "an unsubscribe could not be checked; nothing written, retry"
                    )
                if args.format == "jsonl":
                    answer = msgspec.to_builtins(picks)
                    handle.write(json.dumps(answer, ensure_ascii=False, sort_keys=True) + "\n")
                    continue
                for rank, item in enumerate(picks.items, start=1):
                    row = [picks.send_id, picks.customer_id, rank, item.item_id]
                    row += [item.title, item.price, item.url, item.image]
                    writer.writerow([spreadsheet_safe(cell) for cell in row])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary.name, args.out)
    except BaseException:
        Path(temporary.name).unlink(missing_ok=True)
        raise
    print(
        f"{len(campaign.keys) - campaign.unsubscribed} customers written to {args.out}; "
        f"skipped: {campaign.erased} erased, {campaign.unsubscribed} unsubscribed, "
        f"{campaign.repeated} keys of a customer already listed"
    )
    return 0


@dataclass
class Campaign:
    keys: list[str]  # one per customer, in the order given
    erased: int = 0  # keys of erased customers, skipped
    repeated: int = 0  # further keys of a customer already in ``keys``
    unsubscribed: int = 0  # customers in ``keys`` who unsubscribed from email, skipped


def _campaign(args: argparse.Namespace, service: Service, model: ServedModel) -> Campaign:
    """The customers to export: the keys of --customers (checked before anything is
    written), or the bundle's customers in the --segment's tier."""
    from recsvc.text import MAX_KEY_LENGTH, text_problem

    tier_name: str | None = None
    if args.customers is not None:
        try:
            lines = args.customers.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise TrainingError(f"--customers: {error}") from None
        candidates = []
        for number, line in enumerate(lines, start=1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            problem = text_problem(key, MAX_KEY_LENGTH)
            if problem is not None:
                raise TrainingError(f"--customers line {number}: {problem}")
            candidates.append(key)
    else:
        kind, _, tier_name = args.segment.partition("=")
        names = service.tier_names(model)
        if kind != "tier" or tier_name not in names:
            raise TrainingError(
                f"--segment: tier=<one of {', '.join(names)}>, got {args.segment!r}"
            )
        candidates = service.customer_ids(model)
    campaign = Campaign([])
    seen: set[str] = set()
    for key in candidates:
        view = service.customer(model, key)
        if view.erased:
            campaign.erased += 1
        elif view.store_key in seen:
            campaign.repeated += 1
        elif tier_name is None or service.tier_name(model, view) == tier_name:
            seen.add(view.store_key)
            campaign.keys.append(key)
    return campaign


def _mint_key(args: argparse.Namespace) -> int:
    from recsvc.auth import SCOPES, mint

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise TrainingError(f"--name: letters, digits, '_', '.', '-', got {args.name!r}")
    scopes = {scope.strip() for scope in args.scopes.split(",") if scope.strip()}
    unknown = sorted(scopes - set(SCOPES))
    if not scopes or unknown:
        found = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
        raise TrainingError(f"--scopes: some of {', '.join(SCOPES)}; {found}")
    if args.rate is not None and args.rate < 0:
        raise TrainingError(f"--rate: requests per second, 0 or more, got {args.rate}")
    key, line = mint(args.name, scopes, args.rate)
    print(f"key (give it to the caller; it is not stored anywhere): {key}")
    print(f"config line (add to RECSVC_API_KEYS, comma-separated, or RECSVC_API_KEYS_FILE): {line}")
    return 0


def _mint_token(args: argparse.Namespace) -> int:
    from recsvc import defaults, tokens
    from recsvc.text import MAX_KEY_LENGTH, text_problem

    ttl = args.ttl
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
    import pandas as pd

    try:
        return pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


def _serve(args: argparse.Namespace, overrides: dict[str, str] | None = None) -> int:
    """The development server, configured from RECSVC_* like gunicorn (--models-dir wins)."""
    from recsvc.app import create_app
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
    from training.pipeline import train
    from training.progress import Progress

    # The erasure list of the service the demo starts, wherever RECSVC_EVENTS_DIR puts it.
    events_dir = os.environ.get("RECSVC_EVENTS_DIR", "").strip() or defaults.EVENTS_DIR
    erasures = Path(events_dir) / ERASURES_FILE
    with resources.as_file(resources.files("training") / "sample" / "sample.toml") as config_path:
        report = train(config_from(config_path, erasures), args.models_dir, Progress.on_stderr())
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
    overrides = {"RECSVC_AUTH": "off", **_demo_dashboard(base)}
    print("The demo runs with RECSVC_AUTH=off on localhost and the embedded store.\n")
    return _serve(args, overrides)


def _demo_dashboard(base: str) -> dict[str, str]:
    """Two keys for the dashboard (which RECSVC_AUTH=off does not open), valid for this run
    only, and a session secret when none is set."""
    from recsvc.auth import mint

    admin_key, admin_line = mint("demo-admin", ["admin"])
    viewer_key, viewer_line = mint("demo-viewer", ["dashboard:read"])
    configured = os.environ.get("RECSVC_API_KEYS", "").strip()
    keys = ",".join(line for line in (configured, admin_line, viewer_line) if line)
    secret = os.environ.get("RECSVC_SECRET_KEY", "").strip() or secrets.token_hex(32)
    print(f"Dashboard: {base}/dashboard/ (keys valid for this run only)")
    print(f"  admin key (erases, sees addresses): {admin_key}")
    print(f"  dashboard:read key (looks, addresses masked): {viewer_key}\n")
    return {"RECSVC_API_KEYS": keys, "RECSVC_SECRET_KEY": secret}


def print_report(report: TrainReport) -> None:
    from training.merge import OUTCOMES

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
    for name, kinds in report.interactions.items():
        for kind, outcomes in kinds.items():
            went = ", ".join(
                f"{outcome} {n}" for outcome, n in outcomes.items() if n and outcome != "read"
            )
            print(f"  {kind} in {name}: {outcomes['read']} read: {went}")


if __name__ == "__main__":
    raise SystemExit(main())
