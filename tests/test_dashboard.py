"""The dashboard through the Flask test client: signing in and out, scopes, CSRF, masking,
escaping, paging, and the figures each page shows against known answers (tests/dashboard_shop)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsvc.api.context import service_of
from recsvc.app import create_app
from recsvc.auth import mint, parse_api_keys
from recsvc.bundle import bundle_versions
from recsvc.dashboard.charts import nice_ceiling
from recsvc.dashboard.history import ExperimentHistory
from recsvc.dashboard.session import COOKIE, Sessions
from recsvc.dashboard.telemetry import bucket_quantile
from recsvc.identity import DEVELOPMENT_SECRET, IdentityRules, mask_key
from recsvc.insights import TierFigures
from recsvc.schemas import ArmReport, ExperimentReport, FigureInterval
from tests.channel_shop import XSS_TITLE
from tests.dashboard_shop import ANN_EMAIL, ANN_PHONE, QUARANTINED_EMAIL, XSS_CONTENT, build
from tests.helpers import ManualClock

SECRET = "dashboard-test-secret-of-32-characters"
KEYS = {
    name: mint(name, scopes)
    for name, scopes in (
        ("boss", ["admin"]),
        ("viewer", ["dashboard:read"]),
        ("reader", ["recs:read"]),
        ("writer", ["events:write"]),
    )
}
PAGES = [
    "/dashboard/",
    "/dashboard/customers",
    "/dashboard/customer?id=1001",
    "/dashboard/customer?id=1002",
    "/dashboard/tiers",
    "/dashboard/triggers",
    "/dashboard/quarantine",
    "/dashboard/experiments",
]
HTML = "text/html"


def settings(models: Path, events: Path, **extra: str) -> dict[str, str]:
    return {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EVENTS_DIR": str(events),
        "RECSVC_API_KEYS": ",".join(line for _, line in KEYS.values()),
        "RECSVC_SECRET_KEY": SECRET,
        "RECSVC_ID_SECRET": DEVELOPMENT_SECRET,
        "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",
        "RECSVC_RATE_LIMIT": "0",
        "RECSVC_LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dashboard-shop"))


@pytest.fixture(scope="module")
def app(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """An app whose state the tests only read."""
    return create_app(settings(models, tmp_path_factory.mktemp("dashboard-events")))


@pytest.fixture
def fresh(models: Path, tmp_path: Path) -> Flask:
    """An app of its own, for a test that changes state."""
    return create_app(settings(models, tmp_path / "events"))


def signed_in(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    response = client.post("/dashboard/sign-in", data={"key": KEYS[name][0]})
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def token(client: FlaskClient) -> str:
    page = client.get("/dashboard/customers").get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def api(client: FlaskClient, method: str, path: str, key: str, **kwargs: Any) -> Any:
    response = client.open(path, method=method, headers={"X-API-Key": KEYS[key][0]}, **kwargs)
    assert response.status_code < 300, response.get_data(as_text=True)
    return response


def events(client: FlaskClient, *batch: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = api(
        client, "POST", "/v1/events", "writer", json={"events": list(batch)}
    ).get_json()
    assert not answer["rejected"], answer
    return answer


def event(event_id: str, customer: str, item: str, **fields: Any) -> dict[str, Any]:
    base = {"quantity": 1, "price": 5.0, "timestamp": "2011-09-02T10:00:00Z", "source": "web"}
    return {"event_id": event_id, "customer": customer, "item_id": item, **base, **fields}


# Signing in


@pytest.mark.parametrize("path", PAGES + ["/dashboard/triggers.csv", "/dashboard/quarantine.csv"])
def test_every_page_asks_for_a_sign_in(app: Flask, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/dashboard/sign-in?next=")


def test_a_key_is_exchanged_for_a_strict_httponly_cookie(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/dashboard/sign-in")
    assert page.status_code == 200 and page.mimetype == HTML
    assert 'for="key"' in page.get_data(as_text=True)  # a labelled input
    response = client.post(
        "/dashboard/sign-in", data={"key": KEYS["viewer"][0], "next": "/dashboard/tiers"}
    )
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard/tiers"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=28800"):
        assert flag in cookie
    assert "Secure" not in cookie and KEYS["viewer"][0] not in cookie
    assert client.get("/dashboard/tiers").status_code == 200
    secure = app.test_client().post(
        "/dashboard/sign-in", data={"key": KEYS["viewer"][0]}, base_url="https://localhost"
    )
    assert "Secure" in secure.headers["Set-Cookie"]


@pytest.mark.parametrize("target", ["https://evil.example/x", "//evil.example/", "/v1/triggers"])
def test_sign_in_goes_back_only_to_dashboard_pages(app: Flask, target: str) -> None:
    response = app.test_client().post(
        "/dashboard/sign-in", data={"key": KEYS["viewer"][0], "next": target}
    )
    assert response.headers["Location"] == "/dashboard/"


def test_sign_in_refuses_unknown_keys_and_keys_without_the_scope(app: Flask) -> None:
    client = app.test_client()
    wrong = client.post("/dashboard/sign-in", data={"key": "rk_not-a-key"})
    assert wrong.status_code == 401 and "not valid" in wrong.get_data(as_text=True)
    lacking = client.post("/dashboard/sign-in", data={"key": KEYS["reader"][0]})
    assert lacking.status_code == 403 and "dashboard:read" in lacking.get_data(as_text=True)
    assert "Set-Cookie" not in wrong.headers and "Set-Cookie" not in lacking.headers
    assert client.get("/dashboard/").status_code == 303


def test_without_a_secret_key_nobody_can_sign_in(models: Path, tmp_path: Path) -> None:
    app = create_app({**settings(models, tmp_path), "RECSVC_SECRET_KEY": ""})
    client = app.test_client()
    assert client.get("/dashboard/sign-in").status_code == 200
    response = client.post("/dashboard/sign-in", data={"key": KEYS["boss"][0]})
    assert response.status_code == 503
    assert "RECSVC_SECRET_KEY is not set" in response.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 303


def test_a_session_ends_when_it_expires_is_altered_or_its_key_is_removed() -> None:
    keys = parse_api_keys(",".join(line for _, line in KEYS.values()), "test")
    sessions = Sessions(SECRET.encode(), keys)
    viewer, cookie = sessions.sign_in(KEYS["viewer"][0])
    assert sessions.viewer(cookie) == viewer and not viewer.admin
    assert Sessions(SECRET.encode(), keys, max_age=-1).viewer(cookie) is None
    assert sessions.viewer(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]) is None
    assert Sessions(b"another-secret-of-32-characters!!", keys).viewer(cookie) is None
    others = tuple(key for key in keys if key.name != "viewer")
    assert Sessions(SECRET.encode(), others).viewer(cookie) is None
    boss, _ = sessions.sign_in(KEYS["boss"][0])
    assert boss.admin and "dashboard:read" in boss.scopes  # admin implies it
    assert boss.csrf != viewer.csrf


def test_signing_out_needs_the_token_and_ends_the_session(app: Flask) -> None:
    client = signed_in(app, "viewer")
    refused = client.post("/dashboard/sign-out")
    assert refused.status_code == 403
    assert client.get("/dashboard/").status_code == 200
    out = client.post("/dashboard/sign-out", data={"csrf": token(client)})
    assert out.status_code == 303 and out.headers["Location"] == "/dashboard/sign-in"
    assert client.get("/dashboard/").status_code == 303


# Forms


@pytest.mark.parametrize("form", [{}, {"csrf": "forged"}, {"csrf": ""}])
def test_a_form_without_the_sessions_token_is_refused(app: Flask, form: dict[str, str]) -> None:
    client = signed_in(app, "boss")
    for path in ("/dashboard/customers", "/dashboard/customer/erase"):
        response = client.post(path, data={**form, "key": "1001"})
        assert response.status_code == 403, path
        assert response.mimetype == HTML and "Form expired" in response.get_data(as_text=True)


def test_another_sessions_token_or_another_sites_form_is_refused(app: Flask) -> None:
    mine, theirs = signed_in(app, "boss"), signed_in(app, "boss")
    stolen = token(theirs)
    assert (
        mine.post("/dashboard/customers", data={"key": "1001", "csrf": stolen}).status_code == 403
    )
    own = token(mine)
    crossing = mine.post(
        "/dashboard/customers",
        data={"key": "1001", "csrf": own},
        headers={"Origin": "https://evil.example"},
    )
    assert crossing.status_code == 403 and "another site" in crossing.get_data(as_text=True)
    same = mine.post(
        "/dashboard/customers",
        data={"key": "1001", "csrf": own},
        headers={"Origin": "http://localhost"},
    )
    assert same.status_code == 303


# Pages


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_its_server_time(app: Flask, path: str) -> None:
    response = signed_in(app, "viewer").get(path)
    assert response.status_code == 200 and response.mimetype == HTML
    body = response.get_data(as_text=True)
    shown = re.search(r"Rendered in ([0-9.]+) ms", body)
    assert shown is not None and float(shown.group(1)) > 0
    assert re.fullmatch(r"app;dur=[0-9.]+", response.headers["Server-Timing"])
    assert response.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("name", ["viewer", "boss"])
def test_a_title_or_content_item_holding_markup_shows_as_text_on_every_page(
    app: Flask, name: str
) -> None:
    client = signed_in(app, name)
    shown = 0
    for path in PAGES:
        body = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in body and "<img src=x" not in body, path
        assert "onerror=alert(2)>" not in body, path
        shown += body.count("&lt;script&gt;alert(1)&lt;/script&gt; CHRISTMAS LIGHTS")
        shown += body.count("&lt;img src=x onerror=alert(2)&gt; Winter offer")
    assert shown >= 5  # recommendations, block, picks, owned items, content, quarantine
    assert XSS_TITLE and XSS_CONTENT  # the payloads the fixture planted


def test_the_customer_page_shows_holdings_by_source_reasons_tier_and_signals(app: Flask) -> None:
    client = signed_in(app, "viewer")
    body = client.get("/dashboard/customer?id=1001").get_data(as_text=True)
    owned = re.findall(
        r'<tr class="owned"><td>(?:<strong>(\w+)</strong>)?</td><td><code>(\w+)</code>', body
    )
    assert owned == [("outlet", "P1"), ("shop", "K2"), ("", "K1")]  # by source, then title
    assert "6 aliases" in body  # id, shop and outlet ids... as the bundle links them
    assert "outlet, shop" in body
    assert '<span class="flag tier">bronze</span>' in body
    assert "£31.00 more" in body  # silver from 50, they spent 19
    reasons = re.findall(r'<td class="reason"><span class="kind">(\w+)</span> ([^<]+)</td>', body)
    assert len(reasons) == 4 and ("bought_with", "Because you bought SPOTTY MUG") in reasons
    assert body.count('<li class="product">') == 8  # the block's four and the email's four
    assert "early access" not in body  # gold's perk, not theirs


def test_a_lookup_by_address_leads_to_the_canonical_id_and_never_puts_it_in_a_url(
    app: Flask,
) -> None:
    client = signed_in(app, "viewer")
    csrf = token(client)
    for key in (
        f"email:{ANN_EMAIL}",
        "email: ann.lee@example.com ",
        f"phone:{ANN_PHONE}",
        "shop:1001",
    ):
        response = client.post("/dashboard/customers", data={"key": key, "csrf": csrf})
        assert response.status_code == 303, key
        assert response.headers["Location"] == "/dashboard/customer?id=1001"
    bad = client.post("/dashboard/customers", data={"key": "x\u202ey", "csrf": csrf})
    assert bad.status_code == 400 and "U+202E" in bad.get_data(as_text=True)


def test_addresses_are_masked_unless_the_viewer_is_an_admin(fresh: Flask) -> None:
    api_client = fresh.test_client()
    events(api_client, event("n1", "email:Someone.New@Example.com", "K3"))
    key = "email:Someone.New@Example.com"
    viewer, boss = signed_in(fresh, "viewer"), signed_in(fresh, "boss")
    seen = viewer.post("/dashboard/customers", data={"key": key, "csrf": token(viewer)})
    body = seen.get_data(as_text=True)
    assert seen.status_code == 200 and "not in the bundle" in body
    assert "email:s***@example.com" in body and "someone" not in body.lower()
    assert "TEA MUG" in body  # what they bought, reported under that key
    full = boss.post("/dashboard/customers", data={"key": key, "csrf": token(boss)})
    assert "email:Someone.New@Example.com" in full.get_data(as_text=True)
    quarantined = viewer.get("/dashboard/quarantine").get_data(as_text=True)
    assert QUARANTINED_EMAIL not in quarantined and "q***@example.com" in quarantined
    assert viewer.get("/dashboard/quarantine.csv").status_code == 403
    assert QUARANTINED_EMAIL in boss.get("/dashboard/quarantine").get_data(as_text=True)
    raw = boss.get("/dashboard/quarantine.csv")
    assert raw.status_code == 200 and QUARANTINED_EMAIL in raw.get_data(as_text=True)


def test_mask_key_masks_addresses_and_numbers_only() -> None:
    rules = IdentityRules(default_region="GB")
    assert mask_key("email: Ann.Lee@Example.com", rules) == "email:a***@example.com"
    assert mask_key("phone:020 7946 0958", rules) == "phone:+44***58"
    assert mask_key("email:not-an-address", rules) == "email:***"
    assert mask_key("session:9f2c77", rules) == "session:9f***"
    assert mask_key("shop:1001", rules) == "shop:1001" and mask_key("1001", rules) == "1001"


def test_only_an_admin_erases_and_only_after_confirming(fresh: Flask) -> None:
    viewer, boss = signed_in(fresh, "viewer"), signed_in(fresh, "boss")
    refused = viewer.post(
        "/dashboard/customer/erase", data={"key": "1003", "csrf": token(viewer), "confirm": "1003"}
    )
    assert refused.status_code == 403 and "admin" in refused.get_data(as_text=True)
    assert "Erase this customer" not in viewer.get("/dashboard/customer?id=1003").get_data(
        as_text=True
    )
    page = boss.get("/dashboard/customer?id=1003").get_data(as_text=True)
    assert "Erase this customer" in page
    csrf = token(boss)
    key = "email:leaver@example.com"
    ask = boss.post("/dashboard/customer/erase", data={"key": key, "csrf": csrf})
    assert ask.status_code == 200 and "Type <code>1003</code> to confirm" in ask.get_data(
        as_text=True
    )
    wrong = boss.post("/dashboard/customer/erase", data={"key": key, "csrf": csrf, "confirm": "1"})
    assert wrong.status_code == 400 and "nothing was erased" in wrong.get_data(as_text=True)
    assert "was erased" not in boss.get("/dashboard/customer?id=1003").get_data(as_text=True)
    done = boss.post(
        "/dashboard/customer/erase", data={"key": key, "csrf": csrf, "confirm": "1003"}
    )
    assert done.status_code == 200 and "Customer <code>1003</code> was erased" in done.get_data(
        as_text=True
    )
    assert "This customer was erased" in boss.get("/dashboard/customer?id=1003").get_data(
        as_text=True
    )
    answer = api(fresh.test_client(), "GET", "/v1/customers/1003/recommendations", "reader")
    assert answer.get_json()["fallback"] is True


def test_tier_figures_and_movements_have_known_answers(app: Flask) -> None:
    service = service_of(app)
    model = service.model()
    figures = service.tier_figures(model)
    counts = {row.name: row.customers for row in figures.rows}
    assert (
        counts
        == dict(model.bundle.manifest.tiers.customers_per_tier)
        == {
            "bronze": 13,
            "silver": 0,
            "gold": 2,
        }
    )
    assert {row.name: round(row.window_spend, 2) for row in figures.rows}["gold"] == 1604.0
    client = signed_in(app, "viewer")
    client.get("/dashboard/tiers")
    service.movements.wait(30)
    body = client.get("/dashboard/tiers").get_data(as_text=True)
    assert "<strong>1</strong> customers moved up, <strong>0</strong> down" in body
    state = service.tier_movements(model)
    assert state.status == "ready" and state.movements is not None
    assert state.movements.counts == ((13, 0, 1), (0, 0, 0), (0, 0, 1))  # the climber
    assert state.movements.new == (0, 0, 0) and state.movements.gone == (0, 0, 0)
    members = re.findall(r'customer\?id=(\d+)">\1</a>', body)
    assert members == ["1004", "1005"]  # gold, by window spend: 1000 then 604


def test_tier_members_page_through_the_tier_by_spend(app: Flask) -> None:
    model = service_of(app).model()
    figures = TierFigures(model)
    everyone = figures.members(0, 0, 100)
    assert len(everyone) == 13
    paged = figures.members(0, 0, 5) + figures.members(0, 5, 5) + figures.members(0, 10, 5)
    assert paged == everyone
    spends = [member.window_spend for member in everyone]
    assert spends == sorted(spends, reverse=True) and max(spends) < 50  # all bronze
    client = signed_in(app, "viewer")
    assert client.get("/dashboard/tiers?tier=bronze&page=2").status_code == 400
    assert client.get("/dashboard/tiers?tier=nope").status_code == 400
    assert "Nobody is in silver" in client.get("/dashboard/tiers?tier=silver").get_data(
        as_text=True
    )


def test_triggers_filter_page_and_export(fresh: Flask) -> None:
    api_client = fresh.test_client()
    # Thirteen bronze customers cross into silver: a live tier_up each.
    bronze = ["1001", "1002", "1003"] + [str(2001 + n) for n in range(10)]
    events(api_client, *[event(f"up-{c}", c, "P2", price=60.0) for c in bronze])
    feed = api(api_client, "GET", "/v1/triggers?limit=1000", "reader").get_json()["triggers"]
    assert len(feed) == 15
    client = signed_in(fresh, "viewer")
    seen: list[str] = []
    path = "/dashboard/triggers?limit=10"
    while path:
        body = client.get(path).get_data(as_text=True)
        seen += re.findall(r'<tr class="trigger"><td>[^<]+</td><td><span class="flag">(\w+)', body)
        found = re.search(r'href="(/dashboard/triggers\?[^"]+)" rel="next"', body)
        path = found.group(1).replace("&amp;", "&") if found else ""
    assert len(seen) == 15 and seen == [t["kind"] for t in feed]
    first = client.get("/dashboard/triggers?kind=tier_up").get_data(as_text=True)
    assert "kind=tier_up&amp;from=2011-08-26&amp;to=2011-09-01" in first  # the data's last week
    only = client.get("/dashboard/triggers?kind=tier_up&from=2011-01-01&to=2011-01-31")
    assert only.get_data(as_text=True).count('<tr class="trigger">') == 1  # 1005, 2011-01-10
    export = client.get("/dashboard/triggers.csv?kind=tier_up")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
    assert rows[0] == ["fired_at", "kind", "customer_id", "reason", "figures"]
    assert [row[2] for row in rows[1:]] == [t["customer_id"] for t in feed]
    assert all(json.loads(row[4])["to"] in ("silver", "gold") for row in rows[1:])
    for bad in (
        "limit=7",
        "from=yesterday",
        "kind=nope",
        "cursor=%21%21",
        "from=2011-02-01&to=2011-01-01",
    ):
        response = client.get(f"/dashboard/triggers?{bad}")
        assert response.status_code == 400 and response.mimetype == HTML, bad


def test_recent_events_and_holdings_follow_events_since_training(fresh: Flask) -> None:
    api_client = fresh.test_client()
    views = [
        event(f"v{n}", "1001", "X1", kind="view", timestamp=f"2011-09-02T10:{n:02d}:00Z")
        for n in range(24)
    ]
    for view in views:
        for field in ("quantity", "price", "source"):
            view.pop(field)
    events(
        api_client,
        *views,
        event("buy", "1001", "C1"),
        event("back", "1001", "K2", kind="return", quantity=2, price=6.0),
    )
    client = signed_in(fresh, "viewer")
    first = client.get("/dashboard/customer?id=1001").get_data(as_text=True)
    assert "26 kept in the store" in first and "Page 1 of 2" in first
    second = client.get("/dashboard/customer?id=1001&events=2").get_data(as_text=True)

    def rows(body: str) -> int:
        return sum(body.count(f"<td>{kind}</td>") for kind in ("view", "purchase", "return"))

    assert rows(first) == 20 and rows(second) == 6
    owned = re.findall(
        r'<tr class="owned"><td>(?:<strong>(\w+)</strong>)?</td><td><code>(\w+)</code>', first
    )
    assert owned == [("outlet", "P1"), ("shop", "K1"), ("web", "C1")]  # K2 returned
    assert client.get("/dashboard/customer?id=1001&events=0").status_code == 400


def test_the_overview_reads_the_same_numbers_as_metrics(app: Flask) -> None:
    api_client = app.test_client()
    for key in ("1001", "1002", "nobody-1", "nobody-2"):
        api(api_client, "GET", f"/v1/customers/{key}/recommendations", "reader")
    scrape = api(api_client, "GET", "/metrics", "boss").get_data(as_text=True)
    route = "/v1/customers/<key>/recommendations"

    def total(name: str) -> float:
        pattern = rf'^{name}{{[^}}]*route="{re.escape(route)}"[^}}]*}} ([0-9.e+]+)$'
        return sum(float(v) for v in re.findall(pattern, scrape, re.MULTILINE))

    requests, fallbacks = total("recsvc_requests_total"), total("recsvc_fallbacks_total")
    body = signed_in(app, "viewer").get("/dashboard/").get_data(as_text=True)
    row = re.search(
        r"<code>/v1/customers/&lt;key&gt;/recommendations</code></th>"
        r"<td class=\"num\">([0-9,]+)</td>"
        r"(?:<td[^>]*>[^<]*</td>){5}<td class=\"num\">([0-9.]+) %</td>",
        body,
    )
    assert row is not None
    assert float(row.group(1).replace(",", "")) == requests >= 4
    assert row.group(2) == f"{fallbacks / requests * 100:.1f}"
    routes = body.split("By route")[1].split("</table>")[0]
    assert "/v1/" in routes and "/dashboard" not in routes  # the service's traffic only


def test_the_overview_shows_the_last_evaluation_or_says_there_is_none(
    models: Path, tmp_path: Path, app: Flask
) -> None:
    absent = signed_in(app, "viewer").get("/dashboard/").get_data(as_text=True)
    assert "no evaluation recorded" in absent
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "protocol": {"cutoff": "2011-11-09T00:00:00", "k": 10, "test_customers": 1234},
                "popular": {"ndcg@10": 0.0741, "precision@10": 0.03},
                "recsvc": {"ndcg@10": 0.1229, "precision@10": 0.05, "coverage@10": 0.4},
                "baskets": {"similar": {}},
            }
        )
    )
    evaluated = create_app(
        settings(models, tmp_path / "events", RECSVC_EVALUATION_REPORT=str(report))
    )
    body = signed_in(evaluated, "viewer").get("/dashboard/").get_data(as_text=True)
    served = body.index('<tr class="served"><th scope="row">recsvc')
    assert served < body.index('<th scope="row">popular')  # the served model first
    assert "0.1229" in body and "0.0741" in body and "1,234 test customers" in body
    report.write_text("not json")
    broken = signed_in(evaluated, "viewer").get("/dashboard/")
    assert broken.status_code == 200 and "is not a report of" in broken.get_data(as_text=True)


def test_bad_input_gets_an_html_page_naming_it(app: Flask) -> None:
    client = signed_in(app, "viewer")
    for path, named in (
        ("/dashboard/customer?id=", "id"),
        ("/dashboard/customer?id=1001&owned=x", "owned"),
        ("/dashboard/quarantine?after=3", "after"),
        ("/dashboard/quarantine?source=nope", "source"),
        ("/dashboard/tiers?page=0", "page"),
    ):
        response = client.get(path)
        assert response.status_code == 400 and response.mimetype == HTML, path
        assert named in response.get_data(as_text=True), path


def test_quarantine_pages_follow_byte_offsets(app: Flask) -> None:
    body = signed_in(app, "boss").get("/dashboard/quarantine?source=shop").get_data(as_text=True)
    assert body.count("<tr><td>shop</td>") == 1 and "bad_quantity" in body
    assert 'rel="next"' not in body  # one row: no next page


def test_charts_and_quantiles_have_known_answers() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 19, 604, 1000.1)] == [1.0, 1.0, 20.0, 1000.0, 2000.0]
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert bucket_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert bucket_quantile(buckets, 0.7) == pytest.approx(0.0015)
    assert bucket_quantile(buckets, 0.99) == pytest.approx(0.0047)
    assert bucket_quantile({}, 0.5) is None


@pytest.fixture(autouse=True)
def _no_leaked_addresses(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    text = caplog.text.lower()
    for address in (ANN_EMAIL.lower(), "someone.new@example.com", "leaver@example.com"):
        assert address not in text


# Experiments


@pytest.fixture
def experiment(models: Path, tmp_path: Path) -> tuple[Flask, Path, str, str]:
    """An app running an experiment between the two bundles, on a copy of the models (ending
    it moves ``current``): the app, the models, the champion's and the challenger's bundle."""
    copied = tmp_path / "models"
    shutil.copytree(models, copied)
    current = (copied / "current").read_text().strip()
    earlier = next(v for v in bundle_versions(copied) if v != current)
    spec = f"champion:{current}:50,challenger:{earlier}:50"
    app = create_app(
        settings(copied, tmp_path / "events", RECSVC_EXPERIMENT=spec, RECSVC_RELOAD_SECONDS="0")
    )
    return app, copied, current, earlier


def test_the_experiments_page_shows_each_arms_figures_with_intervals(
    experiment: tuple[Flask, Path, str, str],
) -> None:
    app, _, current, earlier = experiment
    client = app.test_client()
    viewer = signed_in(app, "viewer")
    for customer in ("1001", "1002", "1004"):  # a look records no impression
        assert "In experiment arm" in viewer.get(f"/dashboard/customer?id={customer}").get_data(
            as_text=True
        )
    clicks = []
    for visitor in range(40):
        answer = api(
            client, "GET", f"/v1/customers/visitor-{visitor}/recommendations?n=3", "reader"
        )
        answer = answer.get_json()
        if visitor % 3 == 0:
            clicks.append(
                {
                    "event_id": f"k{visitor}",
                    "kind": "rec_click",
                    "customer": f"visitor-{visitor}",
                    "item_id": answer["items"][0]["item_id"],
                    "impression_id": answer["impression_id"],
                    "model_version": answer["model_version"],
                    "surface": "recommendations",
                    "rank": 1,
                    "timestamp": "2011-09-02T10:00:00Z",
                }
            )
    events(client, *clicks)
    report = api(client, "GET", "/v1/experiments", "boss").get_json()["experiment"]
    body = signed_in(app, "viewer").get("/dashboard/experiments").get_data(as_text=True)
    rows = re.findall(
        r'<tr class="arm"><th scope="row">(\w+)<small><code>([^<]+)</code></small></th>'
        r'<td class="num">(\d+) %</td><td class="num">(\d+)</td><td class="num">(\d+)</td>'
        r'<td class="num">(\d+)</td>',
        body,
    )
    assert rows == [
        (
            arm["name"],
            arm["model_version"],
            str(arm["weight"]),
            str(arm["customers"]),
            str(arm["impressions"]),
            str(arm["clicked"]),
        )
        for arm in report["arms"]
    ]
    assert [row[1] for row in rows] == [current, earlier]
    assert sum(int(row[4]) for row in rows) == 40 and sum(int(row[5]) for row in rows) == 14
    first = report["arms"][0]["ctr"]
    assert f"{first['low'] * 100:.2f} % to {first['high'] * 100:.2f} %" in body  # its interval
    assert body.count('class="whisker') == 6  # two arms, three figures
    assert "Against champion" in body and "Click-through rate over time" in body
    assert "Promote" not in body  # not an admin


def test_an_admin_promotes_an_arm_after_confirming(
    experiment: tuple[Flask, Path, str, str],
) -> None:
    app, copied, _, earlier = experiment
    viewer, boss = signed_in(app, "viewer"), signed_in(app, "boss")
    refused = viewer.post(
        "/dashboard/experiments/end",
        data={"csrf": token(viewer), "action": "promote", "arm": "challenger", "confirm": "yes"},
    )
    assert refused.status_code == 403
    assert 'value="promote">Promote challenger' in boss.get("/dashboard/experiments").get_data(
        as_text=True
    )
    csrf = token(boss)
    form = {"csrf": csrf, "action": "promote", "arm": "challenger"}
    ask = boss.post("/dashboard/experiments/end", data=form)
    assert ask.status_code == 200 and "Promote challenger?" in ask.get_data(as_text=True)
    assert earlier in ask.get_data(as_text=True)
    assert (copied / "current").read_text().strip() != earlier  # nothing happened yet
    wrong = boss.post("/dashboard/experiments/end", data={**form, "arm": "nope", "confirm": "yes"})
    assert wrong.status_code == 400 and "not a live arm" in wrong.get_data(as_text=True)
    done = boss.post("/dashboard/experiments/end", data={**form, "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["Location"] == "/dashboard/experiments?done=promote&arm=challenger"
    assert (copied / "current").read_text().strip() == earlier
    page = boss.get(done.headers["Location"]).get_data(as_text=True)
    assert "challenger is promoted" in page and "challenger promoted" in page
    again = boss.post("/dashboard/experiments/end", data={**form, "confirm": "yes"})
    assert again.status_code == 409  # no experiment is running


def test_without_an_experiment_the_page_says_how_to_start_one(app: Flask) -> None:
    body = signed_in(app, "viewer").get("/dashboard/experiments").get_data(as_text=True)
    assert "No experiment is configured" in body and "RECSVC_EXPERIMENT" in body


def test_the_history_keeps_one_reading_per_interval(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000.0)
    history = ExperimentHistory(tmp_path, interval=900, clock=clock)
    interval = FigureInterval(0.1, 0.05, 0.15)
    arm = ArmReport(
        name="a",
        model_version="v1",
        weight=50,
        dropped=False,
        customers=10,
        impressions=20,
        clicked=2,
        converted=1,
        revenue=5.0,
        ctr=interval,
        conversion_rate=interval,
        revenue_per_impression=interval,
        difference=None,
    )
    report = ExperimentReport(name="test", running=True, ended_at=None, promoted=None, arms=[arm])
    assert history.record(report) is True
    assert history.record(report) is False  # too soon
    clock.advance(900)
    assert history.record(report) is True
    other = msgspec.structs.replace(report, name="another")
    assert history.record(other) is True  # another experiment: at once
    ended = msgspec.structs.replace(report, running=False)
    clock.advance(900)
    assert history.record(ended) is False
    readings = history.readings("test")
    assert [r.at for r in readings] == [1_000_000.0, 1_000_900.0]
    assert readings[0].arms[0].ctr == interval
    assert history.readings("nothing") == []
