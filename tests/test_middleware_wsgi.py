"""TrackingWSGIMiddleware through httpx.WSGITransport around a Flask app."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest
from flask import Flask, Response, jsonify

import tracking_mw._setup as setup_mod
from tests._clients import tmw_cookies, wsgi_client
from tests._settings import quiet_settings
from tracking_mw._context import _state, current_attribution, current_state
from tracking_mw._errors import ConfigurationError
from tracking_mw.config import MetaConfig, Settings
from tracking_mw.wsgi import TrackingWSGIMiddleware

KEY = "w" * 32
CHROME = (
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
# Every request of these tests comes from this phone unless a test says otherwise.
client_for = functools.partial(wsgi_client, ua=CHROME)
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"


def make_settings(**kw: Any) -> Settings:
    return quiet_settings(KEY, **kw)


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/")
    @app.route("/<path:rest>")
    def page(rest: str = "") -> Response:
        st = current_state()
        a = current_attribution()
        resp = jsonify(
            state=st is not None,
            consent=st.consent if st else None,
            attribution=a.to_dict() if a else None,
        )
        resp.headers["X-App"] = "kept"
        resp.set_cookie("app", "1")
        return resp

    @app.route("/boom")
    def boom() -> Response:
        raise RuntimeError("app failure")

    return app


class FakeRuntime:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> FakeRuntime:
        return cls()

    async def startup(self) -> None:
        self.calls.append("startup")

    async def shutdown(self) -> None:
        self.calls.append("shutdown")

    def ensure_thread_dispatcher(self) -> None:
        self.calls.append("thread")


@pytest.fixture
def mw() -> TrackingWSGIMiddleware:
    return TrackingWSGIMiddleware(flask_app().wsgi_app, make_settings())


def test_landing_then_later_pages(mw: TrackingWSGIMiddleware) -> None:
    with client_for(mw) as c:
        r = c.get(
            "/landing?click_id=K%2B1&pixel_id=P1&utm_source=kwai", headers={"referer": "https://r/"}
        )
        assert r.status_code == 200
        a = r.json()["attribution"]
        assert a["touches"]["kwai"]["click_id"] == "K+1"
        assert a["touches"]["kwai"]["pixel_id"] == "P1"
        assert a["touches"]["kwai"]["utm"] == {"utm_source": "kwai"}
        assert a["client"] == {
            "ip": "198.51.100.8",
            "user_agent": CHROME,
            "url": "http://shop.test/landing?click_id=K%2B1&pixel_id=P1&utm_source=kwai",
            "referrer": "https://r/",
        }
        assert len(tmw_cookies(r)) == 1 and r.headers["x-app"] == "kept"
        assert any(x.startswith("app=1") for x in r.headers.get_list("set-cookie"))
        for path in ("/a", "/b"):
            r2 = c.get(path)
            assert tmw_cookies(r2) == []
            assert r2.json()["attribution"]["touches"]["kwai"]["click_id"] == "K+1"
            assert r2.json()["attribution"]["visitor_id"] == a["visitor_id"]
    assert _state.get() is None


def test_meta_cookies(mw: TrackingWSGIMiddleware) -> None:
    with client_for(mw) as c:
        r = c.get("/?fbclid=IwAR_x")
        names = sorted(x.split("=")[0] for x in r.headers.get_list("set-cookie"))
        assert names == ["_fbc", "_fbp", "_tmw", "app"]
        r = c.get("/")
        assert tmw_cookies(r) == [] and not any(
            x.startswith("_fb") for x in r.headers.get_list("set-cookie")
        )


def test_meta_configured_creates_fbp_once() -> None:
    s = make_settings(meta=MetaConfig(pixel_id="1", access_token="t"))
    mw = TrackingWSGIMiddleware(flask_app().wsgi_app, s)
    with client_for(mw) as c:
        r = c.get("/")
        assert any(x.startswith("_fbp=fb.1.") for x in r.headers.get_list("set-cookie"))
        r = c.get("/")
        assert [x.split("=")[0] for x in r.headers.get_list("set-cookie")] == ["app"]


def test_consent_refused_or_raising(caplog: pytest.LogCaptureFixture) -> None:
    for hook in (lambda env: False, lambda env: 1 / 0):
        mw = TrackingWSGIMiddleware(flask_app().wsgi_app, make_settings(consent=hook))
        with client_for(mw) as c, caplog.at_level(logging.WARNING, logger="tracking_mw"):
            r = c.get("/?click_id=K1&fbclid=F")
        assert r.json() == {"state": True, "consent": False, "attribution": None}
        assert [x.split("=")[0] for x in r.headers.get_list("set-cookie")] == ["app"]


def test_consent_sees_environ() -> None:
    seen: list[str] = []

    def hook(environ: Any) -> bool:
        seen.append(environ["PATH_INFO"])
        return "consent=yes" in environ.get("HTTP_COOKIE", "")

    mw = TrackingWSGIMiddleware(flask_app().wsgi_app, make_settings(consent=hook))
    with client_for(mw, cookies={"consent": "yes"}) as c:
        r = c.get("/x?click_id=K1")
    assert seen == ["/x"]
    assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K1"


def test_bots_skipped(mw: TrackingWSGIMiddleware) -> None:
    with client_for(mw, ua=BINGBOT) as c:
        r = c.get("/?click_id=K1")
    assert r.json()["attribution"]["touches"] == {}
    assert tmw_cookies(r) == []


def test_bad_cookie_fresh_session(mw: TrackingWSGIMiddleware) -> None:
    with client_for(mw, cookies={"_tmw": "garbage.garbage.garbage"}) as c:
        r = c.get("/?click_id=K9")
    assert r.status_code == 200
    assert r.json()["attribution"]["touches"]["kwai"]["click_id"] == "K9"


def test_trusted_proxy() -> None:
    mw = TrackingWSGIMiddleware(flask_app().wsgi_app, make_settings(trusted_proxies=["10.0.0.0/8"]))
    with client_for(mw, peer="10.0.0.2") as c:
        r = c.get("/", headers={"x-forwarded-for": "9.9.9.9, 10.0.0.5"})
        assert r.json()["attribution"]["client"]["ip"] == "9.9.9.9"
        r = c.get("/", headers={"forwarded": 'for="[2001:db8::7]:1"'})
        assert r.json()["attribution"]["client"]["ip"] == "10.0.0.2"  # not the header read
    settings = make_settings(trusted_proxies=["10.0.0.0/8"], proxy_header="forwarded")
    mw = TrackingWSGIMiddleware(flask_app().wsgi_app, settings)
    with client_for(mw, peer="10.0.0.2") as c:
        r = c.get("/", headers={"forwarded": 'for="[2001:db8::7]:1"', "x-forwarded-for": "6.6.6.6"})
        assert r.json()["attribution"]["client"]["ip"] == "2001:db8::7"


def test_app_exception_propagates_and_state_resets(mw: TrackingWSGIMiddleware) -> None:
    app = flask_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    wrapped = TrackingWSGIMiddleware(app.wsgi_app, make_settings())
    with client_for(wrapped) as c, pytest.raises(RuntimeError, match="app failure"):
        c.get("/boom?click_id=K1")
    assert _state.get() is None


def test_thread_dispatcher_ensured_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup_mod, "Runtime", FakeRuntime)
    mw = TrackingWSGIMiddleware(flask_app().wsgi_app, make_settings())
    with client_for(mw) as c:
        c.get("/")
        c.get("/")
    assert mw._runtime.calls == ["thread", "thread"]  # type: ignore[attr-defined]


def test_internal_error_does_not_break_the_app(
    mw: TrackingWSGIMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise ValueError("bug")

    monkeypatch.setattr(mw._core, "process", broken)
    with client_for(mw) as c:
        r = c.get("/?click_id=K1")
    assert r.status_code == 200 and r.json()["state"] is False


def test_lazy_start_response_and_exc_info() -> None:
    """An app that calls start_response late, or with exc_info, still gets the cookie added."""
    calls: list[Any] = []

    def app(environ: Any, start_response: Any) -> Any:
        def body() -> Any:
            try:
                raise ValueError("x")
            except ValueError:
                import sys

                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"late"

        return body()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append((status, headers, exc_info is not None))
        return lambda data: None

    mw = TrackingWSGIMiddleware(app, make_settings())
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "click_id=L1",
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "shop",
        "SERVER_PORT": "80",
    }
    body = b"".join(mw(environ, start_response))
    assert body == b"late"
    status, headers, had_exc = calls[0]
    assert status == "500 Oops" and had_exc
    assert any(k == "Set-Cookie" and v.startswith("_tmw=") for k, v in headers)


def _environ(query: str = "click_id=G1&pixel_id=P1", **kw: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": query,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "shop",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "198.51.100.8",
        "HTTP_USER_AGENT": CHROME,
        **kw,
    }


def test_a_streamed_body_sees_the_attribution_and_its_close_too() -> None:
    """A body the app makes as the server draws it (a generator, a streamed Flask
    response) runs with the request's attribution, as a streaming ASGI view does."""
    seen: list[Any] = []

    class Body:
        def __init__(self) -> None:
            self.closed = 0

        def __iter__(self) -> Any:
            for part in (b"a", b"b"):
                a = current_attribution()
                seen.append(a.touches["kwai"].click_id if a else None)
                yield part

        def close(self) -> None:
            self.closed += 1
            seen.append(current_state() is not None)

    made = Body()

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return made

    mw = TrackingWSGIMiddleware(app, make_settings())
    body = mw(_environ(), lambda status, headers, exc_info=None: None)
    assert _state.get() is None  # set only while the server draws or closes the body
    assert b"".join(body) == b"ab"
    assert _state.get() is None
    body.close()  # type: ignore[attr-defined]
    assert seen == ["G1", "G1", True] and made.closed == 1 and _state.get() is None


