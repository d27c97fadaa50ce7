"""gunicorn entry point: ``gunicorn recsvc.wsgi:app``."""

from __future__ import annotations

from recsvc import create_app

app = create_app()
