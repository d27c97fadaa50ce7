"""A/B tests of bundles: a customer sees one arm on every worker; every list answer names its
impression and arm; clicks and purchases count once, in the window; GET /v1/experiments
reports a known click stream with intervals that hold the truth; ending an experiment
promotes or drops an arm without a restart; erasure takes a customer's impressions."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from benchmarks.local_server import gunicorn
from recsvc import experiments, stats
from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.auth import mint
from recsvc.bundle import current_version, load_current, point_current, publish_bundle
from recsvc.channels import IMPRESSION_PARAMETER
from recsvc.config import ServiceConfig
from recsvc.errors import ConfigError
from recsvc.events import STORE_FILE
from recsvc.identity import IdentityKey
from recsvc.manifest import Manifest
from recsvc.openapi import document
from recsvc.stats import UnitSums
from recsvc.store import CUSTOMER_ERASED_KEY, connect
from tests.helpers import ManualClock
from tests.redis_server import STORE_KINDS, store_url
from tests.test_bundle import tiny_arrays
from tests.test_openapi import check

HALVES = "champion:v1:50,challenger:v2:50"
VERSIONS = {"champion": "v1", "challenger": "v2"}
DOCUMENT = json.loads(json.dumps(document()))


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """Two bundles, v1 current."""
    models = tmp_path / "models"
    publish_bundle(models, "v1", tiny_arrays(), Manifest())
    publish_bundle(models, "v2", tiny_arrays(2.0), Manifest())
    point_current(models, "v1")
    return models


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The store's settings: the embedded store, the test Redis or the test cluster (flushed)."""
    if request.param == "embedded":
        yield {}
    else:
        yield {"RECSVC_REDIS_URL": str(store_url(request, request.param))}


def app_for(
    models: Path,
    events: Path,
    store: dict[str, str],
    experiment: str = HALVES,
    clock: ManualClock | None = None,
    **settings: str,
) -> Flask:
    config = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EVENTS_DIR": str(events),
        "RECSVC_AUTH": "off",
        "RECSVC_RELOAD_SECONDS": "0",  # the tests check for changes by hand
        "RECSVC_EXPERIMENT": experiment,
        # Counts, not outages, are tested here: a store slowed by a busy machine must not
        # pass for one that is down.
        "RECSVC_STORE_TIMEOUT_MS": "2000",
        **store,
        **settings,
    }
    return create_app(config, clock=clock or ManualClock())


def report(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/v1/experiments")
    check(DOCUMENT, response, "/v1/experiments", "get")
    body: dict[str, Any] = response.get_json()
    return body


def arms(client: FlaskClient) -> dict[str, dict[str, Any]]:
    return {arm["name"]: arm for arm in report(client)["experiment"]["arms"]}


def post_events(client: FlaskClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    for start in range(0, len(events), 1000):
        response = client.post("/v1/events", json={"events": events[start : start + 1000]})
        assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def rec_click(
    event_id: str, customer: str, answer: dict[str, Any], rank: int = 1
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "kind": "rec_click",
        "customer": customer,
        "item_id": answer["items"][rank - 1]["item_id"],
        "impression_id": answer["impression_id"],
        "model_version": answer["model_version"],
        "surface": "recommendations",
        "rank": rank,
        "timestamp": "2011-12-10T10:00:00Z",
    }


def purchase(event_id: str, customer: str, item_id: str, price: float = 10.0) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer": customer,
        "item_id": item_id,
        "quantity": 1,
        "price": price,
        "timestamp": "2011-12-10T10:00:00Z",
    }


# The split


def test_a_customer_falls_in_one_bucket_everywhere_and_the_arms_get_their_weights() -> None:
    experiment = experiments.parse_spec("champion:v1:90,challenger:v2:10")
    assert experiment is not None and experiment.name.startswith("exp-")
    # The same arms and versions are the same experiment, whatever the weights.
    ramped = experiments.parse_spec("champion:v1:50,challenger:v2:50")
    assert ramped is not None and ramped.name == experiment.name
    assert experiments.bucket("exp-1", "a unit") == 42  # no per-process salt: known answer
    key = IdentityKey.development_key()
    units = [key.hex(f"id:customer-{number}") for number in range(20000)]
    split = experiments.Split(experiment)
    counts = Counter(split.arm_of(unit).name for unit in units)
    assert abs(counts["challenger"] / len(units) - 0.10) < 0.01
    assert [split.arm_of(unit) for unit in units[:50]] == [
        experiments.Split(experiment).arm_of(unit) for unit in units[:50]
    ]
    # Ramping up keeps every challenger customer a challenger customer.
    wider = experiments.Split(ramped)
    assert all(
        wider.arm_of(u).name == "challenger" for u in units if split.arm_of(u).name == "challenger"
    )


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("champion:v1:90,challenger:v2:20", "add up to 110"),
        ("champion:v1:50,champion:v2:50", "named twice"),
        ("champion:v1", "is not <arm>:<version>:<weight>"),
        ("champion:v1:100", "two arms"),
        ("champion:v/1:50,challenger:v2:50", "not a bundle version"),
        ("cham pion:v1:50,challenger:v2:50", "arm name"),
    ],
)
def test_a_bad_experiment_setting_stops_the_start(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"RECSVC_EXPERIMENT=.*{problem}"):
        ServiceConfig.from_mapping({"RECSVC_AUTH": "off", "RECSVC_EXPERIMENT": spec})


