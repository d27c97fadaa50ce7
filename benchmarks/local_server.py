"""A local gunicorn for the benchmark and load-test scripts: started with gunicorn.conf.py
on a free port, ready when /readyz answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(environment: dict[str, str], log_path: Path | None = None) -> Iterator[str]:
    """Run gunicorn with ``environment`` (RECSVC_* settings) and yield its base URL; its log
    lines go to ``log_path`` when given."""
    port = free_port()
    env = {**os.environ, **environment, "RECSVC_BIND": f"127.0.0.1:{port}"}
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "recsvc.wsgi:app"],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("gunicorn did not become ready") from None
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=20)
        if log_path is not None:
            log.close()  # type: ignore[union-attr]
