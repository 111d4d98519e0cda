"""Django behind the middlewares, as the README shows it, with sync and async views.

``application = TrackingMiddleware(get_asgi_application())`` and
``application = TrackingWSGIMiddleware(get_wsgi_application())`` around the project in
tests/django_site.py: in process through httpx's ASGI and WSGI transports, and on a real
uvicorn server in a child process delivering to the fake platforms over loopback.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.asgi import get_asgi_application

from tests._clients import CHROME, asgi_client, tmw_cookies, wsgi_client
from tests._servers import Child, free_port, serve_in_thread, uvicorn_argv, wait_listening
from tests._settings import quiet_settings
from tests.django_site import asgi_app, wsgi_app
from tracking_mw import Attribution, KwaiConfig, RoktConfig, Secret, Settings, Touch
from tracking_mw._runtime import Runtime
from tracking_mw.testing import DEMO_KWAI_TOKEN, FakePlatforms

ROOT = str(Path(__file__).resolve().parents[1])
KEY = "d" * 32
CLICK = "DJ-CLICK-1"
PIXEL = "777001"
LANDING = f"/?click_id={CLICK}&pixel_id={PIXEL}&utm_source=kwai"
PEER = "198.51.100.9"


def make_settings(**kw: Any) -> Settings:
    return quiet_settings(KEY, **kw)


def kwai_settings() -> Settings:
    """Kwai configured for PIXEL, Rokt configured (it needs an email), Bigo and ROIBest on."""
    return make_settings(
        kwai=KwaiConfig(access_tokens={PIXEL: Secret("kwai-token")}),
        rokt=RoktConfig(api_key=Secret("rokt-key"), api_secret=Secret("rokt-secret")),
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> Iterator[Settings]:
    s = make_settings()
    yield s
    Runtime.for_settings(s).close()


@pytest.fixture
def track_settings() -> Iterator[Settings]:
    s = kwai_settings()
    yield s
    Runtime.for_settings(s).close()


def check_landing(r: httpx.Response) -> str:
    """The landing answered and set the signed cookie; returns the cookie's value."""
    assert r.status_code == 200
    assert r.json() == {"page": "/"}
    cookies = tmw_cookies(r)
    assert len(cookies) == 1
    assert "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0]
    value = r.cookies["_tmw"]
    assert CLICK in value  # the payload is readable text; the signature guards it
    return value


def check_attribution(r: httpx.Response, kind: str) -> dict[str, Any]:
    """A later page's view saw the landing's Kwai touch; returns the attribution."""
    assert r.status_code == 200
    assert tmw_cookies(r) == []  # nothing changed: no cookie re-sent
    body = r.json()
    assert body["view"] == kind
    a = body["attribution"]
    assert a is not None, f"the {kind} view saw no attribution"
    kwai = a["touches"]["kwai"]
    assert kwai["click_id"] == CLICK
    assert kwai["pixel_id"] == PIXEL
    assert kwai["utm"] == {"utm_source": "kwai"}
    assert kwai["landing_url"] == f"http://shop.test{LANDING}"
    assert a["client"]["ip"] == PEER
    assert a["client"]["user_agent"] == CHROME
    assert a["client"]["url"] == f"http://shop.test/attribution/{kind}"
    return dict(a)


def tampered(value: str) -> str:
    """The cookie with its click id rewritten: same length, same shape, bad signature."""
    bad = value.replace(CLICK, "DJ-CLICK-2")
    assert bad != value
    return bad


def check_fresh(r: httpx.Response, kind: str, old_visitor: str) -> None:
    assert r.status_code == 200
    body = r.json()
    assert body["view"] == kind
    a = body["attribution"]
    assert a is not None
    assert a["visitor_id"] != old_visitor
    assert a["touches"] == {}


# -- 1. ASGI in process ---------------------------------------------------------------


