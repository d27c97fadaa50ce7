"""Training on interactions, known answers from the seeded synthetic generator
(``training.synthetic``) over the demo sample: views as weaker feedback under
``[model.weights]`` (off by default: purchase-only data trains exactly as before), sessions
stitched into the customer who signed in, erasure of what a login stitched in, and accounting
for every record of the event log."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from recsvc.bundle import Bundle, load_bundle, load_current
from recsvc.identity import IdentityKey
from recsvc.logrecords import ErasureRecord
from recsvc.ranker import Ranker
from tests.test_realtime_api import sample_config_copy
from training.config import load_config
from training.interactions import OUTCOMES
from training.pipeline import QUARANTINE_FILE, TrainReport, train
from training.synthetic import Catalog, Plan, Synthetic, generate
from training.tune import Trial, TuneResult, write_tuned

Trained = tuple[Bundle, TrainReport]
DAY = date(2011, 12, 10)  # the day after the sample's last order
SEED = 7
VIEW_WEIGHT = 1.0
# The arrays a model is: equal arrays, equal recommendations.
MODEL_ARRAYS = (
    "customer_ids",
    "item_ids",
    "user_factors",
    "item_factors",
    "item_prior",
    "owned_indptr",
    "owned_indices",
    "owned_quantity",
    "owned_weight",
    "neighbour_indptr",
    "neighbour_items",
    "neighbour_scores",
    "candidate_items",
    "candidate_scores",
    "popular_items",
)


def trained(directory: Path, log: Path, weights: str = "", erasures: Path | None = None) -> Trained:
    """The sample and the event log ``log`` trained with ``[model.weights]`` lines."""
    directory.mkdir()
    config = sample_config_copy(directory)
    text = config.read_text()
    if erasures is not None:
        text = text.replace('erasures = "../../events/erasures.jsonl"', f'erasures = "{erasures}"')
    text += f'\n[[sources]]\nname = "live"\nkind = "events"\npath = "{log}"\n'
    config.write_text(text + (f"\n[model.weights]\n{weights}\n" if weights else ""))
    report = train(load_config(config), directory / "models")
    return load_bundle(report.path), report


@pytest.fixture(scope="module")
def catalog(sample_models: Path) -> Catalog:
    return Catalog.from_bundle(load_current(sample_models))


@pytest.fixture(scope="module")
def day(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> tuple[Synthetic, Path]:
    synthetic = generate(catalog, DAY, seed=SEED)
    log = tmp_path_factory.mktemp("day") / "events-synthetic.jsonl"
    return synthetic, synthetic.write_log(log)


@pytest.fixture(scope="module")
def weights_off(day: tuple[Synthetic, Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.mktemp("off") / "run", day[1])


@pytest.fixture(scope="module")
def views_on(day: tuple[Synthetic, Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained(tmp_path_factory.mktemp("on") / "run", day[1], f"view = {VIEW_WEIGHT}")


def owned(bundle: Bundle, customer: str) -> set[str]:
    arrays = bundle.arrays
    row = int(np.flatnonzero(arrays.customer_ids == customer)[0])
    items = arrays.owned_indices[arrays.owned_indptr[row] : arrays.owned_indptr[row + 1]]
    return {str(item) for item in arrays.item_ids[items]}


def category_share(bundle: Bundle, customer: str, category: str, n: int = 20) -> float:
    """The share of the customer's top ``n`` that is in ``category``."""
    ranking = Ranker(bundle.arrays).recommend(customer, n)
    assert not ranking.fallback
    bit = np.int64(bundle.categories.index(category))
    masks = bundle.arrays.item_categories
    return float(np.mean([(masks[item.index] >> bit) & 1 for item in ranking.items]))


