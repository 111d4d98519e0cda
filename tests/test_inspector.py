"""The inspector: off unless enabled, shows attribution and deliveries with secrets masked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tracking_mw._errors import OutboxError
from tracking_mw._runtime import Runtime
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.config import KwaiConfig, MetaConfig, Secret, Settings
from tracking_mw.delivery._base import DeliveryView
from tracking_mw.inspector import Inspector
from tracking_mw.tracker import track

META_TOKEN = "EAAB-meta-token-that-must-never-show"
KWAI_TOKEN = "kwai-token-that-must-never-show-1234"


def _settings() -> Settings:
    return Settings(
        secret_key="inspector-test-secret-key",
        cookie_secure=False,
        outbox="memory://",
        start_dispatcher=False,
        meta=MetaConfig(pixel_id="1234567890", access_token=Secret(META_TOKEN)),
        kwai=KwaiConfig(access_tokens={"*": Secret(KWAI_TOKEN)}),
    )


async def _buy(request: Request) -> Response:
    receipt = track(
        "Purchase",
        value="49.90",
        currency="BRL",
        user={"email": "Ana@Example.com"},
        event_id=request.query_params.get("id", "order-1"),
    )
    return JSONResponse({"queued": list(receipt.queued)})


async def _home(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _app(settings: Settings, inspector: Inspector) -> TrackingMiddleware:
    app = Starlette(
        routes=[
            Route("/", _home),
            Route("/buy", _buy, methods=["POST"]),
            Mount("/_tracking", app=inspector),
        ]
    )
    return TrackingMiddleware(app, settings=settings)


@pytest.fixture
def settings() -> Settings:
    return _settings()


Client = httpx.AsyncClient


def run(app: object, body: Callable[[Client], Awaitable[None]]) -> None:
    """Drive ``app`` in-process (no lifespan: the middleware starts its runtime lazily)."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await body(c)

    asyncio.run(main())


def with_client(settings: Settings, body: Callable[[Client], Awaitable[None]]) -> None:
    run(_app(settings, Inspector(settings, enabled=True)), body)


