"""CORS for the configured origins only (RECSVC_CORS_ORIGINS): pages of the shop may call
the API from a browser; any other origin gets no CORS headers, so browsers refuse. Without
configured origins no hook is installed at all (it would cost every request)."""

from __future__ import annotations

from flask import Flask, Response, request

from recsvc.api.context import service_of


def init_app(app: Flask) -> None:
    origins = frozenset(service_of(app).config.cors_origins)
    if not origins:
        return

    @app.after_request
    def allow_configured_origins(response: Response) -> Response:
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, X-API-Key, X-Recsvc-Token, Content-Type"
                )
                response.headers["Access-Control-Max-Age"] = "600"
        return response