def test_with_the_default_weights_interactions_change_nothing(
    catalog: Catalog, sample_models: Path, tmp_path: Path
) -> None:
    plan = Plan(buy_probability=0.0)  # interactions only: no purchase in the log
    synthetic = generate(catalog, DAY, seed=SEED, plan=plan)
    bundle, report = trained(tmp_path / "run", synthetic.write_log(tmp_path / "day.jsonl"))
    alone = load_current(sample_models)
    for name in MODEL_ARRAYS:
        np.testing.assert_array_equal(getattr(bundle.arrays, name), getattr(alone.arrays, name))
    for source in ("legacy", "shop"):
        assert bundle.manifest.accounting[source] == alone.manifest.accounting[source]
    assert report.accounting["live"]["rows_read"] == 0
    interactions = report.interactions["live"]
    assert bundle.manifest.interactions["live"] == interactions
    read = {kind: counts["read"] for kind, counts in interactions.items()}
    assert read == Counter(event["kind"] for event in synthetic.events)
    assert sum(counts["used"] for counts in interactions.values()) == 0
    assert bundle.manifest.parameters.weights == dict.fromkeys(
        ("view", "cart_add", "email_click", "rec_click"), 0.0
    )


def test_views_rank_the_category_a_customer_viewed_higher(
    day: tuple[Synthetic, Path],
    weights_off: Trained,
    views_on: Trained,
) -> None:
    synthetic, _ = day
    off, on = weights_off[0], views_on[0]
    shares = [
        (category_share(off, b.customer, b.category), category_share(on, b.customer, b.category))
        for b in synthetic.truth.browsers
    ]
    before, after = (sum(side) for side in zip(*shares, strict=True))
    assert after >= 3 * before
    better = sum(a > b for b, a in shares)
    worse = sum(a < b for b, a in shares)
    assert better >= 0.8 * len(shares) and worse <= 0.1 * len(shares)
    assert on.manifest.parameters.weights["view"] == VIEW_WEIGHT


def test_a_login_makes_the_sessions_purchases_the_customers_and_views_own_nothing(
    day: tuple[Synthetic, Path],
    sample_models: Path,
    weights_off: Trained,
    views_on: Trained,
) -> None:
    synthetic, _ = day
    alone = load_current(sample_models)
    stitched = [s for s in synthetic.truth.sessions if s.bought_before_login]
    assert len(stitched) >= 5
    for bundle, _ in (weights_off, views_on):
        for session in stitched:
            assert session.customer is not None
            assert set(session.bought) <= owned(bundle, session.customer)
        bought_by: dict[str, set[str]] = {}
        for session in synthetic.truth.sessions:
            if session.customer is not None:
                bought_by.setdefault(session.customer, set()).update(session.bought)
        for session in synthetic.truth.sessions:
            if session.customer is None:
                continue
            only_viewed = set(session.viewed) - bought_by[session.customer]
            assert not only_viewed & (
                owned(bundle, session.customer) - owned(alone, session.customer)
            )
        for browser in synthetic.truth.browsers:
            assert owned(bundle, browser.customer) == owned(alone, browser.customer)
    # A session nobody signed in from stays anonymous: its sales count, for nobody.
    live = weights_off[1].accounting["live"]
    never_linked = {s.session for s in synthetic.truth.sessions if s.customer is None}
    purchases = [e for e in synthetic.events if e["kind"] == "purchase"]
    anonymous = sum(1 for e in purchases if e["customer"] in never_linked)
    assert anonymous > 0 and live["anonymous"] == anonymous
    assert live["used"] == len(purchases) - anonymous


def test_the_accounting_counts_every_record_of_the_event_log(
    day: tuple[Synthetic, Path], views_on: Trained
) -> None:
    synthetic, log = day
    live = views_on[1].accounting["live"]
    interactions = views_on[1].interactions["live"]
    lines = len(log.read_text().splitlines())
    assert live["rows_read"] + sum(counts["read"] for counts in interactions.values()) == lines
    for counts in interactions.values():
        assert sum(counts[outcome] for outcome in OUTCOMES) == counts["read"]
    kinds = Counter(event["kind"] for event in synthetic.events)
    assert {kind: counts["read"] for kind, counts in interactions.items()} == kinds - Counter(
        purchase=kinds["purchase"]
    )
    never_linked = {s.session for s in synthetic.truth.sessions if s.customer is None}
    anonymous_views = sum(
        1 for e in synthetic.events if e["kind"] == "view" and e["customer"] in never_linked
    )
    assert interactions["view"]["anonymous"] == anonymous_views > 0
    assert interactions["view"]["used"] == kinds["view"] - anonymous_views
    assert interactions["cart_add"]["unweighted"] > 0  # known customers', weight 0
    for kind in ("login", "email_open", "cart_remove", "unsubscribe"):
        assert interactions[kind]["not_feedback"] == kinds[kind]