# Answers


def test_every_list_answer_names_its_impression_and_arm(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    worker = app_for(models, tmp_path / "events", store).test_client()
    other = app_for(models, tmp_path / "events", store).test_client()  # another worker
    seen: dict[str, str] = {}
    for key in ("c1", "c2", "stranger", "session:abc", "email:ann@example.com"):
        answer = worker.get(f"/v1/customers/~/recommendations?key={key}").get_json()
        assert len(answer["impression_id"]) == 12 and answer["arm"] in VERSIONS
        assert answer["model_version"] == VERSIONS[answer["arm"]]
        again = other.get(f"/v1/customers/~/recommendations?key={key}").get_json()
        assert again["arm"] == answer["arm"] and again["impression_id"] != answer["impression_id"]
        seen[key] = answer["arm"]
    assert set(seen.values()) == set(VERSIONS)  # both arms serve (five keys, 50/50)

    arm = seen["c1"]
    answers = [
        worker.get("/v1/items/i1/similar?customer=c1").get_json(),
        worker.get("/v1/cart/recommendations?items=i1&customer=c1").get_json(),
        worker.get("/v1/customers/c1/blocks/home_hero").get_json(),
        worker.get("/v1/customers/c1/email-picks?send_id=s1").get_json(),
    ]
    for answer in answers:
        assert len(answer["impression_id"]) == 12 and answer["arm"] == arm
        assert answer["model_version"] == VERSIONS[arm]
    # Nobody named: no experiment, the current bundle.
    for path in (
        "/v1/items/i1/similar",
        "/v1/cart/recommendations?items=i1",
        "/v1/blocks/home_hero",
    ):
        answer = worker.get(path).get_json()
        assert len(answer["impression_id"]) == 12 and answer["arm"] is None, path
        assert answer["model_version"] == "v1", path
    html = worker.get("/v1/customers/c1/blocks/home_hero?format=html").get_data(as_text=True)
    assert f'data-arm="{arm}"' in html and 'data-rank="1"' in html and "data-impression=" in html
    # One send's picks are one impression, however often they are rendered.
    first = worker.get("/v1/customers/c1/email-picks?send_id=s1").get_json()
    assert first["impression_id"] == answers[3]["impression_id"]


# Attribution


def test_a_click_and_a_purchase_count_once_and_only_in_the_window(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    clock = ManualClock()
    client = app_for(models, tmp_path / "events", store, clock=clock).test_client()
    answer = client.get("/v1/customers/c1/recommendations").get_json()
    arm = answer["arm"]
    shown = [item["item_id"] for item in answer["items"]]
    # The click reaches the store before the impression leaves the worker's buffer.
    batch = [rec_click("k1", "c1", answer), purchase("p1", "c1", shown[0], 4.5)]
    assert post_events(client, batch)["accepted"] == ["k1", "p1"]
    assert post_events(client, batch)["duplicates"] == ["k1", "p1"]  # a replay: nothing more
    found = arms(client)[arm]
    assert (found["impressions"], found["clicked"], found["converted"]) == (1, 1, 1)
    assert found["revenue"] == 4.5 and found["customers"] == 1

    clock.advance(25 * 3600)  # past the 24 hours' window
    post_events(client, [purchase("p2", "c1", shown[0], 3.0), rec_click("k2", "c1", answer)])
    after = arms(client)[arm]
    assert (after["clicked"], after["converted"], after["revenue"]) == (1, 1, 4.5)
    figures = report(client)["figures"]
    assert [(f["arm"], f["surface"], f["clicks"], f["purchases"]) for f in figures] == [
        (arm, "recommendations", 1, 1)
    ]


def test_an_email_click_counts_for_the_picks_its_link_named(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    client = app_for(models, tmp_path / "events", store).test_client()
    picks = client.get("/v1/customers/c1/email-picks?send_id=spring").get_json()
    first = picks["items"][0]
    link = parse_qs(urlsplit(first["url"]).query)
    assert link[IMPRESSION_PARAMETER] == [picks["impression_id"]]
    click = {
        "event_id": "k1",
        "kind": "email_click",
        "customer": "c1",
        "send_id": "spring",
        "item_id": first["item_id"],
        "impression_id": link[IMPRESSION_PARAMETER][0],
        "timestamp": "2011-12-10T10:00:00Z",
    }
    # A click the shop reported without the link's id counts for engagement only.
    unnamed = {name: value for name, value in click.items() if name != "impression_id"}
    unnamed["event_id"] = "k2"
    post_events(client, [click, unnamed])
    found = arms(client)[picks["arm"]]
    assert (found["impressions"], found["clicked"]) == (1, 1)
    figures = report(client)["figures"]
    assert [(f["surface"], f["clicks"]) for f in figures] == [("email", 1)]


def test_the_report_holds_a_known_click_stream(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    """Visitors see three lists each; the generator clicks the first item of a list with a
    known probability per arm, and a customer buys with another: every count comes back
    exactly, and every 95% interval holds the generator's truth."""
    click_rate = {"champion": 0.10, "challenger": 0.25}
    buy_rate = {"champion": 0.30, "challenger": 0.30}
    lists, price = 3, 10.0
    client = app_for(models, tmp_path / "events", store).test_client()
    rng = random.Random(20)
    events: list[dict[str, Any]] = []
    sent = {arm: Counter[str]() for arm in VERSIONS}
    for visitor in range(300):
        key = f"visitor-{visitor}"
        for _ in range(lists):
            answer = client.get(f"/v1/customers/{key}/recommendations?n=3").get_json()
            arm = answer["arm"]
            sent[arm]["impressions"] += 1
            if rng.random() < click_rate[arm]:
                events.append(rec_click(f"k{len(events)}", key, answer))
                sent[arm]["clicked"] += 1
        if rng.random() < buy_rate[arm]:  # counts for their latest list, which showed it
            events.append(purchase(f"p{len(events)}", key, answer["items"][0]["item_id"], price))
            sent[arm]["converted"] += 1
    post_events(client, events)

    found = arms(client)
    for arm, counts in sent.items():
        figures = found[arm]
        assert figures["impressions"] == counts["impressions"]
        assert figures["clicked"] == counts["clicked"]
        assert figures["converted"] == counts["converted"]
        assert figures["revenue"] == price * counts["converted"]
        ctr, conversion = figures["ctr"], figures["conversion_rate"]
        revenue = figures["revenue_per_impression"]
        assert ctr["value"] == pytest.approx(counts["clicked"] / counts["impressions"])
        assert ctr["low"] < click_rate[arm] < ctr["high"]
        assert conversion["low"] < buy_rate[arm] / lists < conversion["high"]
        assert revenue["low"] < price * buy_rate[arm] / lists < revenue["high"]
    difference = found["challenger"]["difference"]
    assert found["champion"]["difference"] is None
    assert difference["ctr"]["low"] < 0.15 < difference["ctr"]["high"]
    assert difference["ctr"]["low"] > 0  # 300 visitors tell the arms apart
    assert difference["conversion_rate"]["low"] < 0 < difference["conversion_rate"]["high"]
    assert difference["revenue_per_impression"]["low"] < 0
    assert difference["revenue_per_impression"]["high"] > 0

    metrics = client.get("/metrics").get_data(as_text=True)
    name, clicked = report(client)["experiment"]["name"], sent["challenger"]["clicked"]
    labels = f'arm="challenger",experiment="{name}",model_version="v2",surface="recommendations"'
    line = f"recsvc_impressions_clicked_total{{{labels}}} {clicked:.1f}"
    assert line in metrics


def test_intervals_take_the_customer_as_the_unit() -> None:
    """One list per customer: the plain Wilson interval (at n - 1). Ten lists per customer,
    each customer clicking all or none: ten times fewer independent units."""
    plain = stats.proportion(UnitSums(100, 100, 100, 10, 10, 10))
    assert (plain.low, plain.high) == pytest.approx(stats.wilson(0.1, 99))
    assert stats.wilson(0.1, 100) == pytest.approx((0.05523, 0.17437), abs=1e-5)
    clustered = stats.proportion(UnitSums(100, 1000, 10000, 100, 1000, 1000))
    assert clustered.value == pytest.approx(0.1)
    assert (clustered.low, clustered.high) == pytest.approx(stats.wilson(0.1, 99))
    independent = stats.proportion(UnitSums(100, 1000, 10000, 100, 100 + 0, 1000))
    assert independent.high - independent.low < plain.high - plain.low
    assert stats.proportion(UnitSums(0, 0, 0, 0, 0, 0)).value is None


# Ending


def test_promoting_an_arm_reaches_every_worker_without_a_restart(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    admin_key, admin = mint("ops", ["admin"])
    reader_key, reader = mint("grafana", ["metrics:read"])
    settings = {"RECSVC_AUTH": "on", "RECSVC_API_KEYS": f"{admin},{reader}"}
    settings["RECSVC_ALLOW_DEVELOPMENT_SECRET"] = "on"
    settings["RECSVC_ID_SECRET"] = "recsvc-development-secret-not-for-production-use"
    first = app_for(models, tmp_path / "events", store, **settings)
    second = app_for(models, tmp_path / "events", store, **settings)
    ops, grafana = {"X-API-Key": admin_key}, {"X-API-Key": reader_key}
    client = first.test_client()
    end = "/v1/experiments/end"
    assert client.get("/v1/experiments", headers=grafana).status_code == 200
    assert client.post(end, json={"promote": "challenger"}, headers=grafana).status_code == 403
    for body, name in (
        ({"promote": "nobody"}, "promote"),
        ({"drop": "nobody"}, "drop"),
        ({}, "promote"),
        ({"promote": "champion", "drop": "challenger"}, "promote"),
        ({"winner": "champion"}, "winner"),
    ):
        response = client.post(end, json=body, headers=ops)
        assert response.status_code == 400, body
        assert response.get_json()["invalid_params"][0]["name"] == name

    response = client.post(end, json={"promote": "challenger"}, headers=ops)
    check(DOCUMENT, response, end, "post")
    ended = response.get_json()["experiment"]
    assert ended["running"] is False and ended["promoted"] == "challenger"
    assert current_version(models) == "v2"
    for app in (first, second):
        service_of(app).registry.check()  # the watcher's next look, every worker
        answer = app.test_client().get("/v1/customers/c1/recommendations", headers=ops).get_json()
        assert (answer["model_version"], answer["arm"]) == ("v2", None)
    assert client.post(end, json={"promote": "champion"}, headers=ops).status_code == 409
    # A restart with the same setting does not start the ended experiment again.
    restarted = app_for(models, tmp_path / "events", store, **settings).test_client()
    assert report_with(restarted, grafana)["experiment"]["running"] is False


def report_with(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/v1/experiments", headers=headers).get_json()
    return body


def test_dropping_an_arm_gives_its_customers_to_the_first_arm(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    app = app_for(models, tmp_path / "events", store, experiment="a:v1:40,b:v2:30,c:v1:30")
    client = app.test_client()
    keys = [f"visitor-{number}" for number in range(60)]

    def assigned() -> dict[str, str]:
        return {
            key: client.get(f"/v1/customers/{key}/recommendations").get_json()["arm"]
            for key in keys
        }

    before = assigned()
    assert set(before.values()) == {"a", "b", "c"}
    dropped = client.post("/v1/experiments/end", json={"drop": "b"}).get_json()["experiment"]
    assert dropped["running"] and [a["dropped"] for a in dropped["arms"]] == [False, True, False]
    after = assigned()
    assert after == {key: "a" if arm == "b" else arm for key, arm in before.items()}
    last = client.post("/v1/experiments/end", json={"drop": "c"}).get_json()["experiment"]
    assert (last["running"], last["promoted"]) == (False, "a")
    assert current_version(models) == "v1"
    assert set(assigned().values()) == {None}


def test_an_arm_without_its_bundle_leaves_everyone_on_current(models: Path, tmp_path: Path) -> None:
    app = app_for(models, tmp_path / "events", {}, experiment="champion:v1:50,challenger:v9:50")
    client = app.test_client()
    answer = client.get("/v1/customers/c1/recommendations").get_json()
    assert (answer["model_version"], answer["arm"]) == ("v1", None)
    assert "arm challenger" in report(client)["error"]
    publish_bundle(models, "v9", tiny_arrays(3.0), Manifest())
    point_current(models, "v1")
    service_of(app).registry.check()  # a bundle missing is looked for again
    assert report(client)["error"] is None
    assert {
        client.get(f"/v1/customers/v-{n}/recommendations").get_json()["arm"] for n in range(20)
    } == {
        "champion",
        "challenger",
    }


def test_the_experiment_file_comes_first(models: Path, tmp_path: Path) -> None:
    experiment = experiments.Experiment(
        "spring", (experiments.Arm("old", "v1", 1), experiments.Arm("new", "v2", 99))
    )
    experiments.write(models, experiment)
    client = app_for(models, tmp_path / "events", {}).test_client()
    assert report(client)["experiment"]["name"] == "spring"
    (models / experiments.EXPERIMENT_FILE).write_text("{not json")
    service_of(client.application).registry.check()
    body = report(client)
    assert body["experiment"] is None and "experiment.json" in body["error"]
    assert client.get("/v1/customers/c1/recommendations").get_json()["arm"] is None


# Erasure


def test_erasure_takes_the_customers_impressions(
    models: Path, tmp_path: Path, store: dict[str, str]
) -> None:
    client = app_for(models, tmp_path / "events", store).test_client()
    answer = client.get("/v1/customers/c1/recommendations").get_json()
    report(client)  # written to the store
    store_key = (
        service_of(client.application)
        .realtime.resolve(service_of(client.application).model(), "c1")
        .store_key
    )
    assert client.delete("/v1/customers/c1").status_code == 200
    post_events(client, [rec_click("k1", "c2", answer)])
    assert arms(client)[answer["arm"]]["clicked"] == 0  # its impression is gone
    if store:
        # Only its erasure marker still names the (digest) key.
        with connect(store["RECSVC_REDIS_URL"]) as client:
            left = [key.decode() for key in client.scan_iter(match=f"*{store_key}*")]
        assert left == [CUSTOMER_ERASED_KEY.format(prefix="recsvc", customer=store_key)]
    else:
        import sqlite3

        connection = sqlite3.connect(tmp_path / "events" / STORE_FILE)
        for table in ("impressions", "pending", "units"):
            rows = connection.execute(f"SELECT * FROM {table} WHERE customer = ?", (store_key,))
            assert rows.fetchall() == [], table


# End to end


def test_a_replay_through_gunicorn_and_redis(
    sample_models: Path, tmp_path: Path, clean_redis: str
) -> None:
    """Two workers, each with its own buffer: the lists one worker shows are clicked and
    bought through the other, and the report counts every click and purchase once."""
    current = load_current(sample_models)
    models = tmp_path / "models"
    for version in ("b", current.version):
        publish_bundle(models, version, current.arrays, current.manifest, current.attachments)
    env = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_AUTH": "off",
        "RECSVC_EVENTS_DIR": str(tmp_path / "events"),
        "RECSVC_WORKERS": "2",
        "RECSVC_REDIS_URL": clean_redis,
        "RECSVC_EXPERIMENT": f"champion:{current.version}:50,challenger:b:50",
    }
    rng = random.Random(5)
    sent = {arm: Counter[str]() for arm in VERSIONS}
    events: list[dict[str, Any]] = []
    with gunicorn(env) as url:
        for visitor in range(40):
            key = f"visitor-{visitor}"
            for _ in range(2):
                answer = http("GET", f"{url}/v1/customers/{key}/recommendations?n=4")
                arm = answer["arm"]
                sent[arm]["impressions"] += 1
                if rng.random() < 0.5:
                    events.append(rec_click(f"k{len(events)}", key, answer))
                    sent[arm]["clicked"] += 1
            if rng.random() < 0.5:
                events.append(purchase(f"p{len(events)}", key, answer["items"][3]["item_id"]))
                sent[arm]["converted"] += 1
        for event in events:  # one at a time: both workers record some
            assert http("POST", f"{url}/v1/events", {"events": [event]})["accepted"]
        deadline = time.monotonic() + 15
        while True:  # the other worker writes its buffer within a second
            found = {
                a["name"]: a for a in http("GET", f"{url}/v1/experiments")["experiment"]["arms"]
            }
            counted = sum(arm["impressions"] for arm in found.values())
            if counted == 80 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for arm, counts in sent.items():
        figures = found[arm]
        assert (figures["impressions"], figures["clicked"], figures["converted"]) == (
            counts["impressions"],
            counts["clicked"],
            counts["converted"],
        ), arm


def http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
