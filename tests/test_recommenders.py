"""One contract suite (``training.recommenders.Recommender``) run against every model the
evaluation compares, in the manner of implicit's tests/recommender_base_test.py: a known
answer, owned items (and their editions) never shown, the same lists from the same seed, lists
longer than the catalog, and a customer the model has never seen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from recsvc.bundle import load_bundle
from recsvc.registry import ModelRegistry
from tests.helpers import (
    SHOP_COLUMNS,
    SHOP_HEADER,
    purchase_rows,
    source_toml,
    write_config,
    write_csv,
)
from training.config import EngineConfig, ModelParams, TrainConfig, load_config
from training.evaluate import MODEL_KEYS, compared_models
from training.pipeline import merged_history, train
from training.recommenders import History, Recommender, ServedModel

# Twenty customers buy every item of block A, twelve every item of block B, so A items are
# the best-sellers. a00 buys all of block A but A3: A3 is the right answer for a00 whichever
# way a model reasons (bought together or bought most). Five B customers also buy a second
# edition of B0, which b00, who holds B0, must never be offered.
BLOCK_A = [f"A{i}" for i in range(10)]
BLOCK_B = [f"B{i}" for i in range(8)]
WITHHELD = "A3"
EDITION = "B0E"
ITEMS = '[items]\ncrosswalk = "items.csv"\n'


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    directory = tmp_path_factory.mktemp("shop")
    baskets = {f"a{c:02d}": list(BLOCK_A) for c in range(20)}
    baskets |= {f"b{c:02d}": list(BLOCK_B) for c in range(12)}
    baskets["a00"].remove(WITHHELD)
    for customer in ("b01", "b02", "b03", "b04", "b05"):
        baskets[customer].append(EDITION)
    write_csv(directory / "shop.csv", SHOP_HEADER, purchase_rows(baskets))
    write_csv(
        directory / "items.csv",
        ["source", "item_id", "catalog_id", "group"],
        [["*", "B0", "B0", "work-b0"], ["*", EDITION, EDITION, "work-b0"]],
    )
    return load_config(
        write_config(directory, source_toml("shop", "shop.csv", SHOP_COLUMNS), items=ITEMS)
    )


@pytest.fixture(scope="module")
def history(config: TrainConfig) -> History:
    merged = merged_history(config)
    return History.build(merged.events, config.model, merged.item_groups, config.tiers)


@pytest.fixture(scope="module", params=MODEL_KEYS)
def name(request: pytest.FixtureRequest) -> str:
    key: str = request.param
    return key


@pytest.fixture(scope="module")
def model(name: str, config: TrainConfig, history: History) -> Recommender:
    return fitted(name, config.model, history)


def fitted(name: str, params: ModelParams, history: History) -> Recommender:
    model = compared_models(params)[name]
    model.fit(history)
    return model


def row(history: History, customer: str) -> int:
    return int(history.data.customer_ids.tolist().index(customer))


def item_ids(history: History, items: list[int]) -> list[str]:
    return [str(history.data.item_ids[item]) for item in items]


def owned(history: History, row: int) -> set[str]:
    owned = history.data.owned
    return set(item_ids(history, owned.indices[owned.indptr[row] : owned.indptr[row + 1]].tolist()))


def test_every_evaluated_model_is_in_the_suite() -> None:
    expected = {"recsvc", "recsvc_no_policy", "popular", "itemknn", "item_item", "als", "bpr"}
    assert set(MODEL_KEYS) == expected


def test_withheld_item_ranks_first(model: Recommender, history: History) -> None:
    assert item_ids(history, model.recommend(row(history, "a00"), 3))[0] == WITHHELD


@pytest.mark.parametrize("n", [0, 1, 4, 12])
def test_owned_items_and_their_editions_never_come_back(
    model: Recommender, history: History, n: int
) -> None:
    # b00 holds B0 but not its second edition; owning one edition owns the work.
    b00 = row(history, "b00")
    assert EDITION in owned(history, b00)
    assert EDITION not in item_ids(history, history.data.held[b00].indices.tolist())
    for customer in range(len(history.data.customer_ids)):
        items = model.recommend(customer, n)
        assert len(items) == min(n, len(history.data.item_ids) - len(owned(history, customer)))
        assert len(set(items)) == len(items)
        assert not set(item_ids(history, items)) & owned(history, customer)


def test_same_seed_same_lists(
    name: str, model: Recommender, config: TrainConfig, history: History
) -> None:
    again = fitted(name, config.model, history)
    for customer in [*range(len(history.data.customer_ids)), None]:
        assert again.recommend(customer, 6) == model.recommend(customer, 6)


def test_more_than_the_catalog_lists_every_item_not_owned(
    model: Recommender, history: History
) -> None:
    catalog = len(history.data.item_ids)
    a00 = row(history, "a00")
    items = model.recommend(a00, catalog + 5)
    assert len(items) == len(set(items))
    assert set(item_ids(history, items)) == {WITHHELD, *BLOCK_B, EDITION}
    stranger = model.recommend(None, catalog + 5)
    assert sorted(stranger) == list(range(catalog))


def test_unknown_customer_gets_the_best_sellers(model: Recommender, history: History) -> None:
    # A items sold 20 times (ties by index), A3 19 times, B items 12 times or fewer.
    best = ["A0", "A1", "A2", "A4", "A5", "A6", "A7", "A8", "A9", WITHHELD, "B0"]
    assert item_ids(history, model.recommend(None, len(best))) == best


def test_the_evaluated_served_model_answers_as_the_service(
    config: TrainConfig, history: History, tmp_path: Path
) -> None:
    """``recsvc`` in the suite and the evaluation is what the service serves from the bundle
    ``train`` publishes on the same events (here, with no returns, the same tiers)."""
    evaluated = fitted("recsvc", config.model, history)
    train(config, tmp_path)
    registry = ModelRegistry(tmp_path, config.identity.key)
    assert registry.load() and registry.model is not None
    served = registry.model.ranker
    for customer, key in enumerate(history.data.customer_ids.tolist()):
        for n in (1, 5, len(history.data.item_ids)):
            answer = served.recommend(key, n)
            assert not answer.fallback
            assert [item.index for item in answer.items] == evaluated.recommend(customer, n)
    assert [item.index for item in served.recommend("stranger", 5).items] == evaluated.recommend(
        None, 5
    )


def test_spark_fit_ranks_the_withheld_item_first_and_its_bundle_verifies(
    config: TrainConfig, history: History, spark_engine: EngineConfig, tmp_path: Path
) -> None:
    """ALS fitted by Spark MLlib (``[engine] kind = "spark"``) finds the same known answer,
    and ``train`` on Spark publishes a bundle that verifies and serves it."""
    model = ServedModel(config.model, engine=spark_engine)
    model.fit(history)
    assert item_ids(history, model.recommend(row(history, "a00"), 3))[0] == WITHHELD
    report = train(dataclasses.replace(config, engine=spark_engine), tmp_path)
    load_bundle(report.path)  # raises unless every checksum and shape verifies
    registry = ModelRegistry(tmp_path, config.identity.key)
    assert registry.load() and registry.model is not None
    answer = registry.model.ranker.recommend("a00", 3)
    assert not answer.fallback
    assert item_ids(history, [answer.items[0].index]) == [WITHHELD]
