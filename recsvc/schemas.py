"""Every HTTP request and response body, as one typed definition: the views encode (and
decode) these Structs, and ``recsvc.openapi`` generates the document's components from them.

The bounds of an event live here too, beside the ``Event`` Struct: ``recsvc.events``
validates with them and the trainer (``training.merge``) imports them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from recsvc import defaults
from recsvc.policy import TriggerKind
from recsvc.text import MAX_KEY_LENGTH, MAX_SEND_ID_LENGTH, UNSAFE_CHARACTERS

# Bounds of an event, for the service's POST /v1/events and the trainer's event sources.
MAX_BATCH = 1000
MAX_QUANTITY = 1e6  # in size; negative is a return, zero is refused
MAX_UNIT_PRICE = 1e7
MAX_EVENT_ID_LENGTH = 128
MAX_ITEM_ID_LENGTH = 64
MAX_SOURCE_LENGTH = 64
MAX_TITLE_LENGTH = 500  # a catalog write's title
MAX_URL_LENGTH = 2000  # a catalog write's url and image
MAX_CATEGORIES = 20  # names in a catalog write's categories
MAX_CATEGORY_LENGTH = 100
DEFAULT_EVENT_SOURCE = "api"
MAX_IMPRESSION_ID_LENGTH = 64
MAX_SURFACE_LENGTH = 240  # "email:" and a send id
MAX_RANK = 1000

EventKind = Literal[
    "purchase",
    "return",
    "view",
    "cart_add",
    "cart_remove",
    "email_open",
    "email_click",
    "rec_click",
    "unsubscribe",
    "login",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
PURCHASE_KINDS = frozenset({"purchase", "return"})  # the only kinds that change what is owned
# The fields each kind requires, and those it may carry, beyond event_id, customer, timestamp,
# source and kind (every kind may carry ``session``). One definition: recsvc.events validates
# by it and the OpenAPI document describes it.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "purchase": (("item_id", "quantity", "price"), ()),
    "return": (("item_id", "quantity", "price"), ()),
    "view": (("item_id",), ("impression_id",)),
    "cart_add": (("item_id",), ("quantity",)),
    "cart_remove": (("item_id",), ("quantity",)),
    "email_open": (("send_id",), ()),
    "email_click": (("send_id",), ("item_id", "impression_id")),
    "rec_click": (("item_id", "impression_id", "model_version", "surface", "rank"), ()),
    "unsubscribe": ((), ("send_id",)),
    "login": (("session",), ()),
}
assert set(KINDS) == set(EVENT_KINDS)


def _kinds_description() -> str:
    described = []
    for kind, (required, optional) in KINDS.items():
        text = f"{kind}: " + (", ".join(required) or "nothing more")
        if optional:
            text += f" (optional: {', '.join(optional)})"
        described.append(text)
    return "what happened; each kind requires: " + "; ".join(described)


ContentKind = Literal["banner", "article", "offer"]

UNSAFE_PATTERN = f"^[^{UNSAFE_CHARACTERS}]*$"
TEXT_PATTERN = r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$"  # not blank, no control characters
Uri = Annotated[str, Meta(extra_json_schema={"format": "uri"})]


def _text(limit: int, description: str) -> Meta:
    """Not blank, no control characters, at most ``limit`` characters."""
    return Meta(min_length=1, max_length=limit, pattern=TEXT_PATTERN, description=description)


def key_text(description: str, limit: int = MAX_KEY_LENGTH) -> Meta:
    """A customer key (or other id a caller sends): 1 to ``limit`` characters, none unsafe.
    The pattern is documented, not checked on decode: ``recsvc.text`` names the character."""
    return Meta(
        min_length=1,
        max_length=limit,
        description=description,
        extra_json_schema={"pattern": UNSAFE_PATTERN},
    )


EventId = Annotated[
    str, _text(MAX_EVENT_ID_LENGTH, "unique per event; a repeated id is a duplicate")
]
EventCustomer = Annotated[
    str, _text(MAX_KEY_LENGTH, "canonical id, <source>:<id>, email:<address> or phone:<n>")
]
ItemId = Annotated[str, _text(MAX_ITEM_ID_LENGTH, "the catalog's item id")]
EventSource = Annotated[str, _text(MAX_SOURCE_LENGTH, "where the event came from")]
CustomerKey = Annotated[str, key_text("the customer key, exactly as the shop knows it")]
SendId = Annotated[str, key_text("the email send's id", MAX_SEND_ID_LENGTH)]
TokenTtl = Annotated[
    int,
    Meta(
        ge=1,
        le=defaults.VISITOR_TOKEN_MAX_TTL,
        description=f"seconds, an integer from 1 to {defaults.VISITOR_TOKEN_MAX_TTL}",
    ),
]


class Body(Struct, gc=False):
    """A request or response body. Bodies hold only JSON values, never a cycle, so the
    garbage collector need not track them (cheaper to build on the hot path)."""


# Errors


class InvalidParam(Body):
    name: str
    reason: str


class Problem(Body, kw_only=True):
    """A problem (RFC 9457), served as application/problem+json."""

    type: str
    title: str
    status: int
    detail: str
    invalid_params: list[InvalidParam] | UnsetType = UNSET


# Health and the model


class Health(Body):
    status: Literal["ok"]


class Ready(Body):
    status: Literal["ready"]
    model_version: str
    fallback_from: str | None  # what `current` names while another bundle serves in its place


class ModelInfo(Body):
    version: str
    created: str | None
    data_as_of: str | None
    loaded_at: str
    last_error: str | None
    fallback_from: str | None


# Customers


class NextTier(Body):
    name: str
    gap: float


class Tier(Body):
    name: str
    spend: float
    window_days: float
    perks: list[str]
    next: NextTier | None

    @classmethod
    def of(cls, described: dict[str, Any]) -> Tier:
        """From ``TierTable.describe``'s mapping (cheaper than ``msgspec.convert``)."""
        following = described["next"]
        return cls(
            described["name"],
            described["spend"],
            described["window_days"],
            described["perks"],
            None if following is None else NextTier(following["name"], following["gap"]),
        )


