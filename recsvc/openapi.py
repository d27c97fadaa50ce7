"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json. Tests validate real
responses against it, so it cannot drift from what the service answers."""

from __future__ import annotations

from typing import Any

from recsvc import defaults
from recsvc.text import MAX_KEY_LENGTH, UNSAFE_CHARACTERS
from recsvc.triggers import KINDS

UNSAFE_PATTERN = f"^[^{UNSAFE_CHARACTERS}]*$"
NUMBER_OR_NULL = {"type": ["number", "null"]}
STRING_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _text(limit: int, description: str) -> dict[str, Any]:
    """A non-blank string without control characters."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": limit,
        "pattern": r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$",
        "description": description,
    }


def _key_text(description: str) -> dict[str, Any]:
    """A customer key: 1 to 256 characters, none of them unsafe (recsvc.text)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": UNSAFE_PATTERN,
        "description": description,
    }


SCHEMAS: dict[str, Any] = {
    "Problem": _object(
        {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "invalid_params": {
                "type": "array",
                "items": _object({"name": {"type": "string"}, "reason": {"type": "string"}}),
            },
        },
        required=["type", "title", "status", "detail"],
    ),
    "Tier": _object(
        {
            "name": {"type": "string"},
            "spend": {"type": "number"},
            "window_days": {"type": "number"},
            "perks": {"type": "array", "items": {"type": "string"}},
            "next": {
                "oneOf": [
                    {"type": "null"},
                    _object({"name": {"type": "string"}, "gap": {"type": "number"}}),
                ]
            },
        }
    ),
    "Recommendation": _object(
        {
            "item_id": {"type": "string"},
            "score": {"type": "number"},
            "title": {"type": "string"},
            "price": NUMBER_OR_NULL,
        }
    ),
    "Recommendations": _object(
        {
            "customer_id": {"type": "string"},
            "model_version": {"type": "string"},
            "fallback": {"type": "boolean"},
            "degraded": {"type": "boolean"},
            "tier": _ref("Tier"),
            "items": {"type": "array", "items": _ref("Recommendation")},
        }
    ),
    "ProductCard": _object(
        {
            "item_id": {"type": "string"},
            "title": {"type": "string"},
            "price": NUMBER_OR_NULL,
            "categories": {"type": "array", "items": {"type": "string"}},
            "url": {"type": "string", "format": "uri"},
            "image": {"type": "string", "format": "uri"},
            "score": {"type": "number"},
        }
    ),
    "Content": _object(
        {
            "id": {"type": "string"},
            "kind": {"enum": ["banner", "article", "offer"]},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "image": STRING_OR_NULL,
            "url": {"type": "string"},
        }
    ),
    "Block": _object(
        {
            "slot": {"type": "string"},
            "customer_id": STRING_OR_NULL,
            "model_version": {"type": "string"},
            "fallback": {"type": "boolean"},
            "degraded": {"type": "boolean"},
            "tier": _ref("Tier"),
            "content": {"type": "array", "items": _ref("Content")},
            "products": {"type": "array", "items": _ref("ProductCard")},
        }
    ),
    "PublicBlock": {
        **_object(
            {
                "slot": {"type": "string"},
                "model_version": {"type": "string"},
                "personalised": {
                    "type": "boolean",
                    "description": "a valid visitor token made this the named customer's block",
                },
                "content": {"type": "array", "items": _ref("Content")},
                "products": {"type": "array", "items": _ref("ProductCard")},
            }
        ),
        "additionalProperties": False,
        "description": "a block as a key with only blocks:read sees it: no customer figures",
    },
    "VisitorTokenRequest": {
        **_object(
            {
                "customer": _key_text("the customer key the page names, exactly"),
                "ttl": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": defaults.VISITOR_TOKEN_MAX_TTL,
                    "default": defaults.VISITOR_TOKEN_TTL,
                    "description": "seconds",
                },
            },
            required=["customer"],
        ),
        "additionalProperties": False,
    },
    "VisitorToken": _object({"token": {"type": "string"}, "expires_at": {"type": "string"}}),
    "EmailPicks": _object(
        {
            "send_id": {"type": "string"},
            "customer_id": {"type": "string"},
            "model_version": {"type": "string"},
            "created_at": {"type": "string"},
            "fallback": {"type": "boolean"},
            "degraded": {"type": "boolean"},
            "tier": _ref("Tier"),
            "currency_symbol": {"type": "string"},
            "items": {"type": "array", "items": _ref("ProductCard")},
        }
    ),
    "Signals": _object(
        {
            "as_of": {"type": "string"},
            "first_purchase": STRING_OR_NULL,
            "last_purchase": STRING_OR_NULL,
            "days_since_last_purchase": NUMBER_OR_NULL,
            "median_days_between_orders": NUMBER_OR_NULL,
            "overdue_ratio": NUMBER_OR_NULL,
            "lapsing": {"type": "boolean"},
            "best_contact": _object(
                {
                    "hour": {"type": ["integer", "null"]},
                    "weekday": STRING_OR_NULL,
                    "from": {"type": "string"},
                }
            ),
            "thresholds_crossed": {"type": "array", "items": {"type": "string"}},
            "thank_you": {"type": "boolean"},
        }
    ),
    "Profile": _object(
        {
            "customer_id": {"type": "string"},
            "known": {"type": "boolean"},
            "model_version": {"type": "string"},
            "degraded": {"type": "boolean"},
            "tier": _ref("Tier"),
            "spend": {"type": "number"},
            "orders": {"type": "integer"},
            "signals": _ref("Signals"),
            "since_training": _object(
                {
                    "events": {"type": "integer"},
                    "purchases": {"type": "integer"},
                    "returns": {"type": "integer"},
                    "spend": {"type": "number"},
                }
            ),
        }
    ),
    "Event": _object(
        {
            "event_id": _text(128, "unique per event; a repeated id is a duplicate"),
            "customer": _text(256, "canonical id, <source>:<id>, email:<address> or phone:<n>"),
            "item_id": _text(64, "the catalog's item id"),
            "quantity": {
                "type": "number",
                "minimum": -1e6,
                "maximum": 1e6,
                "not": {"const": 0},
                "description": "negative for a return",
            },
            "price": {"type": "number", "minimum": 0, "maximum": 1e7},
            "timestamp": {
                "type": "string",
                "description": "ISO 8601, from 1970 to a day from now; UTC without an offset",
                "examples": ["2011-12-09T12:50:00Z"],
            },
            "source": _text(64, "where the event came from; default api"),
        },
        required=["event_id", "customer", "item_id", "quantity", "price", "timestamp"],
    ),
    "EventBatch": _object(
        {"events": {"type": "array", "items": _ref("Event"), "minItems": 1, "maxItems": 1000}}
    ),
    "EventResult": _object(
        {
            "accepted": {"type": "array", "items": {"type": "string"}},
            "duplicates": {"type": "array", "items": {"type": "string"}},
            "rejected": {
                "type": "array",
                "items": _object(
                    {
                        "index": {"type": "integer"},
                        "event_id": STRING_OR_NULL,
                        "errors": {"type": "array", "items": {"type": "string"}},
                    }
                ),
            },
        }
    ),
    "ErasureReceipt": _object(
        {
            "erased": {"type": "boolean"},
            "customer_id": STRING_OR_NULL,
            "aliases": {"type": "integer"},
            "events_removed": {"type": "integer"},
            "erased_at": {"type": "string"},
        }
    ),
    "Triggers": _object(
        {
            "model_version": {"type": "string"},
            "degraded": {"type": "boolean"},
            "triggers": {
                "type": "array",
                "items": _object(
                    {
                        "customer_id": {"type": "string"},
                        "kind": {"enum": list(KINDS)},
                        "fired_at": {"type": "string"},
                        "reason": {"type": "string"},
                        "figures": {"type": "object"},
                    }
                ),
            },
            "next_cursor": {
                "type": ["string", "null"],
                "description": "opaque; null on the last page",
            },
        }
    ),
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/Problem{status}"} for status in statuses}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _html_or_json(schema: str, description: str) -> dict[str, Any]:
    response = _json(schema, description)
    response["content"]["text/html"] = {"schema": {"type": "string"}}
    return response


def _block_response(description: str) -> dict[str, Any]:
    response = _html_or_json("Block", description + " (PublicBlock for a blocks:read key)")
    response["content"]["application/json"]["schema"] = {
        "oneOf": [_ref("Block"), _ref("PublicBlock")]
    }
    return response


KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": _key_text("the customer key, URL-encoded; ~: the key is in the key parameter"),
    "description": "canonical id, <source>:<id>, email:<address> or phone:<number>, "
    "URL-encoded; or ~, with the key in the `key` query parameter (any key, '/' included)",
    "examples": {"canonical": {"value": "12347"}, "in the query": {"value": "~"}},
}
# GET /v1/customers/<key>/profile and DELETE /v1/customers/<key> (recsvc/api/customers.py)
# do not decode the key through recsvc.api.params.customer_key yet; once they do, they take
# [KEY, KEY_QUERY] like the others.
KEY_QUERY = {
    "name": "key",
    "in": "query",
    "schema": _key_text("the customer key, URL-encoded"),
    "description": "the customer key when the path's key is ~ (and only then)",
    "examples": {"slash": {"value": "email:a/b@example.com"}},
}
VISITOR_TOKEN = {
    "name": "X-Recsvc-Token",
    "in": "header",
    "schema": {"type": "string"},
    "description": "a visitor token for this exact customer key (POST /v1/visitor-tokens): "
    "without one, a blocks:read key gets the anonymous block",
}
SLOT = {
    "name": "slot",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "a slot configured in the bundle's channels",
    "examples": {"home": {"value": "home_hero"}},
}
FORMAT = {"name": "format", "in": "query", "schema": {"enum": ["json", "html"]}}
CATEGORY = {"name": "category", "in": "query", "schema": {"type": "string"}}
READ: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


# gunicorn answers these itself, in HTML, before a request reaches the service.
SERVER_LIMITS = {
    "414": {"description": "the request line is longer than gunicorn's limit_request_line"},
    "431": {"description": "the headers are larger than gunicorn's limits"},
}


def document() -> dict[str, Any]:
    described = _document()
    for operations in described["paths"].values():
        for operation in operations.values():
            operation["responses"].update(SERVER_LIMITS)
    return described


def _document() -> dict[str, Any]:
    reads = _problems(400, 401, 403, 429, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recsvc",
            "version": "1",
            "description": "Recommendations that never suggest what a customer owns.",
        },
        "security": READ,
        "paths": {
            "/healthz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the process is up",
                            "content": {
                                "application/json": {"schema": _object({"status": {"const": "ok"}})}
                            },
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "a verified bundle is loaded",
                            "content": {
                                "application/json": {
                                    "schema": _object(
                                        {
                                            "status": {"const": "ready"},
                                            "model_version": {"type": "string"},
                                            "fallback_from": STRING_OR_NULL,
                                        }
                                    )
                                }
                            },
                        },
                        **_problems(503),
                    },
                }
            },
            "/v1/model": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the bundle being served",
                            "content": {
                                "application/json": {
                                    "schema": _object(
                                        {
                                            "version": {"type": "string"},
                                            "created": STRING_OR_NULL,
                                            "data_as_of": STRING_OR_NULL,
                                            "loaded_at": {"type": "string"},
                                            "last_error": STRING_OR_NULL,
                                            "fallback_from": STRING_OR_NULL,
                                        }
                                    )
                                }
                            },
                        },
                        **_problems(503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "this document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/customers/{key}/recommendations": {
                "get": {
                    "parameters": [
                        KEY,
                        KEY_QUERY,
                        {
                            "name": "n",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": defaults.MAX_N},
                        },
                        CATEGORY,
                    ],
                    "responses": {"200": _json("Recommendations", "best first"), **reads},
                }
            },
            "/v1/customers/{key}/profile": {
                "get": {
                    "parameters": [KEY, KEY_QUERY],
                    "responses": {"200": _json("Profile", "tier, spend and signals"), **reads},
                }
            },
            "/v1/customers/{key}": {
                "delete": {
                    "parameters": [KEY, KEY_QUERY],
                    "description": "scope admin; 404 when nobody is known by the key (it is "
                    "recorded on the erasure list all the same)",
                    "responses": {
                        "200": _json("ErasureReceipt", "erased"),
                        **reads,
                        **_problems(404),
                    },
                }
            },
            "/v1/customers/{key}/blocks/{slot}": {
                "get": {
                    "parameters": [KEY, KEY_QUERY, SLOT, FORMAT, CATEGORY, VISITOR_TOKEN],
                    "responses": {
                        "200": _block_response("a website block"),
                        **_problems(400, 401, 403, 404, 429, 503),
                    },
                }
            },
            "/v1/blocks/{slot}": {
                "get": {
                    "parameters": [SLOT, FORMAT, CATEGORY],
                    "responses": {
                        "200": _block_response("the anonymous block"),
                        **_problems(400, 401, 403, 404, 429, 503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "description": "Prometheus metrics; scope metrics:read",
                    "responses": {
                        "200": {
                            "description": "the Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_problems(401, 403, 429),
                    },
                }
            },
            "/v1/embed.js": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "the embed script",
                            "content": {"application/javascript": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/v1/customers/{key}/email-picks": {
                "get": {
                    "parameters": [
                        KEY,
                        KEY_QUERY,
                        FORMAT,
                        {
                            "name": "send_id",
                            "in": "query",
                            "required": True,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 200,
                                "pattern": UNSAFE_PATTERN,
                            },
                        },
                        {
                            "name": "n",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": defaults.EMAIL_MAX_N,
                            },
                        },
                    ],
                    "responses": {"200": _html_or_json("EmailPicks", "fixed per send id"), **reads},
                }
            },
            "/v1/visitor-tokens": {
                "post": {
                    "description": "scope recs:read; for the shop's backend: a token proving "
                    "that a page's visitor is the customer its blocks name",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("VisitorTokenRequest")}},
                    },
                    "responses": {
                        "200": _json("VisitorToken", "valid until expires_at"),
                        **reads,
                    },
                }
            },
            "/v1/events": {
                "post": {
                    "description": "scope events:write; valid events of a mixed batch are applied",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("EventBatch")}},
                    },
                    "responses": {
                        "200": _json("EventResult", "per-event outcome"),
                        "422": _json("EventResult", "every event rejected"),
                        **_problems(400, 401, 403, 413, 429, 503),
                    },
                }
            },
            "/v1/triggers": {
                "get": {
                    "parameters": [
                        {"name": "kind", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "the previous page's next_cursor, unchanged",
                        },
                    ],
                    "responses": {"200": _json("Triggers", "oldest first"), **reads},
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                **{
                    f"Problem{status}": {
                        "description": "a problem (RFC 9457)",
                        "content": {"application/problem+json": {"schema": _ref("Problem")}},
                    }
                    for status in (400, 401, 403, 404, 413, 503)
                },
                "Problem429": {
                    "description": "the API key is over its rate limit (RECSVC_RATE_LIMIT)",
                    "headers": {
                        "Retry-After": {
                            "description": "seconds until a request will be allowed",
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                },
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
