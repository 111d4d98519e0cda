"""Hypothesis: hostile requests never break the app, and ASGI and WSGI capture the same thing."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracking_mw._context import _state, current_attribution
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.config import MAX_SET_COOKIE_BYTES, MetaConfig, Settings
from tracking_mw.wsgi import TrackingWSGIMiddleware

SETTINGS = Settings(
    secret_key="f" * 32,
    cookie_secure=False,
    outbox="memory://",
    start_dispatcher=False,
    meta=MetaConfig(pixel_id="1", access_token="t"),
)
KEYS = [
    "click_id",
    "pixel_id",
    "bbg",
    "fbclid",
    "rtid",
    "link_id",
    "ttclid",
    "utm_source",
    "utm_term",
    "click%5Fid",
    "x",
]
COOKIES = ["_tmw", "_fbc", "_fbp", "_bge_bbg", "_bge_ci", "_ttp", "other"]
BODY = b"app body"

# Any byte but CR/LF, which no server passes through inside a header value.
header_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
value_bytes = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"%zz", b"%", b"%C3", b"a+b", b"a%3Bb%0D%0Ac", b"\xff\xfe", b"A" * 600]),
)
pair = st.tuples(st.sampled_from(KEYS), value_bytes).map(lambda kv: kv[0].encode() + b"=" + kv[1])
query = st.lists(st.one_of(pair, st.binary(max_size=20)), max_size=12).map(b"&".join)
cookie_header = st.lists(
    st.tuples(st.sampled_from(COOKIES), st.text(max_size=60)).map(lambda kv: f"{kv[0]}={kv[1]}"),
    max_size=6,
).map(lambda xs: "; ".join(xs))


def app_snapshot() -> dict[str, Any] | None:
    a = current_attribution()
    if a is None:
        return None
    out = a.to_dict()
    for t in out["touches"].values():
        t.pop("first_seen")
        t.pop("last_seen")
        extra = t.get("extra", {})
        # Built from the clock and a random number: compare their shape only.
        for k in ("fbc", "fbp"):
            if k in extra:
                extra[k] = re.sub(r"^fb\.1\.\d+\.", "fb.1.<ms>.", extra[k])
                if k == "fbp":
                    extra[k] = (
                        "fb.1.<ms>.<rand>"
                        if re.fullmatch(r"fb\.1\.<ms>\.\d+", extra[k])
                        else extra[k]
                    )
    out.pop("visitor_id")
    return out


def check_set_cookies(values: list[str]) -> None:
    for v in values:
        assert "\r" not in v and "\n" not in v
        assert len("Set-Cookie: ") + len(v) <= MAX_SET_COOKIE_BYTES
        name, _, rest = v.partition("=")
        assert name in ("_tmw", "_fbc", "_fbp")
        assert ";" in rest and "," not in rest.split(";")[0]


def run_asgi(
    q: bytes, cookie: str, ua: bytes, ref: bytes, xff: bytes, path: str = "/p"
) -> tuple[Any, list[str]]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["snap"] = app_snapshot()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": BODY})

    mw = TrackingMiddleware(app, SETTINGS)
    mw._started = True
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"shop.test"),
        (b"cookie", cookie.encode("utf-8", "surrogatepass")),
        (b"user-agent", ua),
        (b"referer", ref),
        (b"x-forwarded-for", xff),
    ]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,  # no raw_path (optional in ASGI): the decoded path is all there is
        "query_string": q,
        "headers": headers,
        "client": ("127.0.0.1", 5),
        "server": ("shop.test", 80),
    }
    asyncio.run(mw(scope, receive, send))
    assert _state.get() is None
    assert sent[0]["status"] == 200 and sent[1]["body"] == BODY
    hdrs = sent[0]["headers"]
    assert hdrs[0] == (b"x-app", b"1")
    cookies = [v.decode("latin-1") for k, v in hdrs if k == b"set-cookie"]
    return seen["snap"], cookies


def run_wsgi(
    q: bytes, cookie: str, ua: bytes, ref: bytes, xff: bytes, path: str = "/p"
) -> tuple[Any, list[str]]:
    seen: dict[str, Any] = {}

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen["snap"] = app_snapshot()
        start_response("200 OK", [("X-App", "1")])
        return [BODY]

    mw = TrackingWSGIMiddleware(app, SETTINGS)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, headers
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        # PEP 3333: the decoded path's bytes as a latin-1 string.
        "PATH_INFO": path.encode("utf-8", "surrogatepass").decode("latin-1"),
        "QUERY_STRING": q.decode("latin-1"),
        "SERVER_NAME": "shop.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "shop.test",
        "HTTP_COOKIE": cookie.encode("utf-8", "surrogatepass").decode("latin-1"),
        "HTTP_USER_AGENT": ua.decode("latin-1"),
        "HTTP_REFERER": ref.decode("latin-1"),
        "HTTP_X_FORWARDED_FOR": xff.decode("latin-1"),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    body = b"".join(mw(environ, start_response))
    assert _state.get() is None
    assert body == BODY and got["status"] == "200 OK"
    assert got["headers"][0] == ("X-App", "1")
    return seen["snap"], [v for k, v in got["headers"] if k == "Set-Cookie"]


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(query, cookie_header, header_bytes, header_bytes, header_bytes)
def test_hostile_requests_same_under_asgi_and_wsgi(
    q: bytes, cookie: str, ua: bytes, ref: bytes, xff: bytes
) -> None:
    snap_a, cookies_a = run_asgi(q, cookie, ua, ref, xff)
    snap_w, cookies_w = run_wsgi(q, cookie, ua, ref, xff)
    check_set_cookies(cookies_a)
    check_set_cookies(cookies_w)
    assert snap_a == snap_w
    assert sorted(c.split("=")[0] for c in cookies_a) == sorted(c.split("=")[0] for c in cookies_w)


@fuzz
@given(st.text(max_size=30).map(lambda t: "/" + t))
def test_decoded_paths_make_the_same_url_under_asgi_and_wsgi(path: str) -> None:
    """A server that gives only the decoded path (ASGI without raw_path, WSGI without
    REQUEST_URI): "?", "%" and the rest are characters of the path, quoted back alike."""
    a, _ = run_asgi(b"click_id=K1", "", b"ua", b"", b"", path)
    w, _ = run_wsgi(b"click_id=K1", "", b"ua", b"", b"", path)
    assert a == w
    url = a["touches"]["kwai"]["landing_url"]
    assert url.endswith("?click_id=K1") and url.count("?") == 1


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=65_536))
def test_huge_queries_and_agents(n_params: int, pad: int) -> None:
    q = b"&".join(b"k%d=v" % i for i in range(n_params)) + b"&x=" + b"a" * pad + b"&click_id=C1"
    ua = b"Mozilla/5.0 " + b"x" * 1_000_000
    snap_a, cookies_a = run_asgi(q, "", ua, b"", b"")
    snap_w, cookies_w = run_wsgi(q, "", ua, b"", b"")
    assert snap_a == snap_w
    assert snap_a is not None and snap_a["touches"]["kwai"]["click_id"] == "C1"
    assert len(snap_a["client"]["user_agent"]) <= 1024
    check_set_cookies(cookies_a)
    check_set_cookies(cookies_w)


@fuzz
@given(st.text(max_size=5000))
def test_any_session_cookie_value_is_harmless(value: str) -> None:
    cookie = "_tmw=" + value
    snap_a, cookies_a = run_asgi(b"", cookie, b"Mozilla/5.0", b"", b"")
    snap_w, cookies_w = run_wsgi(b"", cookie, b"Mozilla/5.0", b"", b"")
    assert snap_a == snap_w
    # Meta is configured: a new visitor gets an fbp and a session holding it, nothing else.
    assert sorted(c.split("=")[0] for c in cookies_a) == ["_fbp", "_tmw"]
    assert sorted(c.split("=")[0] for c in cookies_w) == ["_fbp", "_tmw"]
