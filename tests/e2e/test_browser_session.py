"""A real uvicorn server driven by Debian Chromium: attribution survives page views, and a
tampered cookie in the browser gives a fresh session instead of an error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests._servers import CHROMIUM, CHROMIUM_ARGS, serve_in_thread
from tracking_mw._context import current_attribution
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.config import Settings


def render(request: Request) -> Response:
    a = current_attribution()
    data = json.dumps(a.to_dict() if a is not None else None)
    links = '<a id="next" href="/page2">next</a> <a id="third" href="/page3">third</a>'
    # Inside <script>, only "<" could end the element early: escape it.
    safe = data.replace("<", "\\u003c")
    script = f'<script id="attr" type="application/json">{safe}</script>'
    return HTMLResponse(f"<html><body>{links}{script}</body></html>")


def build_app() -> TrackingMiddleware:
    app = Starlette(routes=[Route("/", render), Route("/page2", render), Route("/page3", render)])
    settings = Settings(
        secret_key="e2e-secret-key-0123456789",
        cookie_secure=False,  # plain http on loopback
        outbox="memory://",
        start_dispatcher=False,
    )
    return TrackingMiddleware(app, settings)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_in_thread(build_app()) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def attribution(page: Page) -> dict[str, Any] | None:
    text = page.locator("#attr").text_content()
    assert text is not None
    data: dict[str, Any] | None = json.loads(text)
    return data


def test_attribution_survives_navigation_and_tampering(browser: Browser, base_url: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        resp = page.goto(f"{base_url}/?click_id=CLK-%2B42_aB&pixel_id=PX9&utm_source=kwai")
        assert resp is not None and resp.status == 200
        first = attribution(page)
        assert first is not None
        assert first["touches"]["kwai"]["click_id"] == "CLK-+42_aB"
        assert first["touches"]["kwai"]["pixel_id"] == "PX9"
        visitor = first["visitor_id"]

        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["_tmw"]["httpOnly"] is True
        assert cookies["_tmw"]["sameSite"] == "Lax"
        assert cookies["_tmw"]["path"] == "/"

        page.click("#next")
        page.wait_for_url(f"{base_url}/page2")
        second = attribution(page)
        assert second is not None and second["visitor_id"] == visitor
        assert second["touches"]["kwai"]["click_id"] == "CLK-+42_aB"
        assert second["client"]["referrer"].startswith(base_url)

        resp = page.goto(f"{base_url}/page3")
        assert resp is not None and resp.status == 200
        third = attribution(page)
        assert third is not None and third["touches"]["kwai"]["click_id"] == "CLK-+42_aB"
        # Later pages changed nothing: the cookie value is the one set on landing.
        assert {c["name"]: c["value"] for c in context.cookies()}["_tmw"] == cookies["_tmw"][
            "value"
        ]

        # Tamper with the signed cookie in the browser.
        value = cookies["_tmw"]["value"]
        i = len(value) // 2
        tampered = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
        context.add_cookies([{"name": "_tmw", "value": tampered, "url": base_url}])
        resp = page.goto(f"{base_url}/page2")
        assert resp is not None and resp.status == 200
        fresh = attribution(page)
        assert fresh is not None and fresh["touches"] == {}
        assert fresh["visitor_id"] != visitor

        # The next landing starts a new, valid session.
        resp = page.goto(f"{base_url}/?rtid={'r' * 32}")
        assert resp is not None and resp.status == 200
        page.goto(f"{base_url}/page3")
        again = attribution(page)
        assert again is not None and again["touches"]["rokt"]["click_id"] == "r" * 32
        assert "kwai" not in again["touches"]
    finally:
        context.close()
