"""TrackingMiddleware through httpx.ASGITransport around a Starlette app."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import tracking_mw._setup as setup_mod
from tests._clients import CHROME, asgi_client, tmw_cookies
from tests._settings import quiet_settings
from tests.test_core import count_decodes
from tracking_mw._context import _state, current_attribution, current_state
from tracking_mw._errors import ConfigurationError
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.config import MetaConfig, Settings
from tracking_mw.session import SessionCodec

pytestmark = pytest.mark.anyio

KEY = "s" * 32
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def make_settings(**kw: Any) -> Settings:
    return quiet_settings(KEY, **kw)


def snapshot() -> dict[str, Any]:
    st = current_state()
    a = current_attribution()
    return {
        "state": st is not None,
        "consent": st.consent if st is not None else None,
        "runtime": st is not None and st.runtime is not None,
        "attribution": a.to_dict() if a is not None else None,
    }


async def page(request: Request) -> Response:
    return JSONResponse(snapshot(), headers={"x-app": "kept", "set-cookie": "app=1; Path=/"})


def sync_page(request: Request) -> Response:
    # Starlette runs sync views in a worker thread with the context copied.
    assert threading.current_thread() is not threading.main_thread()
    return JSONResponse(snapshot())


async def stream(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            a = current_attribution()
            yield f"{i}:{a.click_id('kwai') if a else None};".encode()
            await asyncio.sleep(0)

    return StreamingResponse(body())


async def boom(request: Request) -> Response:
    raise RuntimeError("app failure")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", page),
            Route("/sync", sync_page),
            Route("/stream", stream),
            Route("/boom", boom),
            Route("/text", lambda r: PlainTextResponse("hi")),
        ]
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def mw(settings: Settings) -> TrackingMiddleware:
    return TrackingMiddleware(starlette_app(), settings)


async def test_landing_captures_and_sets_cookie(mw: TrackingMiddleware) -> None:
    async with asgi_client(mw) as c:
        r = await c.get(
            "/?click_id=AbC%2B1-x&pixel_id=777&utm_source=kwai&utm_campaign=c1",
            headers={"referer": "https://kwai.example/feed"},
        )
    assert r.status_code == 200
    body = r.json()
    assert body["consent"] is True and body["runtime"] is True
    kwai = body["attribution"]["touches"]["kwai"]
    assert kwai["click_id"] == "AbC+1-x"  # URL-decoded once, otherwise unchanged
    assert kwai["pixel_id"] == "777"
    assert kwai["utm"] == {"utm_source": "kwai", "utm_campaign": "c1"}
    assert kwai["landing_url"].startswith("http://shop.test/?click_id=AbC%2B1-x")
    client = body["attribution"]["client"]
    assert client == {
        "ip": "198.51.100.7",
        "user_agent": CHROME,
        "url": "http://shop.test/?click_id=AbC%2B1-x&pixel_id=777&utm_source=kwai&utm_campaign=c1",
        "referrer": "https://kwai.example/feed",
    }
    cookies = tmw_cookies(r)
    assert len(cookies) == 1
    assert "; Path=/" in cookies[0] and "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0]
    assert "Secure" not in cookies[0]
    # The app's own headers are untouched, its cookie included.
    assert r.headers["x-app"] == "kept"
    assert "app=1; Path=/" in r.headers.get_list("set-cookie")


async def test_later_requests_keep_attribution_without_set_cookie(
    mw: TrackingMiddleware,
) -> None:
    async with asgi_client(mw) as c:
        r1 = await c.get("/?click_id=K1&pixel_id=P1")
        vid = r1.json()["attribution"]["visitor_id"]
        for path in ("/products", "/", "/sync"):
            r = await c.get(path)
            assert r.status_code in (200, 404)
            assert tmw_cookies(r) == []
        r = await c.get("/")
        assert r.json()["attribution"]["visitor_id"] == vid
        assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"
        r = await c.get("/sync")
        assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"


async def test_newer_click_replaces_older_others_stay(mw: TrackingMiddleware) -> None:
    async with asgi_client(mw) as c:
        await c.get("/?click_id=K1&pixel_id=P1")
        await c.get("/?rtid=" + "r" * 32)
        r = await c.get("/?click_id=K2&pixel_id=P2")
        assert len(tmw_cookies(r)) == 1
        touches = r.json()["attribution"]["touches"]
        assert touches["kwai"]["click_id"] == "K2" and touches["kwai"]["pixel_id"] == "P2"
        assert touches["rokt"]["click_id"] == "r" * 32
        # Same click again within the hour: nothing to write.
        r = await c.get("/?click_id=K2&pixel_id=P2")
        assert tmw_cookies(r) == []


async def test_every_platform_and_cookies(mw: TrackingMiddleware) -> None:
    bbg = "B" * 220
    async with asgi_client(mw) as c:
        c.cookies.set("_bge_ci", "ci-1", domain="shop.test")
        c.cookies.set("_ttp", "ttp-1", domain="shop.test")
        r = await c.get(
            f"/?bbg={bbg}&pixel_id=BP&fbclid=IwAR_AbC&rtid={'r' * 32}&link_id=L1&ttclid=TT1"
        )
    t = r.json()["attribution"]["touches"]
    assert t["bigo"]["click_id"] == bbg and t["bigo"]["pixel_id"] == "BP"
    assert t["bigo"]["extra"] == {"cookie_id": "ci-1"}
    assert t["meta"]["click_id"] == "IwAR_AbC"
    assert t["meta"]["extra"]["fbc"].endswith(".IwAR_AbC")
    assert t["rokt"]["click_id"] == "r" * 32
    assert t["roibest"]["click_id"] == "L1"
    assert t["tiktok"] == {**t["tiktok"], "click_id": "TT1", "extra": {"ttp": "ttp-1"}}


async def test_meta_cookies_written_then_stable() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw) as c:
        r = await c.get("/?fbclid=IwAR1aB")
        sc = r.headers.get_list("set-cookie")
        fbc = next(x for x in sc if x.startswith("_fbc="))
        fbp = next(x for x in sc if x.startswith("_fbp="))
        assert "HttpOnly" not in fbc and "Max-Age=7776000" in fbc and "Path=/" in fbc
        fbc_value = fbc.split(";")[0].split("=", 1)[1]
        fbp_value = fbp.split(";")[0].split("=", 1)[1]
        parts = fbc_value.split(".")
        assert parts[:2] == ["fb", "1"] and len(parts[2]) == 13 and parts[3] == "IwAR1aB"
        fparts = fbp_value.split(".")
        assert fparts[:2] == ["fb", "1"] and 0 <= int(fparts[3]) <= 2147483647
        extra = r.json()["attribution"]["touches"]["meta"]["extra"]
        assert extra == {"fbc": fbc_value, "fbp": fbp_value}
        # Next page: the browser sends them back, nothing is rewritten.
        r = await c.get("/")
        assert r.headers.get_list("set-cookie") == ["app=1; Path=/"]
        # The browser lost _fbp: the stored one is written back, not a new one.
        c.cookies.delete("_fbp")
        r = await c.get("/")
        assert any(x.startswith(f"_fbp={fbp_value};") for x in r.headers.get_list("set-cookie"))


async def test_existing_meta_cookies_preferred() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw) as c:
        c.cookies.set("_fbc", "fb.1.1700000000000.IwAR1", domain="shop.test")
        c.cookies.set("_fbp", "fb.1.1700000000000.99", domain="shop.test")
        r = await c.get("/?fbclid=IwAR1")
        assert [x for x in r.headers.get_list("set-cookie") if x.startswith("_fb")] == []
        extra = r.json()["attribution"]["touches"]["meta"]["extra"]
        assert extra == {"fbc": "fb.1.1700000000000.IwAR1", "fbp": "fb.1.1700000000000.99"}
        # A click on another ad: a new fbc replaces the cookie holding the old fbclid.
        r = await c.get("/?fbclid=IwAR2")
        new = [x for x in r.headers.get_list("set-cookie") if x.startswith("_fbc=")]
        assert len(new) == 1 and new[0].split(";")[0].endswith(".IwAR2")


async def test_fbp_only_when_meta_configured_or_fbclid() -> None:
    plain = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(plain) as c:
        r = await c.get("/")
        assert r.headers.get_list("set-cookie") == ["app=1; Path=/"]
    meta = MetaConfig(pixel_id="1", access_token="tok")
    with_meta = TrackingMiddleware(starlette_app(), make_settings(meta=meta))
    async with asgi_client(with_meta) as c:
        r = await c.get("/")
        names = [x.split("=")[0] for x in r.headers.get_list("set-cookie")]
        assert "_fbp" in names and "_tmw" in names and "_fbc" not in names
        r = await c.get("/")
        assert r.headers.get_list("set-cookie") == ["app=1; Path=/"]


async def test_write_meta_cookies_off() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings(write_meta_cookies=False))
    async with asgi_client(mw) as c:
        r = await c.get("/?fbclid=IwAR1")
    names = [x.split("=")[0] for x in r.headers.get_list("set-cookie")]
    assert "_fbc" not in names and "_fbp" not in names and "_tmw" in names
    assert r.json()["attribution"]["touches"]["meta"]["extra"]["fbc"].endswith(".IwAR1")


async def test_unsafe_fbclid_never_reaches_a_header() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw) as c:
        r = await c.get("/?fbclid=a%3Bb%2Cc%20d")
    assert r.status_code == 200
    assert not any(x.startswith("_fbc=") for x in r.headers.get_list("set-cookie"))
    # Not an fbclid at all (no fbc could be built from it): not captured.
    assert "meta" not in r.json()["attribution"]["touches"]
    for value in r.headers.get_list("set-cookie"):
        assert "\r" not in value and "\n" not in value


@pytest.mark.parametrize("answer", ["no", "raise"])
async def test_consent_refused(answer: str, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def consent(scope: Any) -> bool:
        seen.append(scope["path"])
        if answer == "raise":
            raise RuntimeError("cmp down")
        return False

    mw = TrackingMiddleware(starlette_app(), make_settings(consent=consent))
    async with asgi_client(mw) as c:
        with caplog.at_level(logging.WARNING, logger="tracking_mw"):
            r = await c.get("/?click_id=K1&fbclid=IwAR1")
            r2 = await c.get("/?click_id=K1")
    assert seen == ["/", "/"]
    assert r.json() == {"state": True, "consent": False, "runtime": True, "attribution": None}
    assert r.headers.get_list("set-cookie") == ["app=1; Path=/"]
    assert r2.headers.get_list("set-cookie") == ["app=1; Path=/"]
    if answer == "raise":
        msgs = [rec.getMessage() for rec in caplog.records if "consent" in rec.getMessage()]
        assert len(msgs) <= 1 and all("K1" not in m for m in msgs)


async def test_consent_given() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings(consent=lambda scope: True))
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1")
    assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"


async def test_bots_not_captured_unless_configured() -> None:
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw, ua=GOOGLEBOT) as c:
        r = await c.get("/?click_id=K1&fbclid=IwAR1")
    assert r.json()["attribution"]["touches"] == {}
    assert r.headers.get_list("set-cookie") == ["app=1; Path=/"]
    mw = TrackingMiddleware(starlette_app(), make_settings(capture_bots=True))
    async with asgi_client(mw, ua=GOOGLEBOT) as c:
        r = await c.get("/?click_id=K1")
    assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"


async def test_bad_cookies_give_a_fresh_session(mw: TrackingMiddleware) -> None:
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1")
        good = r.cookies["_tmw"]
    for bad in (good[:-5] + "AAAAA", good[:20], "%%%", "x" * 5000, '"' + good):
        async with asgi_client(mw, cookies={"_tmw": bad}) as c:
            r = await c.get("/?click_id=K2")
            assert r.status_code == 200
            t = r.json()["attribution"]["touches"]
            assert set(t) == {"kwai"} and t["kwai"]["click_id"] == "K2"


async def test_trusted_proxy_headers() -> None:
    s = make_settings(trusted_proxies=["10.0.0.0/8"])
    mw = TrackingMiddleware(starlette_app(), s)
    async with asgi_client(mw, peer="10.1.2.3") as c:
        r = await c.get(
            "/", headers=[("x-forwarded-for", "6.6.6.6, 1.1.1.1"), ("x-forwarded-for", "10.0.0.9")]
        )  # type: ignore[arg-type]
        assert r.json()["attribution"]["client"]["ip"] == "1.1.1.1"
    async with asgi_client(mw, peer="203.0.113.1") as c:
        r = await c.get("/", headers={"x-forwarded-for": "1.1.1.1"})
        assert r.json()["attribution"]["client"]["ip"] == "203.0.113.1"


async def test_streaming_and_context_reset(mw: TrackingMiddleware) -> None:
    async with asgi_client(mw) as c:
        r = await c.get("/stream?click_id=S1")
    assert r.text == "0:S1;1:S1;2:S1;"
    assert _state.get() is None


async def test_app_exception_propagates_and_state_resets(mw: TrackingMiddleware) -> None:
    transport = httpx.ASGITransport(app=mw, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with pytest.raises(RuntimeError, match="app failure"):
            await c.get("/boom?click_id=K1")
    assert _state.get() is None


async def test_internal_error_does_not_break_the_app(
    mw: TrackingMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise ValueError("bug")

    monkeypatch.setattr(mw._core, "process", broken)
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1")
    assert r.status_code == 200 and r.json()["state"] is False


async def test_cookie_domain_and_secure() -> None:
    mw = TrackingMiddleware(
        starlette_app(), make_settings(cookie_secure=True, cookie_domain=".shop.test")
    )
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1&fbclid=F1")
    for value in r.headers.get_list("set-cookie"):
        if value.startswith(("_tmw=", "_fbc=", "_fbp=")):
            assert "; Domain=.shop.test" in value and "; Secure" in value


async def test_roibest_param_setting() -> None:
    from tracking_mw.config import RoibestConfig

    mw = TrackingMiddleware(starlette_app(), make_settings(roibest=RoibestConfig(link_param="rb")))
    async with asgi_client(mw) as c:
        r = await c.get("/?rb=L7&link_id=nope")
    assert r.json()["attribution"]["touches"]["roibest"]["click_id"] == "L7"
    mw = TrackingMiddleware(starlette_app(), make_settings(roibest=None))
    async with asgi_client(mw) as c:
        r = await c.get("/?link_id=L1")
    assert r.json()["attribution"]["touches"] == {}


def test_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_settings()
    mw = TrackingMiddleware(starlette_app(), s, cookie_name="other")
    assert mw.settings.cookie_name == "other" and s.cookie_name == "_tmw"
    monkeypatch.delenv("TRACKING_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TRACKING_SECRET_KEY"):
        TrackingMiddleware(starlette_app())
    monkeypatch.setenv("TRACKING_SECRET_KEY", KEY)
    from_env = TrackingMiddleware(starlette_app(), outbox="memory://", start_dispatcher=False)
    assert from_env.settings.secret_key == s.secret_key
    assert from_env.settings.outbox == "memory://"


def test_an_outbox_that_cannot_be_opened_is_logged_at_startup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Starlette builds declared middleware inside the lifespan call, whose exceptions
    # uvicorn's default lifespan mode does not show: the log line is all the operator sees.
    from tracking_mw._errors import OutboxError

    with caplog.at_level(logging.ERROR, logger="tracking_mw"), pytest.raises(OutboxError):
        TrackingMiddleware(starlette_app(), make_settings(outbox="sqlite:////proc/x.sqlite3"))
    assert any("cannot" in r.getMessage() and "outbox" in r.getMessage() for r in caplog.records)


# -- protocol details ------------------------------------------------------------------------


class FakeRuntime:
    """Records startup/shutdown calls (the real one is tested by the delivery tests)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> FakeRuntime:
        return cls()

    async def startup(self, on_stop: Any = None) -> None:
        self.calls.append("startup")

    async def shutdown(self) -> None:
        self.calls.append("shutdown")

    def ensure_thread_dispatcher(self) -> None:
        self.calls.append("thread")


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