ReasonKind = Literal["bought_with", "popular", "trending", "tier_exclusive", "similar_to", "viewed"]


class Reason(Body, omit_defaults=True):
    """Why an item is listed (``recsvc.reasons``):

    - ``bought_with``: the customer's own purchase (``item_id``, ``title``) that adds most to
      the item's score, and the ``source`` it was bought in;
    - ``similar_to``: the item (the page's, or the cart's) it is most often bought with;
    - ``viewed``: the item the customer viewed or put in their cart lately (``item_id``,
      ``title``) that lifted it most;
    - ``popular``: a best seller of ``scope`` (country:<name>, tier:<name>,
      category:<name> or all);
    - ``trending``: selling more lately;
    - ``tier_exclusive``: reserved for the customer's ``tier`` and above.
    """

    kind: ReasonKind
    item_id: str | None = None
    title: str | None = None
    source: str | None = None
    scope: str | None = None
    tier: str | None = None


ImpressionId = Annotated[
    str,
    Meta(
        description="this answer's id: a rec_click (or an email_click) event sends it back, "
        "and purchases of its items within the attribution window count for it"
    ),
]
ArmName = Annotated[
    str | None, Meta(description="the experiment arm whose bundle answered; null outside one")
]


class Recommendation(Body):
    item_id: str
    score: float
    title: str
    price: float | None
    reason: Reason


class Recommendations(Body):
    customer_id: str
    model_version: str
    fallback: bool
    degraded: bool
    tier: Tier
    items: list[Recommendation]
    impression_id: ImpressionId
    arm: ArmName
    # With fallback: whose best sellers these are ("country:Germany", "tier:gold", "all").
    fallback_scope: (
        Annotated[str, Meta(description="with fallback: country:<name>, tier:<name> or all")] | None
    ) = None


