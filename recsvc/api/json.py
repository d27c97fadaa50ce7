"""JSON responses: the views encode the Structs of ``recsvc.schemas`` with msgspec; Flask's
own ``jsonify`` (the document, anything else) goes through orjson. Either is several times
faster than the standard library on the hot path (measured: see README, Performance)."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from flask import Response
from flask.json.provider import JSONProvider

from recsvc import schemas


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        data = self._prepare_response_obj(args, kwargs)
        return Response(orjson.dumps(data), mimetype="application/json")


def encoded(body: msgspec.Struct, status: int = 200) -> Response:
    """``body`` (a Struct of ``recsvc.schemas``) as the JSON response."""
    return Response(schemas.encoder.encode(body), status=status, content_type="application/json")
