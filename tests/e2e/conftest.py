"""Fixtures for the demo shop's end-to-end tests: one real demo server and one Chromium.

The demo server runs on uvicorn in a thread with its fake platforms in the same process; the
tests look at what each fake platform accepted through ``DemoServer.fake``. Every test opens
its own browser context (fresh cookies), so visitors never share a session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from demo_site.app import DemoApp, create_app
from tests._servers import CHROMIUM, CHROMIUM_ARGS, free_port, serve_in_thread
from tracking_mw._runtime import Runtime
from tracking_mw.config import DeliveryConfig

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Bounds for anything that waits on a delivery: generous for a loaded 2-core machine, yet short.
DELIVERY_TIMEOUT_MS = 20_000


@dataclass
class DemoServer:
    """The running demo: its base URL and the app (``app.fake`` holds the fake platforms)."""

    base: str
    app: DemoApp

    def deliveries(self, **params: str) -> list[dict[str, Any]]:
        """The inspector's JSON view of the outbox, filtered by ``platform``/``event_id``."""
        r = httpx.get(f"{self.base}/_tracking/api/deliveries", params=params, timeout=10)
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["deliveries"]
        return rows

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = DELIVERY_TIMEOUT_MS / 1000
    ) -> Any:
        """Poll ``check`` until it returns something truthy (bounded), and return that."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """A demo server on a free port, with a SQLite outbox in a temporary directory.

    Module-scoped; afterwards no runtime is the default any more, so tests in other modules
    never reach this demo's runtime through ``track()`` outside a request.
    """
    port = free_port()
    outbox = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'outbox.sqlite3'}"
    app = create_app(
        port=port,
        outbox=outbox,
        # Short backoff so a platform that comes back is retried within a second or two.
        delivery=DeliveryConfig(backoff_base=0.1, backoff_cap=0.5, poll_interval=0.05, timeout=5),
    )
    try:
        with serve_in_thread(app, port=port) as base:
            yield DemoServer(base, app)
    finally:
        Runtime.set_default(None)


@pytest.fixture(scope="module")
def demo_browser() -> Iterator[Browser]:
    """Debian's Chromium, launched once per test module."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def visitor(demo_browser: Browser, demo: DemoServer) -> Iterator[Visitor]:
    """A new visitor: a fresh browser context (no cookies) on the demo."""
    context = demo_browser.new_context(base_url=demo.base)
    context.set_default_timeout(15_000)
    try:
        yield Visitor(context, context.new_page(), demo)
    finally:
        context.close()


class Visitor:
    """One browser walking through the shop, with the steps the tests share."""

    def __init__(self, context: BrowserContext, page: Page, demo: DemoServer) -> None:
        self.context = context
        self.page = page
        self.demo = demo
        self._inspector: Page | None = None

    @property
    def user_agent(self) -> str:
        ua: str = self.page.evaluate("navigator.userAgent")
        return ua

    def cookie(self, name: str) -> str | None:
        for c in self.context.cookies():
            if c.get("name") == name:
                return c.get("value")
        return None

    def arrive_from_ad(self, platform: str) -> dict[str, str]:
        """Open the sample ads page, click ``platform``'s ad; returns the landing parameters."""
        self.page.goto("/ads")
        self.page.click(f"#ad-{platform}")
        self.page.wait_for_url("**/?*")
        expect(
            self.page.locator(f'#attribution .touch[data-platform="{platform}"]')
        ).to_be_visible()
        query = parse_qs(urlsplit(self.page.url).query)
        return {k: v[0] for k, v in query.items()}

    def browse_and_add_mug(self) -> None:
        """Two more pages: a product page, then the cart after adding the product."""
        self.page.click("text=Ceramic mug")
        expect(self.page.locator("h1")).to_have_text("Ceramic mug")
        self.page.click("#add-to-cart")
        expect(self.page.locator("#cart-total")).to_contain_text("39,50")

    def checkout(
        self, email: str = "ana.souza@example.com", phone: str = "+55 11 91234-5678"
    ) -> str:
        """Fill the checkout form; returns the order id (from the payment page's URL)."""
        self.page.click("#go-checkout")
        self.page.fill("#email", email)
        self.page.fill("#phone", phone)
        self.page.fill("#name", "Ana Souza")
        self.page.click("#continue-payment")
        self.page.wait_for_url("**/pay/*")
        return urlsplit(self.page.url).path.rsplit("/", 1)[1]

    def pay_now(self) -> None:
        self.page.click("#pay-now")
        expect(self.page.locator("#thanks")).to_be_visible()

    def expect_delivered(self, platform: str, event_id: str) -> Page:
        """Open the inspector in a new tab and wait until it shows the delivery delivered."""
        inspector = self._inspector
        if inspector is None:
            # One inspector tab per visitor: it refreshes itself, no need to reload it.
            inspector = self._inspector = self.context.new_page()
            inspector.goto("/_tracking/")
        row = inspector.locator(
            f'tr.delivery[data-platform="{platform}"][data-event-id="{event_id}"] .status'
        )
        expect(row).to_have_text("delivered", timeout=DELIVERY_TIMEOUT_MS)
        return inspector


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ (kept out of git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
