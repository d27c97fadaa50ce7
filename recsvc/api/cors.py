"""CORS for the configured origins only (RECSVC_CORS_ORIGINS): pages of the shop may call
the API from a browser; any other origin gets no CORS headers, so browsers refuse."""

from __future__ import annotations

from flask import Flask, Response, current_app, request

from recsvc.config import ServiceConfig


def init_app(app: Flask) -> None:
    @app.after_request
    def allow_configured_origins(response: Response) -> Response:
        config: ServiceConfig = current_app.extensions["recsvc.config"]
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if origin and origin.rstrip("/") in config.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, X-API-Key, Content-Type"
                )
                response.headers["Access-Control-Max-Age"] = "600"
        return response
