"""The embed script and the email HTML in a real browser (headless Chromium via Playwright).

A page served from one local origin embeds the script from a real gunicorn on another, so
CORS is exercised as on a shop's site. Screenshots go to artifacts/.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.local_server import free_port, gunicorn
from recsvc import tokens
from recsvc.auth import mint
from tests.channel_shop import XSS_TITLE, build

CHROMIUM = "/usr/bin/chromium"
SECRET = "browser-test-secret-of-32-characters"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The embed script marks each block data-recsvc-loaded="true" or "failed" once it settles.
ALL_SETTLED = """() => [...document.querySelectorAll("[data-recsvc-slot]")]
    .every(node => node.hasAttribute("data-recsvc-loaded"))"""
HERO_IMAGES_DONE = """() => [...document.querySelectorAll("#hero img")].every(n => n.complete)"""
BLOCK_STATES = "nodes => Object.fromEntries(nodes.map(n => [n.id, n.dataset.recsvcLoaded ?? null]))"


def png(width: int = 8, height: int = 8) -> bytes:
    """A small, valid, orange PNG."""
    raw = b"".join(b"\x00" + b"\xff\x88\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False)
        if not Path(CHROMIUM).exists():
            pytest.fail(
                f"{CHROMIUM} is missing: install Debian's chromium (`make test` does, with apt-get)"
            )
    return CHROMIUM


class Site:
    """The shop's own pages: the demo page, product pages and images."""

    def __init__(self) -> None:
        self.port = free_port()
        self.pages: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                if self.path.startswith(("/images/", "/content/")):
                    body, kind = png(), "image/png"
                elif self.path in site.pages:
                    body, kind = site.pages[self.path].encode(), "text/html; charset=utf-8"
                else:
                    body, kind = b"<p>a product page</p>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def service(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("browser")
    models = build(directory, base_url=site.url)
    web_key, web_line = mint("web", ["blocks:read"])
    mail_key, mail_line = mint("mail", ["recs:read"])
    env = {
        "RECSVC_MODELS_DIR": str(models),
        "RECSVC_EVENTS_DIR": str(directory),
        "RECSVC_API_KEYS": f"{web_line},{mail_line}",
        "RECSVC_CORS_ORIGINS": site.url,
        "RECSVC_SECRET_KEY": SECRET,
        "RECSVC_WORKERS": "1",
    }
    log = directory / "gunicorn.log"
    with gunicorn(env, log_path=log) as url:
        yield {"url": url, "web_key": web_key, "mail_key": mail_key, "log": str(log)}


