"""gunicorn entry point: ``gunicorn recsvc.wsgi:app``."""

from __future__ import annotations

from recsvc.app import create_app

app = create_app()
