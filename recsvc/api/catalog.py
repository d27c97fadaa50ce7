"""PUT /v1/items/<item_id> and POST /v1/catalog: availability, prices and new items.

Valid items of a batch are applied even when others are rejected; the response says, per
item, what happened. Writing the same change again changes nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, request
from werkzeug.routing import PathConverter

from recsvc.api.access import requires
from recsvc.api.context import this_service
from recsvc.api.json import encoded
from recsvc.api.params import query_args
from recsvc.catalog import parse_change, parse_item_id
from recsvc.errors import BatchError
from recsvc.openapi import CATALOG, ITEM
from recsvc.schemas import MAX_BATCH, CatalogRejection, CatalogResult

blueprint = Blueprint("catalog", __name__, url_prefix="/v1")


class ItemPath(PathConverter):
    """An item id, '/' included, except one ending in /similar: that path is
    ``GET /v1/items/<item_id>/similar``, and must not also answer (or advertise) PUT."""

    regex = r"(?!.*/similar$)" + PathConverter.regex


@blueprint.put("/items/<item_path:item_id>")
@requires(ITEM.key_scope)
def put_item(item_id: str) -> Response:
    query_args(ITEM)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BatchError("the body must be a JSON object of the fields to change")
    item, id_errors = parse_item_id(item_id)
    _, fields, errors = parse_change(body, with_id=False)
    errors = id_errors + errors
    if errors:
        rejected = [CatalogRejection(0, item or None, errors)]
        return encoded(CatalogResult([], rejected), 422)
    this_service().set_items([(item, fields)])
    return encoded(CatalogResult([item], []), 200)


@blueprint.post("/catalog")
@requires(CATALOG.key_scope)
def post_catalog() -> Response:
    query_args(CATALOG)
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise BatchError('the body must be a JSON object {"items": [...]}')
    if set(body) != {"items"}:
        raise BatchError(f"unknown fields {sorted(set(body) - {'items'})}; only items")
    raw_items: list[Any] = body["items"]
    if not 1 <= len(raw_items) <= MAX_BATCH:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH} items, got {len(raw_items)}")
    valid: list[tuple[str, dict[str, Any]]] = []
    rejected: list[CatalogRejection] = []
    for index, raw in enumerate(raw_items):
        item, fields, errors = parse_change(raw, with_id=True)
        if errors:
            rejected.append(CatalogRejection(index, item or None, errors))
        else:
            valid.append((item, fields))
    this_service().set_items(valid)
    accepted = [item for item, _ in valid]
    status = 422 if rejected and not accepted else 200
    return encoded(CatalogResult(accepted, rejected), status)


def init_app(app: Flask) -> None:
    app.url_map.converters["item_path"] = ItemPath
    app.register_blueprint(blueprint)
