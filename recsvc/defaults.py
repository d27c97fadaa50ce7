"""Every service tunable's default, in one place."""

from __future__ import annotations

MODELS_DIR = "models"
LOG_LEVEL = "INFO"

# GET /v1/customers/<id>/recommendations?n=
DEFAULT_N = 10
MAX_N = 100