class SimilarItems(Body):
    item_id: str
    model_version: str
    fallback: Annotated[bool, Meta(description="the model has no neighbours for the item")]
    degraded: bool
    items: list[Recommendation]
    impression_id: ImpressionId
    arm: ArmName
    fallback_scope: (
        Annotated[str, Meta(description="with fallback: category:<name> or all")] | None
    ) = None


class CartRecommendations(Body):
    model_version: str
    fallback: Annotated[bool, Meta(description="no cart item has neighbours in the model")]
    degraded: bool
    unknown_items: Annotated[
        list[str], Meta(description="cart item ids the catalog has never heard of")
    ]
    items: list[Recommendation]
    impression_id: ImpressionId
    arm: ArmName
    fallback_scope: (
        Annotated[str, Meta(description="with fallback: country:<name>, tier:<name> or all")] | None
    ) = None


class BestContact(Body):
    hour: Annotated[int, Meta(description="0..23, UTC")] | None
    weekday: str | None
    from_: Annotated[
        Literal["own opens", "own orders", "population"],
        Meta(
            description="their usual email open time (enough opens), else their usual order "
            "time (enough orders), else the population's order time"
        ),
    ] = field(name="from")


class EmailEngagement(Body):
    """What the email events kept (RECSVC_EVENT_RETENTION_DAYS) say (``recsvc.engagement``)."""

    opens: int
    clicks: int
    sends_opened: Annotated[int, Meta(description="distinct sends opened or clicked")]
    sends_clicked: int
    click_rate: Annotated[float, Meta(description="sends clicked / sends opened")] | None
    last_open: str | None
    sends_opened_since_click: int
    disengaged: Annotated[
        bool,
        Meta(description="still subscribed, and sends_opened_since_click reached disengaged_opens"),
    ]
    unsubscribed: bool
    unsubscribed_at: str | None


class Signals(Body):
    as_of: str
    first_purchase: str | None
    last_purchase: str | None
    days_since_last_purchase: float | None
    median_days_between_orders: float | None
    overdue_ratio: float | None
    lapsing: bool
    best_contact: BestContact
    thresholds_crossed: list[str]
    thank_you: bool
    email: EmailEngagement


class SinceTraining(Body):
    events: int
    purchases: int
    returns: int
    spend: float


class Profile(Body):
    customer_id: str
    known: bool
    model_version: str
    degraded: bool
    tier: Tier
    spend: float
    orders: int
    signals: Signals
    since_training: SinceTraining


class ViewedItem(Body):
    item_id: str
    title: str | None  # None: an item the catalog does not know (yet)
    viewed_at: Annotated[str, Meta(description="ISO 8601, UTC: the latest view")]
    views: int


class RecentlyViewed(Body):
    customer_id: str
    degraded: bool
    items: Annotated[list[ViewedItem], Meta(description="latest view first, each item once")]


class ErasureReceipt(Body, kw_only=True):
    erased: bool
    customer_id: str | None
    aliases: int
    events_removed: int
    erased_at: str


# Channels


class ProductCard(Body):
    item_id: str
    title: str
    price: float | None
    categories: list[str]
    url: Uri
    image: Uri
    score: float
    # Null only in email picks kept from before reasons existed (a send's picks never change).
    reason: Reason | None = None


class Content(Body):
    id: str
    kind: ContentKind
    title: str
    body: str
    image: str | None
    url: str


class Block(Body):
    slot: str
    customer_id: str | None
    model_version: str
    fallback: bool
    degraded: bool
    tier: Tier
    content: list[Content]
    products: list[ProductCard]
    impression_id: ImpressionId
    arm: ArmName