def test_disabled_by_default_answers_404(settings: Settings) -> None:
    async def body(c: Client) -> None:
        for path in ("/_tracking/", "/_tracking/api/deliveries", "/_tracking/api/attribution"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert "tracking" not in r.text.lower()

    run(_app(settings, Inspector(settings)), body)
    assert Inspector().enabled is False


def test_deliveries_show_the_request_with_secrets_masked(settings: Settings) -> None:
    async def body(c: Client) -> None:
        await c.get("/?click_id=CLICK-abc_123&pixel_id=777")
        assert set((await c.post("/buy?id=order-42")).json()["queued"]) == {"meta", "kwai"}
        data = (await c.get("/_tracking/api/deliveries")).json()
        rows = {r["platform"]: r for r in data["deliveries"] if r["event_id"] == "order-42"}
        assert set(rows) == {"meta", "kwai"}
        kwai = rows["kwai"]
        assert kwai["status"] == "pending" and kwai["attempts"] == 0
        assert kwai["event_name"] == "Purchase"
        assert kwai["request"]["method"] == "POST"
        assert kwai["request"]["url"].endswith("/log/common/api")
        assert "CLICK-abc_123" in kwai["request"]["body"]
        assert '"access_token":"***"' in kwai["request"]["body"].replace(" ", "")
        assert "access_token=***" in rows["meta"]["request"]["body"]
        whole = (await c.get("/_tracking/api/deliveries")).text + (await c.get("/_tracking/")).text
        assert META_TOKEN not in whole and KWAI_TOKEN not in whole
        assert data["counters"]["kwai"]["accepted"] >= 1
        assert data["counters"]["kwai"]["pending"] >= 1

    with_client(settings, body)


def test_filters_and_limit(settings: Settings) -> None:
    async def body(c: Client) -> None:
        await c.get("/?click_id=C1&pixel_id=9")
        await c.post("/buy?id=a-1")
        await c.post("/buy?id=a-2")
        api = "/_tracking/api/deliveries"
        only = (await c.get(api, params={"platform": "kwai"})).json()
        assert {r["platform"] for r in only["deliveries"]} == {"kwai"}
        one = (await c.get(api, params={"event_id": "a-2"})).json()
        assert {r["event_id"] for r in one["deliveries"]} == {"a-2"}
        limited = (await c.get(api, params={"limit": "1"})).json()
        assert len(limited["deliveries"]) == 1
        assert (await c.get(api, params={"limit": "junk"})).status_code == 200

    with_client(settings, body)


def test_page_shows_attribution_and_deliveries(settings: Settings) -> None:
    async def body(c: Client) -> None:
        await c.get("/?click_id=PAGE-CLICK&pixel_id=555")
        await c.post("/buy?id=order-page")
        page = await c.get("/_tracking/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "PAGE-CLICK" in page.text  # the visitor's attribution
        assert 'data-event-id="order-page"' in page.text
        assert "never expose it in production" in page.text
        assert "/_tracking/partial" in page.text  # it refreshes itself from its mount point
        partial = await c.get("/_tracking/partial")
        assert 'data-event-id="order-page"' in partial.text and "<html" not in partial.text

    with_client(settings, body)


def test_attribution_endpoint_inside_the_middleware(settings: Settings) -> None:
    async def body(c: Client) -> None:
        first = (await c.get("/_tracking/api/attribution")).json()
        assert "kwai" not in first["attribution"]["touches"]
        await c.get("/?click_id=ATTR-1&pixel_id=42")
        data = (await c.get("/_tracking/api/attribution")).json()
        assert data["source"] == "current_attribution()"
        assert data["attribution"]["touches"]["kwai"]["click_id"] == "ATTR-1"

    with_client(settings, body)


def test_outside_the_middleware_it_decodes_the_session_cookie(settings: Settings) -> None:
    cookies: dict[str, str] = {}

    async def landing(c: Client) -> None:
        await c.get("/?click_id=OUTSIDE-1&pixel_id=43")
        cookies["raw"] = c.cookies[settings.cookie_name]

    run(_app(settings, Inspector(settings)), landing)
    raw = cookies["raw"]

    async def body(c: Client) -> None:
        c.cookies.set(settings.cookie_name, raw)
        data = (await c.get("/api/attribution")).json()
        assert data["source"] == "session cookie"
        assert data["attribution"]["touches"]["kwai"]["click_id"] == "OUTSIDE-1"
        c.cookies.set(settings.cookie_name, raw[:-4] + ("AAAA" if raw[-4:] != "AAAA" else "BBBB"))
        assert (await c.get("/api/attribution")).json()["attribution"] is None
        assert (await c.get("/")).status_code == 200

    run(Inspector(settings, enabled=True), body)


def test_an_outbox_that_fails_is_shown_not_raised(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(settings, Inspector(settings, enabled=True))
    runtime = Runtime.for_settings(settings)

    def broken(limit: int = 100) -> list[DeliveryView]:
        raise OutboxError("store is down")

    monkeypatch.setattr(runtime.outbox, "recent", broken)

    async def body(c: Client) -> None:
        api = await c.get("/_tracking/api/deliveries")
        assert api.status_code == 200
        assert api.json()["error"] == "cannot read the outbox: OutboxError"
        page = await c.get("/_tracking/")
        assert page.status_code == 200 and "cannot read the outbox" in page.text

    run(app, body)


def test_a_slow_outbox_does_not_hold_other_requests(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Redis that hangs answers after the client's timeout; meanwhile the site's own pages
    # must be served: the inspector reads the outbox off the event loop.
    import threading

    app = _app(settings, Inspector(settings, enabled=True))
    runtime = Runtime.for_settings(settings)
    release = threading.Event()
    entered = threading.Event()

    def hung(limit: int = 100) -> list[DeliveryView]:
        entered.set()
        release.wait(10)
        raise OutboxError("timed out")

    monkeypatch.setattr(runtime.outbox, "recent", hung)
    order: list[str] = []

    async def body(c: Client) -> None:
        async def inspector(path: str) -> None:
            r = await c.get(path)
            assert r.status_code == 200 and "cannot read the outbox" in r.text
            order.append(path)

        for path in ("/_tracking/api/deliveries", "/_tracking/partial", "/_tracking/"):
            entered.clear()
            release.clear()
            waiting = asyncio.create_task(inspector(path))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            # The inspector's request is stuck in the outbox; the home page still answers.
            assert (await c.get("/")).status_code == 200
            order.append("home")
            release.set()
            await waiting
        assert order == [
            "home",
            "/_tracking/api/deliveries",
            "home",
            "/_tracking/partial",
            "home",
            "/_tracking/",
        ]

    run(app, body)