def api_json(service: dict[str, str], path: str, key: str) -> dict[str, object]:
    import json

    request = urllib.request.Request(service["url"] + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


def test_embedded_block_shows_the_customers_picks(
    chromium: str, site: Site, service: dict[str, str]
) -> None:
    """The logged-in visitor's page carries a token the shop's backend minted: their own
    block. A page that only names a customer gets the anonymous block."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    token = tokens.mint(SECRET.encode(), "festive")
    site.pages["/demo.html"] = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Shop</title></head><body><h1>Our shop</h1>
<div id="hero" data-recsvc-slot="home_hero" data-recsvc-customer="festive"
     data-recsvc-token="{token}">Loading…</div>
<div id="claimed" data-recsvc-slot="home_hero" data-recsvc-customer="festive"></div>
<div id="anon" data-recsvc-slot="home_hero"></div>
<div id="broken" data-recsvc-slot="no_such_slot">Our favourites</div>
<script src="{service["url"]}/v1/embed.js" data-recsvc-key="{service["web_key"]}"></script>
</body></html>"""
    expected = api_json(service, "/v1/customers/festive/blocks/home_hero", service["mail_key"])
    anonymous = api_json(service, "/v1/blocks/home_hero", service["web_key"])
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.goto(f"{site.url}/demo.html")
        # Every block settles, loaded or failed, within the script's own timeout (3 s). One
        # wait for all of them, then their states: a block that did not settle, or settled
        # the wrong way, is named in the failure instead of a bare timeout on one selector.
        try:
            page.wait_for_function(ALL_SETTLED, timeout=10_000, polling=100)
        except PlaywrightTimeoutError:
            pass
        states = page.eval_on_selector_all("[data-recsvc-slot]", BLOCK_STATES)
        assert states == {"hero": "true", "claimed": "true", "anon": "true", "broken": "failed"}, (
            f"blocks {states}; page console {console}; service log:\n"
            + Path(service["log"]).read_text(encoding="utf-8")[-4000:]
        )
        shown = page.eval_on_selector_all(
            "#hero .recsvc-product", "nodes => nodes.map(n => n.dataset.itemId)"
        )
        claimed = page.eval_on_selector_all(
            "#claimed .recsvc-product", "nodes => nodes.map(n => n.dataset.itemId)"
        )
        anonymous_titles = page.eval_on_selector_all(
            "#anon .recsvc-title", "nodes => nodes.map(n => n.textContent)"
        )
        # The block's images are fetched once it is in the page: wait until each has loaded
        # or failed, then require that each loaded.
        try:
            page.wait_for_function(HERO_IMAGES_DONE, timeout=10_000, polling=100)
        except PlaywrightTimeoutError:
            pass
        images_loaded = page.eval_on_selector_all(
            "#hero img", "nodes => nodes.every(n => n.complete && n.naturalWidth > 0)"
        )
        broken_text = page.inner_text("#broken")
        page.screenshot(path=str(ARTIFACTS / "embed-block.png"), full_page=True)
        browser.close()

    products = expected["products"]
    assert isinstance(products, list)
    assert shown == [product["item_id"] for product in products]
    anonymous_products = anonymous["products"]
    assert isinstance(anonymous_products, list)
    assert claimed == [product["item_id"] for product in anonymous_products] != shown
    assert XSS_TITLE in anonymous_titles  # shown as text, never run
    assert dialogs == []
    assert images_loaded is True
    assert broken_text == "Our favourites"  # a failed block leaves the page as it was


def test_block_does_nothing_when_the_service_is_down(chromium: str, site: Site) -> None:
    from playwright.sync_api import sync_playwright

    dead = f"http://127.0.0.1:{free_port()}"
    site.pages["/down.html"] = f"""<!doctype html><html><body><p id="own">Shop content</p>
<div id="hero" data-recsvc-slot="home_hero" data-recsvc-customer="festive">Fallback</div>
<script src="{dead}/v1/embed.js"></script></body></html>"""
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{site.url}/down.html")
        page.wait_for_load_state("load")
        assert page.inner_text("#own") == "Shop content"
        assert page.inner_text("#hero") == "Fallback"
        browser.close()
    assert errors == []


def test_email_html_renders_with_images_and_tracked_links(
    chromium: str, site: Site, service: dict[str, str]
) -> None:
    from playwright.sync_api import sync_playwright

    request = urllib.request.Request(
        f"{service['url']}/v1/customers/email:Baker%40example.com/email-picks"
        "?send_id=autumn&n=4&format=html",
        headers={"X-API-Key": service["mail_key"]},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        html = response.read().decode()
    site.pages["/email.html"] = f"<!doctype html><html><body>{html}</body></html>"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page()
        page.goto(f"{site.url}/email.html")
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "nodes => nodes.map(n => [n.src, n.complete && n.naturalWidth > 0])"
        )
        links = page.eval_on_selector_all("a", "nodes => nodes.map(n => n.href)")
        page.screenshot(path=str(ARTIFACTS / "email-picks.png"), full_page=True)
        browser.close()
    assert len(images) == 4 and all(loaded for _, loaded in images)
    assert all(src.startswith(f"{site.url}/images/") for src, _ in images)
    assert len(links) == 4
    assert all(
        link.startswith(f"{site.url}/products/") and "utm_campaign=autumn" in link for link in links
    )
