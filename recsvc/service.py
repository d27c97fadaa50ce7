"""The service core: what every endpoint and ``recsvc export-picks`` ask of the served model
and the real-time state, as plain calls. No web framework here: a view parses the request,
calls a method of ``Service`` and encodes what it returns (the Structs of ``recsvc.schemas``);
errors are those of ``recsvc.errors``, which only ``recsvc.api.problems`` turns into answers.

Only the core (this module, ``ranker``, ``realtime``, ``channels``, ``signals``, ``triggers``)
reaches into the served model's arrays, alias index and tier table.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import msgspec

from recsvc import (
    channels,
    defaults,
    engagement,
    experiments,
    impressions,
    insights,
    interactions,
    products,
    reasons,
    tokens,
)
from recsvc.auth import ApiKey, Authenticator
from recsvc.bundle import VerificationRecords, point_current
from recsvc.catalog import ServedCatalog, records_of, served_catalog
from recsvc.config import ServiceConfig
from recsvc.errors import (
    ExperimentNotRunning,
    InvalidParameter,
    NoModelLoaded,
    RecsvcError,
    StoreUnavailable,
    UnknownCustomer,
    UnknownItem,
    Unsubscribed,
)
from recsvc.events import STORE_FILE, ErasureLog, Event, EventLog, logs_origin
from recsvc.experiments import Assignment
from recsvc.filters import NO_FILTER, ItemFilter
from recsvc.identity import request_aliases
from recsvc.impressions import Impressions
from recsvc.logrecords import catalog_state
from recsvc.logs import CustomerHasher
from recsvc.ranker import RankedItem
from recsvc.ratelimit import RateLimiter
from recsvc.realtime import CustomerView, Realtime, Resolved
from recsvc.registry import ModelRegistry, ServedModel
from recsvc.schemas import (
    CartRecommendations,
    EmailPicks,
    ErasureReceipt,
    EventResult,
    ExperimentReport,
    Experiments,
    ProductCard,
    Profile,
    Reason,
    RecentlyViewed,
    Recommendation,
    Recommendations,
    Rejection,
    Signals,
    SimilarItems,
    SinceTraining,
    Tier,
    ViewedItem,
)
from recsvc.signals import customer_signals
from recsvc.store import CatalogOverlay, EmbeddedStore, ImpressionFigures, RedisStore, Store
from recsvc.triggers import Key, live_since

log = logging.getLogger(__name__)

SERVICE = "recsvc"  # the key of the app's Service in Flask's app.extensions
MODELS_CACHED = 8  # bundles whose catalog overlay is kept applied (current and arms)


def listed(
    model: ServedModel,
    catalog: ServedCatalog,
    items: list[RankedItem],
    why: list[Reason],
) -> list[Recommendation]:
    """Ranked items as list endpoints answer them, at the catalog's titles and prices."""
    item_ids, titles, prices = model.item_ids, catalog.titles, catalog.prices
    return [
        Recommendation(
            item_ids[item.index], item.score, titles[item.index], prices[item.index], reason
        )
        for item, reason in zip(items, why, strict=True)
    ]


def segments(tier_names: list[str], tier: int, country: str | None) -> tuple[str, ...]:
    """Whose best sellers a customer the model does not know gets, in order: those of
    ``country``, then of their tier when purchases reported since training lift them above
    the first (a stranger's first tier says nothing about them)."""
    scopes: tuple[str, ...] = () if country is None else (f"country:{country.strip()}",)
    if tier > 0:
        scopes += (f"tier:{tier_names[tier]}",)
    return scopes


def catalog_item(model: ServedModel, item_id: str) -> tuple[str, int | None]:
    """The id of the item ``item_id`` names (as the bundle spells it, else upper-cased as
    catalog writes store it) and its bundle index (None: not in the bundle)."""
    index = model.item_index.get(item_id)
    if index is not None:
        return item_id, index
    normal = item_id.strip().upper()
    return normal, model.item_index.get(normal)


class Serving(NamedTuple):
    """The model that answers a request, and the experiment arm that chose it (None: no
    experiment, or nobody to assign)."""

    model: ServedModel
    assignment: Assignment | None = None


class TriggerPage(NamedTuple):
    triggers: list[dict[str, Any]]
    last: Key | None  # the cursor's position after this page; None: no more
    degraded: bool  # the store did not answer: triggers from the bundle only