@pytest.mark.anyio
async def test_asgi_sync_and_async_views_see_the_landing(settings: Settings) -> None:
    app = asgi_app(settings)
    async with asgi_client(app, peer=PEER) as c:
        value = check_landing(await c.get(LANDING))
        r = await c.get("/attribution/sync")
        sync = check_attribution(r, "sync")
        # Django runs a sync view in a worker thread under ASGI: the context crossed over.
        assert r.json()["main_thread"] is False
        r = await c.get("/attribution/async")
        assert check_attribution(r, "async")["visitor_id"] == sync["visitor_id"]
        assert r.json()["main_thread"] is True
    async with asgi_client(app, peer=PEER, cookies={"_tmw": tampered(value)}) as c:
        check_fresh(await c.get("/attribution/sync"), "sync", sync["visitor_id"])
        check_fresh(await c.get("/attribution/async"), "async", sync["visitor_id"])
    # Without the middleware the same views see no attribution.
    async with asgi_client(get_asgi_application(), peer=PEER) as c:
        assert (await c.get("/attribution/async")).json()["attribution"] is None


@pytest.mark.anyio
async def test_asgi_lifespan_is_answered_for_django(settings: Settings) -> None:
    """Django refuses lifespan scopes; the middleware answers them and runs its runtime."""
    app = asgi_app(settings)
    runtime = Runtime.for_settings(settings)
    inbox: list[MutableMapping[str, Any]] = [
        {"type": "lifespan.startup"},
        {"type": "lifespan.shutdown"},
    ]
    sent: list[MutableMapping[str, Any]] = []
    seen_started: list[bool] = []

    async def receive() -> MutableMapping[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        seen_started.append(runtime.started)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert seen_started == [True, False]


# -- 2. WSGI in process ---------------------------------------------------------------


def test_wsgi_sync_and_async_views_see_the_landing(settings: Settings) -> None:
    app = wsgi_app(settings)
    with wsgi_client(app, peer=PEER) as c:
        value = check_landing(c.get(LANDING))
        sync = check_attribution(c.get("/attribution/sync"), "sync")
        # Under WSGI Django runs an async view on an event loop of its own.
        r = c.get("/attribution/async")
        assert check_attribution(r, "async")["visitor_id"] == sync["visitor_id"]
    with wsgi_client(app, peer=PEER, cookies={"_tmw": tampered(value)}) as c:
        check_fresh(c.get("/attribution/sync"), "sync", sync["visitor_id"])
        check_fresh(c.get("/attribution/async"), "async", sync["visitor_id"])


# -- 3. track() from Django views -----------------------------------------------------


def check_receipt(r: httpx.Response, kind: str, event_id: str) -> None:
    assert r.status_code == 200
    body = r.json()
    assert body["view"] == kind and body["event_id"] == event_id
    assert body["error"] is None and body["duplicate"] is False
    assert body["queued"] == ["kwai"]
    skipped = body["skipped"]
    assert set(skipped) == {"bigo", "roibest", "rokt"}
    assert "bbg" in skipped["bigo"]
    assert "link id" in skipped["roibest"]
    assert "email" in skipped["rokt"]


def check_no_click(r: httpx.Response) -> None:
    """A visitor who never came from an ad: Kwai is skipped, and the receipt says why."""
    assert r.status_code == 200
    body = r.json()
    assert body["queued"] == [] and body["error"] is None
    assert set(body["skipped"]) == {"kwai", "bigo", "roibest", "rokt"}
    assert "click id" in body["skipped"]["kwai"]


def check_outbox(settings: Settings, event_ids: set[str]) -> None:
    """One Kwai record per event, carrying the landing's click id and pixel id."""
    views = Runtime.for_settings(settings).outbox.recent()
    kwai = {v.event_id: v for v in views if v.platform == "kwai"}
    assert set(kwai) == event_ids
    assert {v.platform for v in views} == {"kwai"}
    for v in kwai.values():
        assert v.event_name == "Lead" and v.status == "pending"
        assert v.item["clickid"] == CLICK
        assert v.item["pixelId"] == PIXEL
        assert v.item["event_name"] == "EVENT_FORM_SUBMIT"


@pytest.mark.anyio
async def test_asgi_track_from_sync_and_async_views(track_settings: Settings) -> None:
    app = asgi_app(track_settings)
    async with asgi_client(app, peer=PEER) as c:
        check_landing(await c.get(LANDING))
        check_receipt(await c.get("/lead/sync?event_id=asgi-sync"), "sync", "asgi-sync")
        check_receipt(await c.get("/lead/async?event_id=asgi-async"), "async", "asgi-async")
        again = (await c.get("/lead/async?event_id=asgi-sync")).json()
        assert again["duplicate"] is True and again["queued"] == []
    async with asgi_client(app, peer=PEER) as c:
        check_no_click(await c.get("/lead/sync"))
        check_no_click(await c.get("/lead/async"))
    check_outbox(track_settings, {"asgi-sync", "asgi-async"})


def test_wsgi_track_from_sync_and_async_views(track_settings: Settings) -> None:
    app = wsgi_app(track_settings)
    with wsgi_client(app, peer=PEER) as c:
        check_landing(c.get(LANDING))
        check_receipt(c.get("/lead/sync?event_id=wsgi-sync"), "sync", "wsgi-sync")
        check_receipt(c.get("/lead/async?event_id=wsgi-async"), "async", "wsgi-async")
    with wsgi_client(app, peer=PEER) as c:
        check_no_click(c.get("/lead/sync"))
        check_no_click(c.get("/lead/async"))
    check_outbox(track_settings, {"wsgi-sync", "wsgi-async"})


# -- 4. A real uvicorn server in a child process ---------------------------------------


def seed_lead(env: dict[str, str], click_id: str) -> None:
    """Queue a Lead into the outbox ``env`` names, from this process (no dispatcher here)."""
    rt = Runtime(Settings.from_env(environ=env, start_dispatcher=False))
    try:
        touch = Touch(platform="kwai", click_id=click_id, pixel_id=PIXEL)
        attribution = Attribution(visitor_id="seeded-visitor").with_touch(touch)
        receipt = rt.tracker.track("Lead", event_id="seeded-lead", attribution=attribution)
        assert receipt.queued == ("kwai",) and receipt.ok
    finally:
        rt.close()


def test_uvicorn_child_delivers_a_django_view_track_to_kwai(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TRACKING_"):
            monkeypatch.delenv(name)
    fake = FakePlatforms()
    with serve_in_thread(fake.app) as base:
        env = {
            "TRACKING_SECRET_KEY": KEY,
            "TRACKING_COOKIE_SECURE": "false",
            "TRACKING_OUTBOX": f"sqlite:///{tmp_path / 'outbox.sqlite3'}",
            "TRACKING_KWAI_ACCESS_TOKENS": f"{PIXEL}:{DEMO_KWAI_TOKEN}",
            "TRACKING_KWAI_BASE_URL": f"{base}/kwai",
            "TRACKING_BIGO_ENABLED": "false",
            "TRACKING_ROIBEST_ENABLED": "false",
        }
        seed_lead(env, "SEEDED-CLICK")
        port = free_port()
        # uvicorn's default lifespan ("auto"): Django raises on the lifespan scope.
        argv = uvicorn_argv("tests.django_site:application_from_env", port, "--factory")
        child = Child(argv, env=env, cwd=ROOT)
        try:
            wait_listening(port, child.proc)
            # Delivered before any HTTP request reached the server: the lifespan startup,
            # answered by the middleware for Django, started the dispatcher.
            seeded = fake.wait_for_events("kwai", 1, timeout=15)
            assert [e["clickid"] for e in seeded] == ["SEEDED-CLICK"]
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"user-agent": CHROME}, timeout=10
            ) as c:
                r = c.get(LANDING)
                assert r.status_code == 200 and len(tmw_cookies(r)) == 1
                r = c.get("/attribution/sync")
                assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == CLICK
                r = c.get("/lead/sync?event_id=served-lead")
                assert r.status_code == 200
                assert r.json()["queued"] == ["kwai"] and r.json()["error"] is None
            events = fake.wait_for_events("kwai", 2, timeout=15)
        finally:
            code, stderr = child.stop_and_read()
    # uvicorn exits 0 or, after a graceful shutdown, re-raises the SIGTERM it caught.
    assert code in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert [e["clickid"] for e in events] == ["SEEDED-CLICK", CLICK]
    served = events[1]
    assert served["pixelId"] == PIXEL
    assert served["event_name"] == "EVENT_FORM_SUBMIT"
    assert served["access_token"] == DEMO_KWAI_TOKEN
    assert all(r.accepted for r in fake.received("kwai"))