async def test_lifespan_starts_and_stops_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_mod, "Runtime", FakeRuntime)
    events: list[str] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append(f"app-start:{list(rt.calls)}")
        yield
        events.append(f"app-stop:{list(rt.calls)}")

    mw = TrackingMiddleware(Starlette(lifespan=lifespan), make_settings())
    rt: Any = mw._runtime
    sent = await run_lifespan(mw)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["app-start:['startup']", "app-stop:['startup']"]
    assert rt.calls == ["startup", "shutdown"]
    # Shut down: a request after it (a client without lifespan) starts it again, once.
    async with asgi_client(mw) as c:
        await c.get("/")
        await c.get("/")
    assert rt.calls == ["startup", "shutdown", "startup"]


@pytest.mark.parametrize("kind", ["raises", "returns"])
async def test_lifespan_when_app_ignores_it(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_mod, "Runtime", FakeRuntime)

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if kind == "raises":
                raise RuntimeError("only http")
            return
        await PlainTextResponse("ok")(scope, receive, send)

    mw = TrackingMiddleware(http_only, make_settings())
    sent = await run_lifespan(mw)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert mw._runtime.calls == ["startup", "shutdown"]  # type: ignore[attr-defined]


async def test_runtime_started_on_first_request_without_lifespan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(setup_mod, "Runtime", FakeRuntime)
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw) as c:
        await c.get("/")
        await c.get("/")
    assert mw._runtime.calls == ["startup"]  # type: ignore[attr-defined]