class PublicBlock(Body, forbid_unknown_fields=True):
    """A block as a key with only blocks:read sees it: no customer figures."""

    slot: str
    model_version: str
    content: list[Content]
    products: list[ProductCard]
    personalised: Annotated[
        bool, Meta(description="a valid visitor token made this the named customer's block")
    ]
    impression_id: ImpressionId
    arm: ArmName


class VisitorTokenRequest(Body, forbid_unknown_fields=True):
    customer: CustomerKey
    ttl: TokenTtl = defaults.VISITOR_TOKEN_TTL


class VisitorToken(Body):
    token: str
    expires_at: str


class EmailPicks(Body):
    send_id: str
    customer_id: str
    model_version: str
    created_at: str
    fallback: bool
    tier: Tier
    currency_symbol: str
    items: list[ProductCard]
    degraded: bool = False  # not in the stored snapshot: each answer says its own
    # Kept in the snapshot, so every answer for one send names one impression; "" and null in
    # snapshots kept before impressions existed (the answer then gets a new id each time).
    impression_id: ImpressionId = ""
    arm: ArmName = None


# Events


class Event(Body, forbid_unknown_fields=True):
    """An event as POST /v1/events takes it: a purchase or return, or an interaction
    (``kind``; which fields each kind needs is ``KINDS``). The service validates each event
    of a batch on its own (``recsvc.events.parse_event``) with these bounds, so that one bad
    event names its fields without failing the batch."""

    event_id: EventId
    customer: EventCustomer
    timestamp: Annotated[
        str,
        Meta(
            description="ISO 8601, from 1970 to a day from now; UTC without an offset",
            examples=["2011-12-09T12:50:00Z"],
        ),
    ]
    kind: Annotated[EventKind, Meta(description=_kinds_description())] = "purchase"
    source: EventSource = DEFAULT_EVENT_SOURCE
    item_id: ItemId | UnsetType = UNSET
    quantity: (
        Annotated[
            float,
            Meta(
                ge=-MAX_QUANTITY,
                le=MAX_QUANTITY,
                description="a purchase's units (negative for a return); a return's or a "
                "cart change's units, positive",
                extra_json_schema={"not": {"const": 0}},
            ),
        ]
        | UnsetType
    ) = UNSET
    price: Annotated[float, Meta(ge=0, le=MAX_UNIT_PRICE)] | UnsetType = UNSET
    session: (
        Annotated[
            str,
            _text(
                MAX_KEY_LENGTH,
                "session:<id>, the anonymous session this customer's event continues: its "
                "views, cart and purchases become the customer's (any kind; login needs it)",
            ),
        ]
        | UnsetType
    ) = UNSET
    send_id: Annotated[str, _text(MAX_SEND_ID_LENGTH, "the email send")] | UnsetType = UNSET
    impression_id: (
        Annotated[str, _text(MAX_IMPRESSION_ID_LENGTH, "the impression_id of the answer")]
        | UnsetType
    ) = UNSET
    model_version: (
        Annotated[str, _text(MAX_EVENT_ID_LENGTH, "the answer's model_version")] | UnsetType
    ) = UNSET
    surface: (
        Annotated[
            str,
            _text(
                MAX_SURFACE_LENGTH,
                "where it was shown: recommendations, similar, cart, block:<slot> or "
                "email:<send id>",
            ),
        ]
        | UnsetType
    ) = UNSET
    rank: Annotated[int, Meta(ge=1, le=MAX_RANK, description="1 = first")] | UnsetType = UNSET


class EventBatch(Body):
    events: Annotated[list[Event], Meta(min_length=1, max_length=MAX_BATCH)]


class Rejection(Body):
    index: int
    event_id: str | None
    errors: list[str]


class EventResult(Body):
    accepted: list[str]
    duplicates: list[str]
    rejected: list[Rejection]


# Catalog changes (recsvc.catalog checks them field by field, every problem named)


