"""Fuzz the HTTP API with schemathesis, from /openapi.json, against a local gunicorn.

    python loadtests/fuzz.py --models-dir models [--max-examples 200] [--out artifacts/fuzz]

Every generated case is checked for server errors, responses that break the document
(status, content type, headers, body schema), bad input that is accepted, and auth that is
ignored. The run fails when any check fails or fewer than ``--min-cases`` cases ran. The
service runs with an admin key and no rate limit, on a scratch events folder: erasures the
fuzzer makes touch nothing real.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.local_server import gunicorn  # noqa: E402
from recsvc.auth import mint  # noqa: E402

# Every check but two, in schemathesis's own config (CLI options would override the
# per-operation part). positive_data_acceptance: a valid-looking but unknown slot is a
# correct 404. negative_data_rejection on the two batch writes: by design they apply the
# valid items of a mixed batch and reject the others one by one (200, each problem named);
# a batch with nothing valid is still a 422, and every other check still runs there.
CONFIG = """
[checks.positive_data_acceptance]
enabled = false

[[operations]]
include-path = "/v1/events"
include-method = "POST"
checks.negative_data_rejection.enabled = false

[[operations]]
include-path = "/v1/catalog"
include-method = "POST"
checks.negative_data_rejection.enabled = false
"""


def fuzz(models_dir: Path, out: Path, max_examples: int, seed: int | None = None) -> dict[str, Any]:
    """Run schemathesis once; the summary (cases, failures, exit code) is also written to
    ``out/fuzz.json`` with schemathesis's own JSON and JUnit reports beside it."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="recsvc-fuzz-"))
    key, line = mint("fuzz", ["admin"], rate=0)
    environment = {
        "RECSVC_MODELS_DIR": str(models_dir),
        "RECSVC_API_KEYS": line,
        "RECSVC_EVENTS_DIR": str(scratch / "events"),
        "RECSVC_SECRET_KEY": secrets.token_hex(32),  # visitor tokens on, as in production
    }
    report = out / "schemathesis.json"
    with gunicorn(environment, log_path=out / "service.log") as base:
        config = out / "schemathesis.toml"
        config.write_text(CONFIG)
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            # Both of the document's schemes, with the same key: the service refuses a
            # request whose two credentials differ.
            "--header",
            f"Authorization: Bearer {key}",
            "--header",
            f"X-API-Key: {key}",
            "--max-examples",
            str(max_examples),
            "--report",
            "json,junit",
            "--report-json-path",
            str(report),
            "--report-junit-path",
            str(out / "schemathesis.xml"),
            "--no-color",
        ]
        if seed is not None:
            command += ["--seed", str(seed)]
        run = subprocess.run(command, capture_output=True, text=True)
    (out / "schemathesis.txt").write_text(run.stdout + run.stderr)
    result = json.loads(report.read_text())
    summary = {
        "max_examples": max_examples,
        "seed": result["seed"],
        "cases": int(result["test_cases"]["generated"]),
        "failures": result["failures"],
        "errors": result["errors"],
        "exit_code": run.returncode,
        "output": str(out / "schemathesis.txt"),
    }
    (out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="holds a published bundle")
    parser.add_argument("--max-examples", type=int, default=200, help="per operation and phase")
    parser.add_argument("--min-cases", type=int, default=2000, help="fail below this many cases")
    parser.add_argument("--seed", type=int, help="repeat an earlier run's cases")
    parser.add_argument("--out", type=Path, default=Path("artifacts/fuzz"))
    args = parser.parse_args()
    summary = fuzz(args.models_dir, args.out, args.max_examples, args.seed)
    print(json.dumps(summary, indent=2))
    if summary["exit_code"] != 0:
        print(f"FAILED: schemathesis found failures; see {summary['output']}", file=sys.stderr)
        return 1
    if summary["cases"] < args.min_cases:
        print(f"FAILED: only {summary['cases']} cases (< {args.min_cases})", file=sys.stderr)
        return 1
    print(f"ok: {summary['cases']} cases, no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