async def test_non_http_scopes_pass_through(mw: TrackingMiddleware) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], _state.get()))

    wrapped = TrackingMiddleware(app, make_settings())
    await wrapped({"type": "websocket", "path": "/ws", "headers": []}, _never, _ignore)
    assert seen == [("websocket", None)]


def get_p(headers: list[tuple[bytes, Any]]) -> dict[str, Any]:
    """The scope of ``GET /p`` with ``headers``, for calling the middleware directly."""
    return {
        "type": "http",
        "method": "GET",
        "path": "/p",
        "raw_path": b"/p",
        "query_string": b"",
        "headers": headers,
    }


async def _never() -> dict[str, Any]:
    raise AssertionError("not called")


async def _ignore(message: Any) -> None:
    return None


async def test_raw_scope_minimal_fields(mw: TrackingMiddleware) -> None:
    """A scope with only the required keys (no client, no server, no headers) still works."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/text", "query_string": b"click_id=Z"}
    await mw(scope, receive, send)
    assert sent[0]["status"] == 200
    names = [k for k, _ in sent[0]["headers"]]
    assert b"set-cookie" in names


async def test_codec_reads_what_middleware_writes(settings: Settings) -> None:
    mw = TrackingMiddleware(starlette_app(), settings)
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1")
        value = str(r.cookies["_tmw"])
    a = SessionCodec(settings).decode(value)
    assert a is not None and a.click_id("kwai") == "K1"


async def test_oversize_attribution_sheds_oldest_touch(caplog: pytest.LogCaptureFixture) -> None:
    import random
    import string

    def rnd(n: int, seed: int) -> str:
        r = random.Random(seed)
        return "".join(r.choice(string.ascii_letters + string.digits) for _ in range(n))

    mw = TrackingMiddleware(starlette_app(), make_settings(write_meta_cookies=False))
    async with asgi_client(mw) as c:
        # Each landing adds one platform with a long, incompressible id.
        for i, q in enumerate(
            [
                f"click_id={rnd(500, 1)}",
                f"bbg={rnd(1000, 2)}",
                f"fbclid={rnd(500, 3)}",
                f"rtid={rnd(500, 4)}",
                f"link_id={rnd(500, 5)}",
                f"ttclid={rnd(500, 6)}",
            ]
        ):
            with caplog.at_level(logging.WARNING, logger="tracking_mw"):
                utm = f"utm_content={rnd(250, 10 + i)}&utm_term={rnd(250, 20 + i)}"
                r = await c.get(f"/?{q}&{utm}")
            assert r.status_code == 200
            for value in tmw_cookies(r):
                assert len("Set-Cookie: ") + len(value) <= 4093
        touches = r.json()["attribution"]["touches"]
    assert "tiktok" in touches  # the newest survives
    assert "kwai" not in touches and len(touches) < 6  # the oldest were shed
    # What the app saw is what the cookie holds.
    stored = SessionCodec(mw.settings).decode(c.cookies["_tmw"])
    assert stored is not None and set(stored.touches) == set(touches)


async def test_key_rotation_through_the_middleware() -> None:
    old_key, new_key = "o" * 32, "n" * 32
    old = TrackingMiddleware(starlette_app(), make_settings(secret_key=[old_key]))
    async with asgi_client(old) as c:
        r = await c.get("/?click_id=K1")
        value = r.cookies["_tmw"]
    rotated = TrackingMiddleware(starlette_app(), make_settings(secret_key=[new_key, old_key]))
    async with asgi_client(rotated, cookies={"_tmw": value}) as c:
        r = await c.get("/")
        assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"
        r = await c.get("/?rtid=" + "r" * 32)  # a change: re-signed with the newest key
        value2 = r.cookies["_tmw"]
    only_new = TrackingMiddleware(starlette_app(), make_settings(secret_key=[new_key]))
    async with asgi_client(only_new, cookies={"_tmw": value2}) as c:
        r = await c.get("/")
        assert set(r.json()["attribution"]["touches"]) == {"kwai", "rokt"}


async def test_last_seen_refreshed_at_most_hourly(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracking_mw._core as core_mod

    clock = [1_800_000_000.0]
    monkeypatch.setattr(core_mod.time, "time", lambda: clock[0])
    mw = TrackingMiddleware(starlette_app(), make_settings())
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1")
        assert len(tmw_cookies(r)) == 1
        clock[0] += 1800
        r = await c.get("/?click_id=K1")
        assert tmw_cookies(r) == []
        clock[0] += 1800
        r = await c.get("/?click_id=K1")
        assert len(tmw_cookies(r)) == 1
        kwai = r.json()["attribution"]["touches"]["kwai"]
        assert kwai["first_seen"] == 1_800_000_000 and kwai["last_seen"] == 1_800_003_600


async def test_user_agent_cleaning_is_remembered_per_agent(mw: TrackingMiddleware) -> None:
    # The cleaned agent is cached per string: repeats must give the same answers as the first.
    odd = "Mozilla/5.0 \u00e9\x01bad"
    long = "Mozilla/5.0 " + "x" * 3000
    async with asgi_client(mw) as c:
        for _ in range(2):
            r = await c.get("/", headers={"user-agent": CHROME})
            assert r.json()["attribution"]["client"]["user_agent"] == CHROME
            r = await c.get("/", headers={"user-agent": odd.encode("latin-1")})
            assert "user_agent" not in r.json()["attribution"]["client"]
            r = await c.get("/", headers={"user-agent": long})
            got = r.json()["attribution"]["client"]["user_agent"]
            assert got == long[:1024]


async def test_remembered_later_requests_read_this_request_only() -> None:
    """A repeat page view answered from the Cookie header alone: the attribution still
    carries this request's client context, read as the request arrived."""

    async def changing(scope: Any, receive: Any, send: Any) -> None:
        # An app that rewrites its scope before the view asks for the attribution.
        scope["headers"] = [(b"user-agent", b"rewritten")]
        scope["client"] = ("192.0.2.99", 1)
        scope["path"], scope["raw_path"] = "/elsewhere", b"/elsewhere"
        a = current_attribution()
        body = (a.client.user_agent or "") + "|" + (a.client.ip or "") + "|" + (a.client.url or "")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    mw = TrackingMiddleware(changing, make_settings())
    seen = mw._core._quiet
    async with asgi_client(mw) as c:
        await c.get("/?click_id=K1&pixel_id=P1")
        first = await c.get("/a")  # decoded, then remembered
        assert len(seen) == 1
        for peer_ua in ("agent-2", "agent-3"):
            r = await c.get("/b", headers={"user-agent": peer_ua})
            assert r.status_code == 200 and tmw_cookies(r) == []
            assert r.text == f"{peer_ua}|198.51.100.7|http://shop.test/b"
        assert first.text == f"{CHROME}|198.51.100.7|http://shop.test/a"