class ItemChange(Body, forbid_unknown_fields=True):
    """What PUT /v1/items/<item_id> takes: any of these fields, at least one."""

    available: bool | UnsetType = UNSET  # false: out of stock or discontinued
    price: Annotated[float, Meta(ge=0, le=MAX_UNIT_PRICE)] | UnsetType = UNSET
    title: Annotated[str, Meta(min_length=1, max_length=MAX_TITLE_LENGTH)] | UnsetType = UNSET
    url: Annotated[str, Meta(min_length=1, max_length=MAX_URL_LENGTH)] | UnsetType = UNSET
    image: Annotated[str, Meta(min_length=1, max_length=MAX_URL_LENGTH)] | UnsetType = UNSET
    categories: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]],
            Meta(max_length=MAX_CATEGORIES),
        ]
        | UnsetType
    ) = UNSET


class CatalogItem(ItemChange, forbid_unknown_fields=True, kw_only=True):
    """One item of POST /v1/catalog."""

    item_id: ItemId


class CatalogBatch(Body):
    items: Annotated[list[CatalogItem], Meta(min_length=1, max_length=MAX_BATCH)]


class CatalogRejection(Body):
    index: int
    item_id: str | None
    errors: list[str]


class CatalogResult(Body):
    accepted: list[str]  # item ids, changes applied to every worker
    rejected: list[CatalogRejection]


# CRM triggers


class Trigger(Body):
    customer_id: str
    kind: TriggerKind
    fired_at: str
    reason: str
    figures: dict[str, Any]


class Triggers(Body):
    model_version: str
    degraded: bool
    triggers: list[Trigger]
    next_cursor: str | None


# Experiments and online figures (recsvc.experiments, recsvc.stats)


class FigureInterval(Body):
    """A figure and its 95% interval (null: no data, or too few customers to tell)."""

    value: float | None
    low: float | None
    high: float | None


class ArmDifference(Body, kw_only=True):
    """This arm's figure less the first arm's, with its 95% interval."""

    ctr: FigureInterval
    conversion_rate: FigureInterval
    revenue_per_impression: FigureInterval


class ArmReport(Body, kw_only=True):
    name: str
    model_version: str
    weight: Annotated[int, Meta(description="buckets out of 100")]
    dropped: bool
    customers: Annotated[int, Meta(description="customers shown at least one answer")]
    impressions: int
    clicked: Annotated[int, Meta(description="impressions with at least one click")]
    converted: Annotated[int, Meta(description="impressions with at least one purchase")]
    revenue: Annotated[float, Meta(description="attributed to its impressions")]
    ctr: FigureInterval
    conversion_rate: FigureInterval
    revenue_per_impression: FigureInterval
    difference: Annotated[
        ArmDifference | None, Meta(description="against the first arm; null for the first")
    ]


class ExperimentReport(Body, kw_only=True):
    name: str
    running: bool
    ended_at: str | None
    promoted: str | None
    arms: list[ArmReport]


class SurfaceFigures(Body, kw_only=True):
    """Counts of one model version, experiment arm and surface."""

    model_version: str
    experiment: str | None
    arm: str | None
    surface: Annotated[
        str, Meta(description="recommendations, similar, cart, block:<slot> or email")
    ]
    impressions: int
    clicked: int
    clicks: int
    converted: int
    purchases: int
    revenue: float
    ctr: float | None
    conversion_rate: float | None


class Experiments(Body, kw_only=True):
    experiment: ExperimentReport | None
    error: Annotated[
        str | None, Meta(description="why the experiment is not being served, if it is not")
    ]
    attribution_hours: int
    degraded: Annotated[bool, Meta(description="the store did not answer: no figures")]
    figures: list[SurfaceFigures]


class ExperimentEnd(Body, forbid_unknown_fields=True):
    """POST /v1/experiments/end: one of promote (its bundle becomes current) or drop."""

    promote: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET
    drop: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET


encoder = msgspec.json.Encoder()
