"""The dashboard in a real browser (headless Chromium via Playwright) against a real gunicorn:
signing in, looking a customer up by email, erasing one, every page with JavaScript on and
off, the charts' hover, keyboard navigation, and markup in titles shown as text. Screenshots
of every page go to artifacts/dashboard-*.png."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.local_server import gunicorn
from recsvc.auth import mint
from recsvc.bundle import bundle_versions
from tests.channel_shop import XSS_TITLE
from tests.dashboard_shop import ANN_EMAIL, XSS_CONTENT, build
from tests.test_browser import ARTIFACTS, CHROMIUM, FLAGS, chromium  # noqa: F401 (a fixture)

SECRET = "dashboard-browser-secret-of-32-chars"
ADMIN_KEY, ADMIN_LINE = mint("boss", ["admin"])
VIEWER_KEY, VIEWER_LINE = mint("viewer", ["dashboard:read"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("dashboard-browser")
    models = build(directory)
    current = (models / "current").read_text().strip()
    earlier = next(version for version in bundle_versions(models) if version != current)
    env = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EXPERIMENT": f"champion:{current}:50,challenger:{earlier}:50",
        "RECSVC_EVENTS_DIR": str(directory / "events"),
        "RECSVC_API_KEYS": f"{ADMIN_LINE},{VIEWER_LINE}",
        "RECSVC_SECRET_KEY": SECRET,
        "RECSVC_WORKERS": "2",
        "RECSVC_LOG_LEVEL": "WARNING",
    }
    with gunicorn(env, directory / "gunicorn.log") as url:
        yield url


def browser_page(playwright: Any, javascript: bool = True) -> tuple[Any, Any, list[str]]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, java_script_enabled=javascript
    )
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    return browser, page, dialogs


def api(url: str, path: str) -> Any:
    request = urllib.request.Request(url + path, headers={"X-API-Key": ADMIN_KEY})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/dashboard/")
    assert "/dashboard/sign-in" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/dashboard/")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def look_up(page: Any, key: str) -> None:
    page.get_by_label("Customer key").fill(key)
    page.get_by_role("button", name="Look up").click()
    page.wait_for_load_state()


def test_a_viewer_signs_in_looks_a_customer_up_by_email_and_sees_every_page(
    chromium: str,  # noqa: F811
    service: str,
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page, dialogs = browser_page(playwright)
        page.goto(f"{service}/dashboard/sign-in")
        shot(page, "sign-in")
        sign_in(page, service, VIEWER_KEY)
        bar = page.locator("svg .segment").first
        bar.hover()
        tip = page.locator(".tip")
        tip.wait_for(state="visible")
        assert tip.inner_text().startswith("shop, used:")
        shot(page, "overview")
        page.keyboard.press("Tab")  # the first stop skips to the content
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"

        page.get_by_role("link", name="Customers").click()
        shot(page, "customers")
        look_up(page, f"email:{ANN_EMAIL}")
        assert page.url.endswith("/dashboard/customer?id=1001")
        assert "ann" not in page.url.lower()
        owned = page.locator("tr.owned code").all_inner_texts()
        assert owned == ["P1", "K2", "K1"]  # outlet's, then the shop's
        assert page.locator("tr.owned strong").all_inner_texts() == ["outlet", "shop"]
        reasons = page.locator("tr.recommendation td.reason").all_inner_texts()
        assert len(reasons) == 4 and any("Because you bought" in r for r in reasons)
        assert XSS_TITLE in page.locator("tr.recommendation td.title").all_inner_texts()
        assert XSS_CONTENT in page.locator(".content-item").first.inner_text()
        assert page.get_by_role("button", name="Erase…").count() == 0  # not an admin
        shot(page, "customer")

        page.get_by_role("link", name="Tiers").click()
        for _ in range(40):  # tier movements are computed once, in the background
            if page.get_by_text("Being computed").count() == 0:
                break
            page.wait_for_timeout(250)
            page.reload()
        assert "1 customers moved up" in page.inner_text("main")
        shot(page, "tiers")

        page.get_by_role("link", name="Triggers").click()
        page.get_by_label("tier_up").check()
        page.get_by_role("button", name="Filter").click()
        assert page.locator("tr.trigger").count() == 2
        shot(page, "triggers")

        page.goto(f"{service}/dashboard/quarantine")
        assert "q***@example.com" in page.inner_text("main")
        shot(page, "quarantine")

        for visitor in range(30):  # answers for the experiment's arms to count
            api(service, f"/v1/customers/visitor-{visitor}/recommendations?n=3")
        page.get_by_role("link", name="Experiments").click()
        for _ in range(40):  # each worker writes its impressions every second
            shown = page.locator("tr.arm td:nth-child(4)").all_inner_texts()
            if sum(int(n.replace(",", "")) for n in shown) == 30:
                break
            page.wait_for_timeout(250)
            page.reload()
        arms = page.locator("tr.arm th").all_inner_texts()
        assert [arm.split()[0] for arm in arms] == ["champion", "challenger"]
        assert page.locator("svg.intervals .whisker").count() == 6
        assert page.get_by_role("button", name="Promote champion…").count() == 0
        shot(page, "experiments")
        browser.close()
    assert dialogs == []  # no markup in a title ever ran


def test_an_admin_erases_a_test_customer_after_confirming(
    chromium: str,  # noqa: F811
    service: str,
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page, dialogs = browser_page(playwright)
        sign_in(page, service, ADMIN_KEY)
        page.goto(f"{service}/dashboard/customers")
        look_up(page, "email:leaver@example.com")
        assert page.url.endswith("/dashboard/customer?id=1003")
        page.get_by_role("button", name="Erase…").click()
        assert page.get_by_role("heading", name="Erase 1003?").count() == 1
        shot(page, "erase")
        page.get_by_label("Type 1003 to confirm").fill("1003")
        page.get_by_role("button", name="Erase for good").click()
        assert "Customer 1003 was erased" in page.inner_text("main")
        shot(page, "erased")
        page.goto(f"{service}/dashboard/customer?id=1003")
        assert "This customer was erased" in page.inner_text("main")
        browser.close()
    assert dialogs == []
    answer = api(service, "/v1/customers/1003/recommendations")
    assert answer["fallback"] is True  # on every worker


def test_every_page_works_without_javascript(
    chromium: str,  # noqa: F811
    service: str,
) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page, dialogs = browser_page(playwright, javascript=False)
        sign_in(page, service, VIEWER_KEY)
        assert page.locator("svg .segment title").count() > 0  # the hover falls back
        page.goto(f"{service}/dashboard/customers")
        look_up(page, "1002")
        assert page.locator("tr.owned").count() == 2
        page.get_by_role("link", name="Tiers").click()
        page.get_by_label("Tier", exact=True).select_option("bronze")
        page.get_by_role("button", name="Show").click()
        assert page.locator("main table").count() >= 2
        page.get_by_role("link", name="Triggers").click()
        assert page.locator("tr.trigger").count() >= 1
        page.get_by_role("button", name="Sign out").click()
        assert "/dashboard/sign-in" in page.url
        browser.close()
    assert dialogs == []