async def test_remembered_state_is_made_once_per_context(mw: TrackingMiddleware) -> None:
    """A remembered page view hands the app its state unmade; the first reader in a context
    makes it. A view asking twice gets one attribution; a worker thread with a copy of the
    context gets an equal one; the state is gone after the request."""
    seen: list[Any] = []

    async def view(scope: Any, receive: Any, send: Any) -> None:
        first, again = current_attribution(), current_attribution()
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        threaded = await loop.run_in_executor(None, ctx.run, current_attribution)
        seen.append((first, again, threaded, current_attribution(), current_state()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with asgi_client(mw) as c:
        await c.get("/?click_id=K1&pixel_id=P1")
        mw.app = view
        await c.get("/a")  # decoded, then remembered
        await c.get("/b")  # answered from memory
    assert len(mw._core._quiet) == 1 and len(seen) == 2
    for first, again, threaded, after, state in seen:
        assert first is not None and first.click_id("kwai") == "K1"
        assert again is first and after is first and state.attribution is first
        assert threaded == first
    assert seen[1][0].client.url == "http://shop.test/b"
    assert _state.get() is None


async def test_split_cookie_headers_are_remembered_joined(mw: TrackingMiddleware) -> None:
    """HTTP/2 may split the Cookie header: a repeat view whose cookies come in two headers
    is remembered by the joined header and answered from memory like any other."""
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1&pixel_id=P1")
        tmw = "_tmw=" + str(r.cookies["_tmw"])
    seen: list[str | None] = []

    async def view(scope: Any, receive: Any, send: Any) -> None:
        a = current_attribution()
        seen.append(a.click_id("kwai") if a is not None else None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw.app = view
    scope = get_p([(b"cookie", b"a=1"), (b"host", b"shop.test"), (b"cookie", tmw.encode())])
    await mw(dict(scope), _never, _ignore)
    assert list(mw._core._quiet) == [b"a=1; " + tmw.encode()]
    decoded = count_decodes(mw._core)
    for _ in range(2):
        await mw(dict(scope), _never, _ignore)
    assert seen == ["K1"] * 3 and decoded == []  # answered from memory


async def test_consent_hook_sees_every_repeat_request() -> None:
    calls: list[str] = []

    def consent(scope: Any) -> bool:
        calls.append(scope["path"])
        return True

    mw = TrackingMiddleware(starlette_app(), make_settings(consent=consent))
    async with asgi_client(mw) as c:
        await c.get("/?click_id=K1&pixel_id=P1")
        for _ in range(3):
            r = await c.get("/")
            assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"
    assert calls == ["/"] * 4


def test_a_second_lifespan_starts_delivery_again() -> None:
    """An app used by two test clients in turn (two lifespans, each on an event loop of its
    own): each lifespan delivers what was tracked in it. Real dispatcher, real HTTP to the
    fake platforms."""
    from tests._servers import serve_in_thread
    from tracking_mw import DeliveryConfig, track
    from tracking_mw.testing import FakePlatforms

    fake = FakePlatforms()

    async def lead(request: Request) -> Response:
        receipt = track("Lead", event_id=request.query_params["e"])
        return JSONResponse({"queued": list(receipt.queued)})

    async def one_lifespan(app: TrackingMiddleware, event: str, delivered: int) -> None:
        started, stop = asyncio.Event(), asyncio.Event()
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            if len(incoming) == 1:
                await stop.wait()
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        lifespan = asyncio.create_task(app(scope, receive, send))
        await started.wait()
        async with asgi_client(app) as c:
            await c.get("/?click_id=CLICKABC&pixel_id=42")
            assert "kwai" in (await c.get(f"/lead?e={event}")).json()["queued"]
        for _ in range(500):
            if len(fake.events("kwai")) >= delivered:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await lifespan

    with serve_in_thread(fake.app) as base:
        settings = make_settings(
            start_dispatcher=True,
            delivery=DeliveryConfig(poll_interval=0.02),
            **fake.settings_overrides(base),
        )
        app = TrackingMiddleware(
            Starlette(routes=[Route("/", page), Route("/lead", lead)]), settings
        )
        asyncio.run(one_lifespan(app, "first", 1))
        asyncio.run(one_lifespan(app, "second", 2))
    assert len(fake.events("kwai")) == 2


# The scenario itself leaves a dispatcher coroutine pending on a closed loop: its collection
# is reported as unraisable, which is what such a test setup does, not a failure here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_closed_without_cancelling_its_tasks_does_not_stop_delivery() -> None:
    # pytest-asyncio's old event_loop fixture closed each test's loop with the dispatcher
    # task still pending (no done callback ever runs): the next loop must start its own.
    import gc
    import warnings

    def two_loops() -> None:
        mw = TrackingMiddleware(starlette_app(), make_settings(start_dispatcher=True))

        async def one_request() -> None:
            async with asgi_client(mw) as c:
                assert (await c.get("/")).status_code == 200

        for _ in range(2):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(one_request())
            rt: Any = mw._runtime
            assert rt._task_loop is loop and not rt._task.done()
            loop.close()
        mw._runtime.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Task was destroyed but it is pending"
        two_loops()
        gc.collect()  # the abandoned tasks go now, under this test's warning filter


async def test_remembered_view_reads_headers_as_they_arrived_under_mutable_headers() -> None:
    """Starlette's MutableHeaders, used by an app or an inner middleware to change a request
    header, replaces the scope's header list: the attribution of a view answered from the
    Cookie header alone still carries the user agent the request came with."""
    from starlette.datastructures import MutableHeaders

    async def rewriting(scope: Any, receive: Any, send: Any) -> None:
        MutableHeaders(scope=scope)["user-agent"] = "rewritten"
        a = current_attribution()
        body = (a.client.user_agent or "") if a is not None else "none"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    mw = TrackingMiddleware(rewriting, make_settings())
    async with asgi_client(mw) as c:
        await c.get("/?click_id=K1&pixel_id=P1")
        await c.get("/a")  # decoded, then remembered
        assert len(mw._core._quiet) == 1
        decoded = count_decodes(mw._core)
        for agent in ("agent-2", "agent-3"):
            r = await c.get("/b", headers={"user-agent": agent})
            assert r.status_code == 200 and r.text == agent
        assert decoded == []  # answered from memory


async def test_remembered_answer_ends_with_the_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASGI glue looks remembered answers up itself: past the cookie's max_age the
    Cookie header no longer answers, the request goes the full way and the expired session
    counts as absent."""
    import time

    import tracking_mw.asgi as asgi_mod

    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(asgi_mod, "_now", lambda: clock[0])
    mw = TrackingMiddleware(starlette_app(), make_settings(cookie_max_age=3600))
    async with asgi_client(mw) as c:
        r = await c.get("/?click_id=K1&pixel_id=P1")
        assert len(tmw_cookies(r)) == 1
        # Sent by hand: the client's cookie jar would drop it at its Max-Age.
        sent = {"cookie": "_tmw=" + str(r.cookies["_tmw"])}
        c.cookies.clear()
        clock[0] += 60
        r = await c.get("/", headers=sent)
        assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"
        assert len(mw._core._quiet) == 1
        decoded = count_decodes(mw._core)
        clock[0] = 1_800_000_000.0 + 3599  # the click's last second in the window
        r = await c.get("/", headers=sent)
        assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"
        assert decoded == []  # still answered from memory
        clock[0] += 2  # past the cookie's last valid second
        r = await c.get("/", headers=sent)
        assert r.status_code == 200 and r.json()["attribution"]["touches"] == {}
        assert decoded == ["decode"]  # read and decoded again: expired


async def test_odd_cookie_header_values_on_a_repeat_view_do_not_escape(
    mw: TrackingMiddleware, caplog: pytest.LogCaptureFixture
) -> None:
    """A scope whose Cookie header values are not bytes (a broken server or test client)
    falls through to the full path, which logs it; the app still answers."""
    seen: list[str] = []

    async def view(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw.app = view
    scope = get_p([(b"cookie", b"a=1"), (b"cookie", "b=2")])
    with caplog.at_level(logging.ERROR, logger="tracking_mw"):
        await mw(dict(scope), _never, _ignore)
    assert seen == ["/p"]
    assert any("request not tracked" in rec.getMessage() for rec in caplog.records)
