"""The production topology without containers: ``python -m deploy.run [--port 8080]`` from the
repository root runs gunicorn (gunicorn.conf.py) on a free port of 127.0.0.1 behind nginx
(deploy/nginx.conf) on --port, with the RECSVC_* settings of the environment, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from benchmarks.local_server import gunicorn, nginx
from recsvc.config import ServiceConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    args = parser.parse_args(argv)
    # Read here too: a bad setting stops this before anything starts, and nginx needs the limit.
    limit = ServiceConfig.from_mapping(os.environ).max_body_bytes
    signal.signal(signal.SIGTERM, _interrupt)
    terminal = Path("/dev/stderr")
    try:
        with (
            gunicorn({}, terminal) as upstream,
            nginx(upstream.removeprefix("http://"), limit, terminal, args.port) as url,
        ):
            print(f"recsvc behind nginx on {url} (Ctrl-C stops both)", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
