"""The web dashboard under /dashboard: server-rendered pages for the CRM and marketing team
(overview, customers, tiers, triggers, experiments), signed in with an API key (see ``session``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    from recsvc.dashboard import views

    views.init_app(app)