@pytest.mark.parametrize("session_listed", [True, False], ids=["as-the-service", "customer-only"])
def test_an_erased_customers_stitched_sessions_are_erased_too(
    day: tuple[Synthetic, Path], tmp_path: Path, session_listed: bool
) -> None:
    """The service lists the sessions a customer signed in from with them; without that,
    the stitch alone makes the session's rows the erased customer's."""
    synthetic, log = day
    session = next(s for s in synthetic.truth.sessions if s.bought_before_login)
    customer = session.customer
    assert customer is not None
    stranger = next(s for s in synthetic.truth.sessions if s.customer is None and s.bought)
    # A line the trainer quarantines, of the erased customer's session: its values must go.
    bad = {
        "event_id": "bad-1",
        "customer": session.session,
        "item_id": session.viewed[0],
        "quantity": 1,
        "price": 1.0,
        "timestamp": "not a time",
        "source": "synthetic",
        "received_at": 0.0,
    }
    events = tmp_path / "events"
    events.mkdir()
    (events / "events-synthetic.jsonl").write_text(log.read_text() + json.dumps(bad) + "\n")
    # As the service records them: the customer's aliases and the sessions they signed in
    # from; and, erased on its own, a session nobody signed in from.
    key = IdentityKey.development_key()
    erasures = events / "erasures.jsonl"
    for aliases, keys in (
        ([f"id:{customer}", *([session.session] if session_listed else [])], [customer]),
        ([stranger.session], [stranger.session]),
    ):
        record = ErasureRecord(
            erased_at="2011-12-11T00:00:00+00:00",
            alias_digests=tuple(key.hex(alias) for alias in aliases),
            customer_keys=tuple(keys),
        )
        with erasures.open("ab") as handle:
            handle.write(msgspec.json.encode(record) + b"\n")
    bundle, report = trained(
        tmp_path / "run", events / "events-*.jsonl", f"view = {VIEW_WEIGHT}", erasures
    )

    assert customer not in bundle.arrays.customer_ids.tolist()
    theirs = {session.session, customer, stranger.session}
    purchases = [e for e in synthetic.events if e["kind"] == "purchase"]
    erased_rows = sum(1 for e in purchases if e["customer"] in theirs)
    live = report.accounting["live"]
    assert live["erased"] == erased_rows > 0
    assert live["quarantined"] == {"bad_timestamp": 1}
    interactions = report.interactions["live"]
    erased_records = sum(
        1
        for e in synthetic.events
        if e["kind"] != "purchase" and (e["customer"] in theirs or e.get("session") in theirs)
    )
    assert sum(counts["erased"] for counts in interactions.values()) == erased_records
    for path in (tmp_path / "run" / "models").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert session.session.encode() not in data, path
            assert stranger.session.encode() not in data, path
    quarantine = pd.read_csv(bundle.path / QUARANTINE_FILE, dtype=str, keep_default_na=False)
    (row,) = quarantine[quarantine["source"] == "live"].to_dict("records")
    assert row["reason"] == "bad_timestamp" and row["customer_id"] == ""
    assert row["detail"] == "erased customer: values withheld"


def test_tune_writes_the_weights_back_as_train_reads_them(tmp_path: Path) -> None:
    config = sample_config_copy(tmp_path)
    config.write_text(config.read_text() + "\n[model.weights]\nview = 0.25\n")
    params = load_config(config).model
    result = TuneResult(
        Trial(params, 0.5), [Trial(params, 0.5)], "ndcg@10", pd.Timestamp(DAY), pd.Timestamp(DAY)
    )
    write_tuned(config.with_name("train.tuned.toml"), result)
    assert load_config(config).model == params
