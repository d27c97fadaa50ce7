"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

The components are generated from the Structs in ``recsvc.schemas`` that the views encode;
the paths come from ``OPERATIONS``, a table of each endpoint's method, path, scope,
parameters, answer and problems. The views take their scope and allowed query parameters
from the same table, so the document cannot drift from what the service accepts. Tests
validate real responses against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import msgspec

from recsvc import defaults, schemas
from recsvc.policy import TRIGGER_KINDS

REF_TEMPLATE = "#/components/schemas/{name}"
READS = (400, 401, 403, 429, 503)  # the problems of every keyed read


@dataclass(frozen=True)
class Parameter:
    name: str
    location: Literal["path", "query", "header"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = False
    examples: dict[str, Any] = field(default_factory=dict)

    def described(self) -> dict[str, Any]:
        found: dict[str, Any] = {"name": self.name, "in": self.location, "schema": self.schema}
        if self.required or self.location == "path":
            found["required"] = True
        if self.description:
            found["description"] = self.description
        if self.examples:
            found["examples"] = {name: {"value": v} for name, v in self.examples.items()}
        return found


@dataclass(frozen=True)
class Operation:
    """One endpoint. ``answer`` is the 200 body: a Struct, a tuple of Structs (one of them),
    or a media type whose body is not JSON. ``scope`` None: no key needed."""

    method: Literal["get", "post", "put", "delete"]
    path: str
    answer: type[msgspec.Struct] | tuple[type[msgspec.Struct], ...] | str
    summary: str
    scope: str | None = None
    parameters: tuple[Parameter, ...] = ()
    problems: tuple[int, ...] = ()
    html: bool = False  # also answers text/html (?format=html)
    request: type[msgspec.Struct] | None = None
    unprocessable: str = ""  # what a 422 with the answer's body means (POST /v1/events)
    notes: str = ""
    query: frozenset[str] = field(init=False)  # the query parameters it takes

    def __post_init__(self) -> None:
        names = frozenset(p.name for p in self.parameters if p.location == "query")
        object.__setattr__(self, "query", names)

    @property
    def key_scope(self) -> str:
        """The scope a key needs (for ``recsvc.api.access.requires``)."""
        if self.scope is None:
            raise ValueError(f"{self.method} {self.path} needs no key")
        return self.scope


def _schema(annotated: Any) -> dict[str, Any]:
    """The JSON schema of a parameter's type from ``recsvc.schemas``."""
    found: dict[str, Any] = msgspec.json.schema(annotated)
    return found


KEY = Parameter(
    "key",
    "path",
    _schema(schemas.CustomerKey),
    "canonical id, <source>:<id>, email:<address> or phone:<number>, URL-encoded; or ~, "
    "with the key in the `key` query parameter (any key, '/' included)",
    examples={"canonical": "12347", "in the query": "~"},
)
KEY_QUERY = Parameter(
    "key",
    "query",
    _schema(schemas.CustomerKey),
    "the customer key when the path's key is ~ (and only then)",
    examples={"slash": "email:a/b@example.com"},
)
VISITOR_TOKEN = Parameter(
    "X-Recsvc-Token",
    "header",
    {"type": "string"},
    "a visitor token for this exact customer key (POST /v1/visitor-tokens): without one, a "
    "blocks:read key gets the anonymous block",
)
SLOT = Parameter(
    "slot",
    "path",
    {"type": "string"},
    "a slot configured in the bundle's channels",
    examples={"home": "home_hero"},
)
FORMAT = Parameter("format", "query", {"enum": ["json", "html"]})
CATEGORY = Parameter("category", "query", {"type": "string"})
_PRICE_NOTE = "; an item with an unknown price is left out when a bound is given"
MIN_PRICE = Parameter(
    "min_price", "query", {"type": "number", "minimum": 0}, "lowest unit price" + _PRICE_NOTE
)
MAX_PRICE = Parameter(
    "max_price", "query", {"type": "number", "minimum": 0}, "highest unit price" + _PRICE_NOTE
)
FILTERS = (CATEGORY, MIN_PRICE, MAX_PRICE)  # every list endpoint takes them (recsvc.filters)
_CART_NOTE = f"the cart's item ids, comma-separated: 1 to {defaults.MAX_CART_ITEMS}, each once"
BLOCK_CART = Parameter(
    "items",
    "query",
    {"type": "string"},
    _CART_NOTE + "; the block's products are then what goes with the cart (cart_cross_sell)",
)


def _count(high: int) -> Parameter:
    return Parameter("n", "query", {"type": "integer", "minimum": 1, "maximum": high})


HEALTHZ = Operation("get", "/healthz", schemas.Health, "the process is up")
READYZ = Operation("get", "/readyz", schemas.Ready, "a verified bundle is loaded", problems=(503,))
MODEL = Operation("get", "/v1/model", schemas.ModelInfo, "the bundle being served", problems=(503,))
OPENAPI = Operation("get", "/openapi.json", "application/json", "this document")
METRICS = Operation(
    "get",
    "/metrics",
    "text/plain",
    "the Prometheus text format",
    scope="metrics:read",
    problems=(401, 403, 429),
)
EMBED = Operation("get", "/v1/embed.js", "application/javascript", "the embed script")
RECOMMENDATIONS = Operation(
    "get",
    "/v1/customers/{key}/recommendations",
    schemas.Recommendations,
    "best first",
    scope="recs:read",
    parameters=(
        KEY,
        KEY_QUERY,
        _count(defaults.MAX_N),
        *FILTERS,
        Parameter(
            "country",
            "query",
            {"type": "string"},
            "for a customer the model does not know: best sellers of this country (a "
            "country the bundle has no list for gives those of all)",
        ),
    ),
    problems=READS,
)
ITEM_ID = Parameter("item_id", "path", _schema(schemas.ItemId), examples={"item": "85123A"})
CUSTOMER = Parameter(
    "customer",
    "query",
    _schema(schemas.CustomerKey),
    "leave out what this customer holds; a blocks:read key may name a customer only with a "
    "visitor token for them (X-Recsvc-Token)",
)
SIMILAR = Operation(
    "get",
    "/v1/items/{item_id}/similar",
    schemas.SimilarItems,
    "bought with the item, strongest first",
    scope="blocks:read",
    parameters=(ITEM_ID, _count(defaults.MAX_N), CUSTOMER, *FILTERS, VISITOR_TOKEN),
    problems=(*READS, 404),
    notes="404 for an item id the catalog has never heard of; an item the model does not "
    "know (added since training) gets best sellers of its category, with fallback true",
)
CART_ITEMS = Parameter(
    "items",
    "query",
    {"type": "string"},
    _CART_NOTE,
    required=True,
    examples={"cart": "85123A,71053"},
)
CART = Operation(
    "get",
    "/v1/cart/recommendations",
    schemas.CartRecommendations,
    "bought with the cart's items, strongest first",
    scope="blocks:read",
    parameters=(
        CART_ITEMS,
        _count(defaults.MAX_N),
        CUSTOMER,
        *FILTERS,
        Parameter("country", "query", {"type": "string"}, "whose best sellers fill in"),
        VISITOR_TOKEN,
    ),
    problems=READS,
    notes="item ids the catalog has never heard of are listed in unknown_items, not an error",
)
PROFILE = Operation(
    "get",
    "/v1/customers/{key}/profile",
    schemas.Profile,
    "tier, spend and signals",
    scope="recs:read",
    parameters=(KEY, KEY_QUERY),
    problems=READS,
)
RECENTLY_VIEWED = Operation(
    "get",
    "/v1/customers/{key}/recently-viewed",
    schemas.RecentlyViewed,
    "latest first",
    scope="recs:read",
    parameters=(KEY, KEY_QUERY, _count(defaults.RECENTLY_VIEWED_MAX)),
    problems=READS,
    notes="views reported since training (kept event_retention_days), a session's stitched "
    "in by a login included",
)
ERASE = Operation(
    "delete",
    "/v1/customers/{key}",
    schemas.ErasureReceipt,
    "erased",
    scope="admin",
    parameters=(KEY, KEY_QUERY),
    problems=(*READS, 404),
    notes="404 when nobody is known by the key (it is recorded on the erasure list all the same)",
)
CUSTOMER_BLOCK = Operation(
    "get",
    "/v1/customers/{key}/blocks/{slot}",
    (schemas.Block, schemas.PublicBlock),
    "a website block (PublicBlock for a blocks:read key)",
    scope="blocks:read",
    parameters=(KEY, KEY_QUERY, SLOT, FORMAT, *FILTERS, BLOCK_CART, VISITOR_TOKEN),
    problems=(*READS, 404),
    html=True,
)
ANONYMOUS_BLOCK = Operation(
    "get",
    "/v1/blocks/{slot}",
    (schemas.Block, schemas.PublicBlock),
    "the anonymous block (PublicBlock for a blocks:read key)",
    scope="blocks:read",
    parameters=(SLOT, FORMAT, *FILTERS, BLOCK_CART),
    problems=(*READS, 404),
    html=True,
)
EMAIL_PICKS = Operation(
    "get",
    "/v1/customers/{key}/email-picks",
    schemas.EmailPicks,
    "fixed per send id",
    scope="recs:read",
    parameters=(
        KEY,
        KEY_QUERY,
        FORMAT,
        Parameter("send_id", "query", _schema(schemas.SendId), required=True),
        _count(defaults.EMAIL_MAX_N),
        *FILTERS,
    ),
    problems=(*READS, 409),
    html=True,
    notes="409: the customer unsubscribed from email",
)
VISITOR_TOKENS = Operation(
    "post",
    "/v1/visitor-tokens",
    schemas.VisitorToken,
    "valid until expires_at",
    scope="recs:read",
    request=schemas.VisitorTokenRequest,
    problems=READS,
    notes="for the shop's backend: a token proving that a page's visitor is the customer its "
    "blocks name",
)
EVENTS = Operation(
    "post",
    "/v1/events",
    schemas.EventResult,
    "per-event outcome",
    scope="events:write",
    request=schemas.EventBatch,
    problems=(400, 401, 403, 413, 429, 503),
    unprocessable="every event rejected",
    notes="valid events of a mixed batch are applied",
)
ITEM = Operation(
    "put",
    "/v1/items/{item_id}",
    schemas.CatalogResult,
    "the change is applied to every worker",
    scope="catalog:write",
    parameters=(Parameter("item_id", "path", {"type": "string", "maxLength": 64}),),
    request=schemas.ItemChange,
    problems=(400, 401, 403, 413, 429, 503),
    unprocessable="the change is invalid (each problem named); nothing applied",
    notes="available=false hides the item from every list at once; fields not given keep "
    "their value; an item new to the catalog is listed only after the next training",
)
CATALOG = Operation(
    "post",
    "/v1/catalog",
    schemas.CatalogResult,
    "per-item outcome",
    scope="catalog:write",
    request=schemas.CatalogBatch,
    problems=(400, 401, 403, 413, 429, 503),
    unprocessable="every item rejected",
    notes="valid items of a mixed batch are applied",
)
TRIGGERS = Operation(
    "get",
    "/v1/triggers",
    schemas.Triggers,
    "oldest first",
    scope="recs:read",
    parameters=(
        Parameter("kind", "query", {"type": "string"}, "some of " + ", ".join(TRIGGER_KINDS)),
        Parameter("since", "query", {"type": "string"}, "ISO 8601"),
        Parameter("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
        Parameter(
            "cursor", "query", {"type": "string"}, "the previous page's next_cursor, unchanged"
        ),
    ),
    problems=READS,
)

EXPERIMENTS = Operation(
    "get",
    "/v1/experiments",
    schemas.Experiments,
    "the experiment's arms with 95% intervals, and counts per model version and surface",
    scope="metrics:read",
    problems=(400, 401, 403, 429),
    notes="figures are over the attribution window's clicks and purchases (RECSVC_ATTRIBUTION_"
    "HOURS); an arm's intervals take its customers as the unit",
)
END_EXPERIMENT = Operation(
    "post",
    "/v1/experiments/end",
    schemas.Experiments,
    "the experiments after the change",
    scope="admin",
    request=schemas.ExperimentEnd,
    problems=(400, 401, 403, 409, 429, 503),
    notes="promote: current points at the arm's bundle and the experiment ends; drop: the "
    "arm's customers go to the first arm left (the last arm left is promoted); every worker "
    "reading the models directory follows within RECSVC_RELOAD_SECONDS",
)

OPERATIONS = (
    HEALTHZ,
    READYZ,
    MODEL,
    OPENAPI,
    RECOMMENDATIONS,
    SIMILAR,
    CART,
    PROFILE,
    RECENTLY_VIEWED,
    ERASE,
    CUSTOMER_BLOCK,
    ANONYMOUS_BLOCK,
    METRICS,
    EMBED,
    EMAIL_PICKS,
    VISITOR_TOKENS,
    EVENTS,
    ITEM,
    CATALOG,
    TRIGGERS,
    EXPERIMENTS,
    END_EXPERIMENT,
)

# gunicorn answers these itself, in HTML, before a request reaches the service.
SERVER_LIMITS = {
    "414": {"description": "the request line is longer than gunicorn's limit_request_line"},
    "431": {"description": "the headers are larger than gunicorn's limits"},
}
PROBLEM_STATUSES = (400, 401, 403, 404, 409, 413, 503)
READ: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(name=struct.__name__)}


def _json(answer: type[msgspec.Struct] | tuple[type[msgspec.Struct], ...]) -> dict[str, Any]:
    if isinstance(answer, tuple):
        return {"oneOf": [_ref(struct) for struct in answer]}
    return _ref(answer)


def _operation(operation: Operation) -> dict[str, Any]:
    answer = operation.answer
    if isinstance(answer, str):
        schema = {"type": "object"} if answer == "application/json" else {"type": "string"}
        content = {answer: {"schema": schema}}
    else:
        content = {"application/json": {"schema": _json(answer)}}
    if operation.html:
        content["text/html"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": operation.summary, "content": content}}
    if operation.unprocessable:
        responses["422"] = {"description": operation.unprocessable, "content": content}
    for status in operation.problems:
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    responses.update(SERVER_LIMITS)
    described: dict[str, Any] = {"responses": responses}
    if operation.scope is None:
        described["security"] = []
    else:
        notes = f"; {operation.notes}" if operation.notes else ""
        described["description"] = f"scope {operation.scope}{notes}"
    if operation.parameters:
        described["parameters"] = [p.described() for p in operation.parameters]
    if operation.request is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.request)}},
        }
    return described


@cache
def _components() -> dict[str, Any]:
    structs: list[type[msgspec.Struct]] = [schemas.Problem]
    for operation in OPERATIONS:
        if operation.request is not None:
            structs.append(operation.request)
        if isinstance(operation.answer, tuple):
            structs.extend(operation.answer)
        elif not isinstance(operation.answer, str):
            structs.append(operation.answer)
    _, components = msgspec.json.schema_components(structs, ref_template=REF_TEMPLATE)
    return components


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation)
    problem = {"application/problem+json": {"schema": _ref(schemas.Problem)}}
    responses: dict[str, Any] = {
        f"Problem{status}": {"description": "a problem (RFC 9457)", "content": problem}
        for status in PROBLEM_STATUSES
    }
    responses["Problem429"] = {
        "description": "the API key is over its rate limit (RECSVC_RATE_LIMIT)",
        "headers": {
            "Retry-After": {
                "description": "seconds until a request will be allowed",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        "content": problem,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recsvc",
            "version": "1",
            "description": "Recommendations that never suggest what a customer owns.",
        },
        "security": READ,
        "paths": paths,
        "components": {
            "schemas": _components(),
            "responses": responses,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