def test_a_flask_stream_sees_the_attribution() -> None:
    app = Flask(__name__)

    @app.route("/")
    def stream() -> Response:
        def parts() -> Any:
            for _ in range(2):
                a = current_attribution()
                yield (a.touches["kwai"].click_id if a else "none") + ";"

        return Response(parts(), mimetype="text/plain")

    with client_for(TrackingWSGIMiddleware(app.wsgi_app, make_settings())) as c:
        r = c.get("/?click_id=F1")
    assert r.text == "F1;F1;" and tmw_cookies(r)


def test_made_bodies_and_file_wrappers_are_handed_back_as_they_are() -> None:
    class FileWrapper:
        def __init__(self, f: Any, size: int = 8192) -> None:
            self.f = f

        def __iter__(self) -> Any:
            return iter([b"file"])

    made: list[Any] = [[b"list"], (b"tuple",), FileWrapper(None)]
    for body in made:
        mw = TrackingWSGIMiddleware(lambda environ, sr, body=body: body, make_settings())
        got = mw(_environ(**{"wsgi.file_wrapper": FileWrapper}), lambda *a: None)
        assert got is body


def test_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_settings()
    assert (
        TrackingWSGIMiddleware(flask_app().wsgi_app, s, cookie_name="x").settings.cookie_name == "x"
    )
    monkeypatch.delenv("TRACKING_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TRACKING_SECRET_KEY"):
        TrackingWSGIMiddleware(flask_app().wsgi_app)


def test_remembered_later_requests_read_this_request_only() -> None:
    """A repeat page view answered from the Cookie header alone: the attribution still
    carries this request's client context, read as the request arrived."""

    def changing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # An app that rewrites its environ before the view asks for the attribution.
        environ["HTTP_USER_AGENT"] = "rewritten"
        environ["REMOTE_ADDR"] = "192.0.2.99"
        environ["PATH_INFO"] = "/elsewhere"
        a = current_attribution()
        assert a is not None
        body = f"{a.client.user_agent}|{a.client.ip}|{a.client.url}"
        start_response("200 OK", [("content-type", "text/plain")])
        return [body.encode()]

    mw = TrackingWSGIMiddleware(changing, make_settings())
    with client_for(mw) as c:
        c.get("/?click_id=K1&pixel_id=P1")
        first = c.get("/a")  # decoded, then remembered
        assert len(mw._core._quiet) == 1
        for ua in ("agent-2", "agent-3"):
            r = c.get("/b", headers={"user-agent": ua})
            assert r.status_code == 200 and tmw_cookies(r) == []
            assert r.text == f"{ua}|198.51.100.8|http://shop.test/b"
    assert first.text == f"{CHROME}|198.51.100.8|http://shop.test/a"