class Service:
    """The served model, the real-time state and the service's settings, held together."""

    def __init__(
        self,
        config: ServiceConfig,
        registry: ModelRegistry,
        realtime: Realtime,
        authenticator: Authenticator | None,
        limiter: RateLimiter,
        hasher: CustomerHasher,
        shown: Impressions,
    ) -> None:
        self.config = config
        self.registry = registry
        self.realtime = realtime
        self.authenticator = authenticator  # None: RECSVC_AUTH=off
        self.limiter = limiter
        self.hasher = hasher
        self.impressions = shown
        # The overlay as last applied to each bundle served (an experiment serves several):
        # version -> (model, overlay, result), rebuilt when either changes.
        self._catalogs: dict[str, tuple[ServedModel, CatalogOverlay, ServedCatalog]] = {}
        self._catalog_from_logs: CatalogOverlay | None = None
        self._tier_figures: insights.TierFigures | None = None  # of the last bundle asked
        self.movements = insights.Movements()

    @classmethod
    def start(
        cls,
        config: ServiceConfig,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], object] = time.sleep,
    ) -> Service:
        """Load the current bundle and open the store and the durable logs as ``config``
        says; a Redis that lost its data is rebuilt from the logs before use. ``clock`` (the
        store's and the rate limiter's time) and ``wait`` (the bundle watcher's pause between
        checks) are seams for tests, which drive them instead of sleeping."""
        if config.identity_key.development:
            log.warning(
                "alias digests use the published development secret (RECSVC_ID_SECRET unset or set "
                "to it): anyone can reverse them; "
                "use this for local work only"
            )
        registry = ModelRegistry(
            config.models_dir,
            config.identity_key,
            wait=wait,
            experiment=config.experiment,
            records=VerificationRecords(config.verified_dir),
        )
        registry.load()
        store = make_store(config, clock)
        realtime = Realtime(
            store, EventLog(config.events_dir), ErasureLog(config.events_dir), config.identity_key
        )
        if registry.model is not None:
            realtime.restore(registry.model)
        return cls(
            config,
            registry,
            realtime,
            Authenticator(config.api_keys) if config.auth else None,
            RateLimiter(store, config.rate_limit, clock),
            CustomerHasher(config.log_salt or os.urandom(16)),
            Impressions(store, clock),
        )

    @property
    def store(self) -> Store:
        return self.realtime.store

    def model(self) -> ServedModel:
        """The model to answer with (take it once per request); NoModelLoaded when none."""
        model = self.registry.model
        if model is None:
            raise NoModelLoaded(self.registry.last_error or "no bundle yet")
        return model

    def serving(self, key: str | None) -> Serving:
        """The model to answer the customer ``key`` names with (None: an anonymous visitor,
        who is in no experiment): their experiment arm's, else the current one."""
        model = self.model()
        running = self.registry.running
        if running is None or key is None:
            return Serving(model)
        arm = running.split.arm_of(self.realtime.resolve(model, key).store_key)
        return Serving(running.models[arm.name], Assignment(running.experiment.name, arm.name))

    def admit(self, key: ApiKey | None, customer_key: str | None, send: str | None = None) -> float:
        """The rate limiter's wait for ``key`` (RateLimiter.wait), with the store reads of a
        request for the customer ``customer_key`` names (None: none), and for the kept picks
        of their email ``send`` (``channels.snapshot_key``), in the same round trip. A key
        that names nobody valid reads nothing ahead: the request reports it."""
        store_key = None
        if customer_key is not None:
            try:
                resolved = self.realtime.resolve(self.serving(customer_key).model, customer_key)
            except RecsvcError:
                resolved = None
            if resolved is not None and not resolved.erased:
                store_key = resolved.store_key
        return self.limiter.wait(key, store_key, None if store_key is None else send)

    # Catalog

    def catalog(self, model: ServedModel) -> ServedCatalog:
        """The catalog overlay applied to ``model``, as the store holds it now. A store that
        does not answer leaves the last overlay read in force."""
        cached = self._catalogs.get(model.version)
        try:
            overlay = self.realtime.store.catalog()
        except StoreUnavailable:
            overlay = self._logged_catalog() if cached is None else cached[1]
        if cached is not None and cached[0] is model and cached[1] is overlay:
            return cached[2]
        served = ServedCatalog.of(model, overlay) if overlay.items else served_catalog(model)
        if cached is None and len(self._catalogs) >= MODELS_CACHED:
            self._catalogs.clear()
        self._catalogs[model.version] = (model, overlay, served)
        return served

    def _logged_catalog(self) -> CatalogOverlay:
        """The overlay as this host's durable logs hold it, for a worker that started while
        the store did not answer (read once)."""
        if self._catalog_from_logs is None:
            records = self.realtime.catalog_log.records()
            self._catalog_from_logs = CatalogOverlay(-1, catalog_state(records))
        return self._catalog_from_logs

    def set_items(self, changes: list[tuple[str, dict[str, Any]]]) -> None:
        """Record catalog changes: the durable log first, then the store every worker reads.
        StoreUnavailable when the store could not take them (they are in the log; a retry
        writes the same again, which changes nothing twice)."""
        if not changes:
            return
        try:
            self.realtime.catalog_log.append(records_of(changes, time.time()))
        except OSError:
            raise StoreUnavailable("catalog changes cannot be recorded now; retry") from None
        try:
            self.realtime.store.set_items(changes)
        except StoreUnavailable:
            raise StoreUnavailable(
                "catalog changes are logged but not yet applied to the store; retry"
            ) from None

    # Customers

    def resolve(self, model: ServedModel, key: str) -> Resolved:
        """The customer ``key`` names: model row, canonical id, store key, and whether they
        are erased (the erasure list is checked first, in memory; an erased customer has no
        row and no id)."""
        return self.realtime.resolve(model, key)

    def customer(self, model: ServedModel, key: str | None) -> CustomerView:
        """The customer as the service sees them now: the bundle plus the events since
        (None: an anonymous visitor)."""
        return anonymous() if key is None else self.realtime.view(model, key)

    def customer_ids(self, model: ServedModel) -> list[str]:
        """Every customer the bundle was trained on, by canonical id."""
        return [str(customer) for customer in model.ranker.arrays.customer_ids]

    def tier_names(self, model: ServedModel) -> list[str]:
        return list(model.ranker.tiers.names)

    def tier_name(self, model: ServedModel, customer: CustomerView) -> str:
        name: str = model.ranker.tiers.describe(customer.window_spend)["name"]
        return name

    # Answers

    def recommendations(
        self,
        model: ServedModel,
        key: str,
        n: int,
        filters: ItemFilter = NO_FILTER,
        country: str | None = None,
        assignment: Assignment | None = None,
        preview: bool = False,
    ) -> Recommendations:
        """UnknownCategory for a filter's unknown category. A customer the model does not
        know gets the best sellers of ``country``, else of their tier when purchases reported
        since training lift them above the first (a stranger's first tier says nothing about
        them), else of all; a segment without a list is skipped, never an error. ``preview``:
        what the customer would get, for the dashboard; no impression is recorded (the
        impression id is empty), so looking never counts in an experiment."""
        customer = self.realtime.view(model, key)
        ranker = model.ranker
        tiers = ranker.tiers
        tier = tiers.index(customer.window_spend)
        scopes = segments(tiers.names, tier, country)
        catalog = self.catalog(model)
        mask = filters.mask(model, catalog)
        ranking = ranker.recommend_row(
            customer.row,
            n,
            customer.deltas,
            tier,
            allowed=mask,
            scopes=scopes,
            unavailable=catalog.unavailable,
            interest=customer.interest,
        )
        items = listed(
            model,
            catalog,
            ranking.items,
            reasons.of_ranking(model, ranking, customer.row, catalog.titles),
        )
        return Recommendations(
            customer.customer_id or key,
            model.version,
            ranking.fallback,
            customer.degraded,
            Tier.of(tiers.describe(customer.window_spend)),
            items,
            self._shown(
                model,
                impressions.RECOMMENDATIONS,
                customer,
                ids_of(items),
                assignment,
                preview=preview,
            ),
            None if assignment is None else assignment.arm,
            ranking.scope,
        )

    def _shown(
        self,
        model: ServedModel,
        surface: str,
        customer: CustomerView,
        item_ids: list[str],
        assignment: Assignment | None,
        impression_id: str | None = None,
        *,
        preview: bool = False,
    ) -> str:
        """The impression id of a list shown to ``customer`` (see recsvc.impressions); for a
        preview, none ("")."""
        if preview:
            return ""
        who = "" if customer.erased else customer.store_key
        return self.impressions.shown(
            model.version, surface, who, item_ids, assignment, impression_id
        )

    def similar(
        self,
        model: ServedModel,
        item_id: str,
        n: int,
        filters: ItemFilter = NO_FILTER,
        key: str | None = None,
        assignment: Assignment | None = None,
    ) -> SimilarItems:
        """Items bought with ``item_id``, for the customer ``key`` names (None: anyone).
        UnknownItem when neither the bundle nor the catalog changes know the item."""
        catalog = self.catalog(model)
        mask = filters.mask(model, catalog)
        item_id, index = catalog_item(model, item_id)
        if index is None and item_id not in catalog.added:
            raise UnknownItem(item_id)
        customer = self.customer(model, key)
        tier = model.ranker.tiers.index(customer.window_spend)
        found = products.similar(model, customer, catalog, item_id, n, mask, tier)
        items = listed(model, catalog, found.items, found.reasons)
        return SimilarItems(
            item_id,
            model.version,
            found.fallback,
            customer.degraded,
            items,
            self._shown(model, impressions.SIMILAR, customer, ids_of(items), assignment),
            None if assignment is None else assignment.arm,
            found.scope,
        )

    def cart(
        self,
        model: ServedModel,
        item_ids: list[str],
        n: int,
        filters: ItemFilter = NO_FILTER,
        key: str | None = None,
        country: str | None = None,
        assignment: Assignment | None = None,
    ) -> CartRecommendations:
        """Items bought with a cart's, for the customer ``key`` names (None: anyone). Item ids
        the catalog has never heard of are listed in the answer, not an error; when no cart
        item has neighbours, the best sellers of ``country`` (or the customer's tier) fill
        the list, as for recommendations."""
        catalog = self.catalog(model)
        mask = filters.mask(model, catalog)
        cart: list[int] = []
        unknown: list[str] = []
        for raw in item_ids:
            item_id, index = catalog_item(model, raw)
            if index is not None:
                cart.append(index)
            elif item_id not in catalog.added:
                unknown.append(raw)
        customer = self.customer(model, key)
        tiers = model.ranker.tiers
        tier = tiers.index(customer.window_spend)
        found = products.complements(
            model, customer, catalog, cart, n, mask, tier, segments(tiers.names, tier, country)
        )
        items = listed(model, catalog, found.items, found.reasons)
        return CartRecommendations(
            model.version,
            found.fallback,
            customer.degraded,
            unknown,
            items,
            self._shown(model, impressions.CART, customer, ids_of(items), assignment),
            None if assignment is None else assignment.arm,
            found.scope,
        )

    def profile(self, model: ServedModel, key: str) -> Profile:
        customer = self.realtime.view(model, key)
        arrays = model.ranker.arrays
        row = customer.row
        events = customer.events
        return Profile(
            customer_id=customer.customer_id or key,
            known=row is not None,
            model_version=model.version,
            degraded=customer.degraded,
            tier=Tier.of(model.ranker.tiers.describe(customer.window_spend)),
            spend=round(customer.lifetime_spend, 2),
            orders=0 if row is None else int(arrays.customer_orders[row]),
            signals=msgspec.convert(customer_signals(model, customer), Signals),
            since_training=SinceTraining(
                events=len(events),
                purchases=sum(1 for event in events if event.kind == "purchase"),
                returns=sum(1 for event in events if event.kind == "return"),
                spend=round(customer.recent_spend, 2),
            ),
        )

    def recently_viewed(self, model: ServedModel, key: str, n: int) -> RecentlyViewed:
        customer = self.realtime.view(model, key)
        catalog = self.catalog(model)
        found = []
        for viewed in interactions.recently_viewed(customer.interactions, n):
            _, index = catalog_item(model, viewed.item_id)
            title = catalog.titles[index] if index is not None else None
            found.append(ViewedItem(viewed.item_id, title, viewed.viewed_at, viewed.views))
        return RecentlyViewed(customer.customer_id or key, customer.degraded, found)

    def email_preview(self, model: ServedModel, key: str, n: int) -> EmailPicks:
        """The picks an email sent now would carry, without keeping them as a send's (see
        ``email_picks``); Unsubscribed as there."""
        customer = self.realtime.view(model, key)
        unsubscribed_at = engagement.of(customer.interactions).unsubscribed_at
        if unsubscribed_at is not None:
            raise Unsubscribed(unsubscribed_at.date())
        catalog = self.catalog(model)
        answer = channels.email_picks(model, customer, key, "preview", n, "", None, catalog)
        picks = msgspec.convert(answer, EmailPicks)
        return msgspec.structs.replace(picks, degraded=customer.degraded)

    # What the dashboard shows beyond the API (recsvc.insights)

    def holdings(
        self, model: ServedModel, customer: CustomerView
    ) -> dict[str, list[insights.Holding]]:
        return insights.holdings(model, customer, self.catalog(model).titles)

    def spend_history(
        self, model: ServedModel, customer: CustomerView
    ) -> list[insights.SpendPoint]:
        return insights.spend_history(model, customer)

    def alias_count(self, model: ServedModel, customer: CustomerView) -> int:
        return insights.alias_count(model, customer.row)

    def tier_figures(self, model: ServedModel) -> insights.TierFigures:
        """Each tier's customers and spend as trained: computed once per bundle."""
        figures = self._tier_figures
        if figures is None or figures.version != model.version:
            figures = self._tier_figures = insights.TierFigures(model)
        return figures

    def tier_movements(self, model: ServedModel) -> insights.MovementState:
        """How customers moved between tiers since the previous bundle in the models
        directory (computed once per pair of bundles, off the request path)."""
        return self.movements.of(model, self.config.models_dir)

    def block(
        self,
        model: ServedModel,
        key: str | None,
        slot: str,
        filters: ItemFilter = NO_FILTER,
        today: date | None = None,
        cart: list[str] | None = None,
        assignment: Assignment | None = None,
        preview: bool = False,
    ) -> dict[str, Any]:
        """Website slot ``slot`` for the customer ``key`` names (None: an anonymous visitor),
        with the complements of ``cart`` (item ids) for products when given; UnknownSlot,
        UnknownCategory. See ``channels.public_block`` for a publishable key, and
        ``recommendations`` for ``preview``."""
        catalog = self.catalog(model)
        mask = filters.mask(model, catalog)
        customer = self.customer(model, key)
        today = today or datetime.now(UTC).date()
        complements = None
        if cart is not None:
            indices = [i for i in (catalog_item(model, item)[1] for item in cart) if i is not None]
            tier = model.ranker.tiers.index(customer.window_spend)
            complements = functools.partial(
                products.complements,
                model,
                customer,
                catalog,
                indices,
                allowed=mask,
                tier=tier,
                scopes=(),
            )
        block = channels.block(model, customer, key, slot, today, mask, catalog, complements)
        surface = impressions.block_surface(slot)
        shown = [card["item_id"] for card in block["products"]]
        block["impression_id"] = self._shown(
            model, surface, customer, shown, assignment, preview=preview
        )
        block["arm"] = None if assignment is None else assignment.arm
        return block

    def visitor_proven(self, key: str, token: str | None) -> bool:
        """Whether ``token`` is a valid visitor token for ``key`` (see recsvc.tokens)."""
        secret = self.config.secret_key
        return token is not None and tokens.verify(secret, key, token.strip())

    def email_picks(
        self,
        model: ServedModel,
        key: str,
        send_id: str,
        n: int,
        filters: ItemFilter = NO_FILTER,
        assignment: Assignment | None = None,
    ) -> EmailPicks:
        """The picks of one send: the first answer for (customer, send, n, filters) is kept in
        the store and every later one repeats it. A store that does not answer leaves them
        not stored (a later answer may differ) and the answer degraded: it could not check
        for an unsubscribe either. Unsubscribed when the customer unsubscribed from email."""
        if not 1 <= n <= defaults.EMAIL_MAX_N:
            raise InvalidParameter("n", f"must be between 1 and {defaults.EMAIL_MAX_N}, got {n}")
        customer = self.realtime.view(model, key)
        unsubscribed_at = engagement.of(customer.interactions).unsubscribed_at
        if unsubscribed_at is not None:
            raise Unsubscribed(unsubscribed_at.date())
        catalog = self.catalog(model)
        send = channels.snapshot_key(send_id, n, filters.key())
        degraded = customer.degraded
        try:
            kept = self.realtime.store.kept_snapshot(customer.store_key, send)
        except StoreUnavailable:
            kept, degraded = None, True
        if kept is None:
            kept, degraded = self._new_picks(
                model, customer, key, send, send_id, n, filters, catalog, assignment, degraded
            )
        picks = msgspec.json.decode(kept, type=EmailPicks)
        if not picks.impression_id:  # kept before impressions: a new one for each answer
            picks = msgspec.structs.replace(
                picks,
                impression_id=self._shown(
                    model, impressions.EMAIL, customer, ids_of(picks.items), None
                ),
            )
        picks = msgspec.structs.replace(
            picks, customer_id=customer.customer_id or key, degraded=degraded
        )
        if len(catalog.unavailable):  # a kept snapshot may name an item withdrawn since
            hidden = {model.item_ids[index] for index in catalog.unavailable.tolist()}
            shown = [item for item in picks.items if item.item_id not in hidden]
            return msgspec.structs.replace(picks, items=shown)
        return picks

    def _new_picks(
        self,
        model: ServedModel,
        customer: CustomerView,
        key: str,
        send: str,
        send_id: str,
        n: int,
        filters: ItemFilter,
        catalog: ServedCatalog,
        assignment: Assignment | None,
        degraded: bool,
    ) -> tuple[str, bool]:
        """Rank the picks of a send none is kept for, and keep them unless another answer got
        there first: (the picks kept, degraded)."""
        answer = channels.email_picks(
            model,
            customer,
            key,
            send_id,
            n,
            impressions.new_id(),
            filters.mask(model, catalog),
            catalog,
        )
        answer["arm"] = None if assignment is None else assignment.arm
        # Kept without the customer's id or key (it may be an address): the store holds the
        # snapshot under a digest, and the answer names the customer as asked.
        fresh = channels.dumps({**answer, "customer_id": ""})
        try:
            kept = self.realtime.store.snapshot(
                customer.store_key, send, fresh, self.config.snapshot_ttl_days * 86400.0
            )
        except StoreUnavailable:
            kept, degraded = fresh, True
        if kept == fresh:  # this answer made the picks: its impression, once per send
            self._shown(
                model,
                impressions.EMAIL,
                customer,
                [card["item_id"] for card in answer["items"]],
                assignment,
                answer["impression_id"],
            )
        return kept, degraded

    def triggers_page(
        self,
        model: ServedModel,
        kinds: set[str],
        since: float,
        after: Key | None,
        limit: int,
    ) -> TriggerPage:
        """A page of the trigger feed: the bundle's triggers and those fired since, without
        erased customers; degraded (the bundle's only) when the store does not answer."""
        realtime = self.realtime
        degraded = False
        try:
            erased = realtime.store.erased_keys() | realtime.erased
            live = realtime.store.triggers_since(live_since(since, after))
        except StoreUnavailable:
            erased, live, degraded = set(realtime.erased), [], True
        page, last = model.triggers.page(live, erased, kinds, since, after, limit)
        return TriggerPage(page, last, degraded)

    # Experiments

    def experiments(self) -> Experiments:
        """The experiment in force with its arms' figures, and every model version's and
        surface's counts (degraded: none, when the store does not answer). This worker's
        buffered impressions are written first."""
        self.impressions.flush()
        registry = self.registry
        try:
            figures, degraded = self.store.impression_figures(), False
        except StoreUnavailable:
            figures, degraded = ImpressionFigures([], {}), True
        experiment = registry.experiment
        return Experiments(
            experiment=None if experiment is None else experiments.report(experiment, figures),
            error=registry.experiment_error,
            attribution_hours=self.config.attribution_hours,
            degraded=degraded,
            figures=experiments.surface_figures(figures.figures),
        )

    def experiment_report(self) -> ExperimentReport | None:
        """The experiment in force and its arms' figures as the store holds them now, without
        writing this worker's buffered impressions first (a periodic reading must not change
        when they are written); None without one. StoreUnavailable when the store does not
        answer."""
        experiment = self.registry.experiment
        if experiment is None:
            return None
        return experiments.report(experiment, self.store.impression_figures())

    def end_experiment(self, promote: str | None = None, drop: str | None = None) -> Experiments:
        """Promote an arm (``current`` points at its bundle) or drop one, without a restart:
        the experiment file says so to every worker that reads this models directory.
        ExperimentNotRunning when none runs; InvalidParameter for an arm it does not have."""
        registry = self.registry
        models_dir = self.config.models_dir
        with experiments.changing(models_dir):
            registry.check_experiment()
            experiment = registry.experiment
            if experiment is None or not experiment.running:
                raise ExperimentNotRunning("no experiment is running")
            ended = experiments.end(experiment, datetime.now(UTC), promote, drop)
            promoted = None if ended.promoted is None else ended.arm(ended.promoted)
            if promoted is not None:
                point_current(models_dir, promoted.version)
            experiments.write(models_dir, ended)
        registry.check()
        log.info(
            "experiment %s: %s",
            ended.name,
            f"promoted {promoted.name}" if promoted else f"dropped {drop}",
        )
        return self.experiments()

    # Changes

    def record(self, model: ServedModel, batch: list[tuple[int, Event]]) -> EventResult:
        """Apply a batch's valid events (see Realtime.record); StoreUnavailable when nothing
        could be recorded."""
        refused = []
        valid = []
        for index, event in batch:
            problem = key_form_problem(model, event.customer)
            if problem is None:
                valid.append((index, event))
            else:
                refused.append(Rejection(index, event.event_id, [f"customer: {problem}"]))
        if not valid:
            return EventResult([], [], refused)
        try:
            result = self.realtime.record(model, valid)
        except (StoreUnavailable, OSError):
            raise StoreUnavailable(
                "events cannot be recorded now; nothing was applied, retry"
            ) from None
        return EventResult(result.accepted, result.duplicates, result.rejected + refused)

    def erase(self, model: ServedModel, key: str) -> ErasureReceipt:
        """Forget the customer ``key`` names (see Realtime.erase). InvalidParameter for a key
        of no form the service resolves, UnknownCustomer when nobody is known by it (it is on
        the erasure list all the same), StoreUnavailable when the store could not be cleared
        (the erasure holds; retry)."""
        _check_key_form(model, key)
        try:
            receipt = self.realtime.erase(model, key)
        except UnknownCustomer:
            raise UnknownCustomer(
                "no customer is known by this key; it is on the erasure list all the same, so "
                "the next training drops any rows that carry it"
            ) from None
        except StoreUnavailable:
            raise StoreUnavailable(
                "the erasure is recorded and every worker honours it, but the store could not "
                "be cleared now; retry"
            ) from None
        return ErasureReceipt(
            erased=True,
            customer_id=receipt.customer_id,
            aliases=receipt.aliases,
            events_removed=receipt.events_removed,
            erased_at=receipt.erased_at,
        )


def ids_of(items: list[Recommendation] | list[ProductCard]) -> list[str]:
    return [item.item_id for item in items]


def anonymous() -> CustomerView:
    """A visitor nobody knows."""
    return CustomerView(None, None, "", [], {}, degraded=False)


def _check_key_form(model: ServedModel, key: str) -> None:
    """A key naming nobody must at least be one the service could resolve: a typo such as
    ``emial:ann@example.com`` is a 400, not a silent no-op."""
    problem = key_form_problem(model, key)
    if problem is not None:
        raise InvalidParameter("customer_id", problem)


def key_form_problem(model: ServedModel, key: str) -> str | None:
    """Why ``key`` is of no form the service resolves (None: it is): events under such a
    key could not be erased, so they are refused too."""
    if model.ranker.customer_row(key) is not None:
        return None
    aliases = model.ranker.aliases
    prefix, colon, _ = key.partition(":")
    if colon and len(request_aliases(key, aliases.rules, aliases.namespaces)) == 1:
        known = ", ".join(sorted({"email", "phone", "session", *aliases.namespaces}))
        return (
            f"{prefix[:40]!r} is not a key type this service knows ({known}), or the value "
            "after it is not a valid address or number"
        )
    return None


def make_store(config: ServiceConfig, clock: Callable[[], float] = time.time) -> Store:
    retention = config.event_retention_days * 86400.0
    window = config.attribution_hours * 3600.0
    if config.redis_url is None:
        return EmbeddedStore(
            config.events_dir / STORE_FILE, retention, clock, attribution_window=window
        )
    return RedisStore(
        config.redis_url,
        config.redis_prefix,
        retention,
        origin=logs_origin(config.events_dir),
        timeout=config.store_timeout_ms / 1000,
        cooldown=defaults.STORE_COOLDOWN_SECONDS,
        clock=clock,
        attribution_window=window,
    )
