"""Fake platform servers for tests: one ASGI app that validates like the real platforms.

Each platform is served under its own prefix at its documented path::

    /meta/{version}/{pixel}/events          Meta Conversions API (form or JSON body)
    /kwai/log/common/api                    Kwai Event API
    /bigo/bigoad/trackingevent              Bigo Web Events API
    /rokt/v2/events, /rokt/v2/bulkevents    Rokt Event API (mParticle)
    /roibest/report/fb/event                ROIBest reporting API
    /tiktok/open_api/v1.3/event/track/      TikTok Events API 2.0

Requests are checked the way the platform documents and the project's platform notes say
(required fields, fixed values, formats, credentials, ``Content-Type``) and answered in
each platform's real response shape. Everything that arrives is recorded; faults (a status,
``Retry-After``, a delay, a body) can be injected for the next N requests of a platform.

Use it in-process::

    fake = FakePlatforms()
    settings = Settings(secret_key=..., **fake.settings_overrides("http://fake"))
    transport = httpx.ASGITransport(app=fake.app)   # or serve fake.app with uvicorn

or standalone: ``python -m tracking_mw.testing --port 8099``, with HTTP control routes
``GET /_fake/received?platform=P``, ``GET /_fake/events?platform=P``, ``POST /_fake/faults``
(JSON ``{platform, status, retry_after, delay, count, body}``) and ``POST /_fake/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import codecs
import functools
import ipaddress
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._normalize import public_ip
from .config import (
    BigoConfig,
    KwaiConfig,
    MetaConfig,
    RoibestConfig,
    RoktConfig,
    Secret,
    TiktokConfig,
)
from .platforms.bigo import BIGO_EVENTS
from .platforms.kwai import KWAI_CURRENCIES, KWAI_EVENTS

__all__ = [
    "DEMO_BIGO_PIXEL_ID",
    "DEMO_KWAI_PIXEL_ID",
    "DEMO_KWAI_TOKEN",
    "DEMO_META_PIXEL_ID",
    "DEMO_META_TOKEN",
    "DEMO_ROKT_KEY",
    "DEMO_ROKT_SECRET",
    "DEMO_TIKTOK_PIXEL_ID",
    "DEMO_TIKTOK_TOKEN",
    "PLATFORMS",
    "FakePlatforms",
    "Received",
    "main",
]

DEMO_META_PIXEL_ID = "1234567890123456"
DEMO_META_TOKEN = "EAAdemo-meta-access-token"
DEMO_KWAI_PIXEL_ID = "245481936753688"
DEMO_KWAI_TOKEN = "DzoalQV7bM7jmgH53nQ0yJMgJ04s9qbTdemo"
DEMO_BIGO_PIXEL_ID = "903702366051605504"
DEMO_ROKT_KEY = "demo-rokt-api-key"
DEMO_ROKT_SECRET = "demo-rokt-api-secret"
DEMO_TIKTOK_PIXEL_ID = "CDEMO0TIKTOK0PIXEL00"
DEMO_TIKTOK_TOKEN = "demo-tiktok-access-token"

PLATFORMS = ("meta", "kwai", "bigo", "rokt", "roibest", "tiktok")

_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DECIMAL_STR = re.compile(r"^\d+(\.\d+)?$")
_META_ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
_META_HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
_META_CHECKED = (*_META_HASHED, "external_id")
_META_IDENTIFIERS = frozenset(
    {
        *_META_HASHED,
        "external_id",
        "client_ip_address",
        "fbc",
        "fbp",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "ctwa_clid",
    }
)
_MAX_ROKT_BYTES = 256 * 1024


@dataclass
class Received:
    """One request that reached the fake, and what it answered."""

    platform: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    answer: Any
    accepted: bool
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (body as text)."""
        return {
            "platform": self.platform,
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "headers": dict(self.headers),
            "body": self.body.decode("utf-8", "replace"),
            "json": self.json,
            "status": self.status,
            "answer": self.answer,
            "accepted": self.accepted,
            "at": self.at,
        }


@dataclass
class _Fault:
    status: int | None
    body: Any
    retry_after: float | str | None
    delay: float
    count: int


@dataclass
class _Verdict:
    status: int
    answer: Any  # dict/list -> JSON, None -> empty body
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300 and bool(self.events)


class _Reject(Exception):
    """A validation failure: the platform's own error answer."""

    def __init__(self, status: int, answer: Any) -> None:
        super().__init__(str(answer))
        self.status = status
        self.answer = answer


_FBC = re.compile(r"fb\.\d\.\d+\.[^.]+(\.[^.]+)?")
_FBP = re.compile(r"fb\.\d\.\d+\.\d+(\.[^.]+)?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


@functools.lru_cache(maxsize=1024)
def _is_ip_text(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ip(value: Any) -> bool:
    """``ipaddress.ip_address(value)`` succeeds (cached: a batch repeats few addresses)."""
    if isinstance(value, str):
        return _is_ip_text(value)
    try:
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return False
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unquote_plus(raw: bytes) -> str:
    """``urllib.parse.unquote_plus`` for bytes, fast on large values (a 1,000-event Meta
    ``data`` field holds ~100,000 escapes, which unquote decodes one by one in Python).

    ``%XX`` becomes ``\\xXX`` and one C pass (``codecs.escape_decode``) decodes them all;
    a value with a malformed escape takes the standard (slow) path.
    """
    raw = raw.replace(b"+", b" ")
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        decoded = _escape_decode(raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
    except ValueError:
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "replace")
    return decoded.decode("utf-8", "replace")


_escape_decode: Callable[[bytes], tuple[bytes, int]] = codecs.escape_decode


def _parse_form(body: bytes) -> dict[str, str]:
    """``{k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}``."""
    out: dict[str, str] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        out[_unquote_plus(name)] = _unquote_plus(value)
    return out


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


class FakePlatforms:
    """Fake Meta, Kwai, Bigo, Rokt, ROIBest and TikTok servers in one ASGI app.

    Credentials default to the ``DEMO_*`` constants of this module. ``kwai_tokens`` maps
    pixel ids to tokens (``"*"``: any pixel). ``bigo_pixel_ids`` restricts the pixels Bigo
    knows (``None``: any). ``clock`` gives "now" for Meta's 7-day rule. Thread-safe.
    """

    def __init__(
        self,
        *,
        meta_pixel_id: str = DEMO_META_PIXEL_ID,
        meta_token: str = DEMO_META_TOKEN,
        kwai_tokens: Mapping[str, str] | str = DEMO_KWAI_TOKEN,
        bigo_pixel_ids: Collection[str] | None = None,
        rokt_key: str = DEMO_ROKT_KEY,
        rokt_secret: str = DEMO_ROKT_SECRET,
        tiktok_pixel_id: str = DEMO_TIKTOK_PIXEL_ID,
        tiktok_token: str = DEMO_TIKTOK_TOKEN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta_pixel_id = meta_pixel_id
        self.meta_token = meta_token
        self.kwai_tokens: dict[str, str] = (
            {"*": kwai_tokens} if isinstance(kwai_tokens, str) else dict(kwai_tokens)
        )
        self.bigo_pixel_ids = None if bigo_pixel_ids is None else frozenset(bigo_pixel_ids)
        self.rokt_key = rokt_key
        self.rokt_secret = rokt_secret
        self.tiktok_pixel_id = tiktok_pixel_id
        self.tiktok_token = tiktok_token
        self.clock = clock
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._faults: dict[str, list[_Fault]] = {}
        self.app = Starlette(
            routes=[
                Route("/meta/{version}/{pixel}/events", self._meta, methods=["POST"]),
                Route("/kwai/log/common/api", self._kwai, methods=["POST"]),
                Route("/bigo/bigoad/trackingevent", self._bigo, methods=["POST"]),
                Route("/rokt/v2/events", self._rokt, methods=["POST"]),
                Route("/rokt/v2/bulkevents", self._rokt_bulk, methods=["POST"]),
                Route("/roibest/report/fb/event", self._roibest, methods=["POST"]),
                Route("/tiktok/open_api/v1.3/event/track/", self._tiktok, methods=["POST"]),
                Route("/_fake/received", self._ctl_received, methods=["GET"]),
                Route("/_fake/events", self._ctl_events, methods=["GET"]),
                Route("/_fake/faults", self._ctl_faults, methods=["POST"]),
                Route("/_fake/reset", self._ctl_reset, methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ public API

    def received(self, platform: str | None = None) -> list[Received]:
        """Every request that arrived (of ``platform``, or all), oldest first."""
        with self._lock:
            return [r for r in self._received if platform is None or r.platform == platform]

    def events(self, platform: str) -> list[dict[str, Any]]:
        """The accepted events of ``platform``, one dict per event (Meta ``data`` items,
        Rokt batches, TikTok ``data`` items, the whole body for Kwai/Bigo/ROIBest)."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for r in self._received:
                if r.platform == platform and r.accepted:
                    out.extend(self._unpack(platform, r))
        return out

    def inject(
        self,
        platform: str,
        *,
        status: int | None = 503,
        body: Any = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` requests of ``platform`` with a fault.

        ``status=None`` only delays (by ``delay`` seconds) and then validates as usual.
        ``body`` may be a dict/list (sent as JSON), text or bytes; ``None`` is an empty body.
        """
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.setdefault(platform, []).append(
                _Fault(status, body, retry_after, max(0.0, float(delay)), int(count))
            )

    def reset(self) -> None:
        """Forget every recorded request and pending fault."""
        with self._lock:
            self._received.clear()
            self._faults.clear()

    def wait_for_events(
        self, platform: str, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Block until ``platform`` accepted at least ``count`` events (for threaded tests)."""
        deadline = time.monotonic() + timeout
        while (evs := self._enough(platform, count, deadline, timeout)) is None:
            time.sleep(0.02)
        return evs

    async def await_events(
        self, platform: str, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Like :meth:`wait_for_events`, without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while (evs := self._enough(platform, count, deadline, timeout)) is None:
            await asyncio.sleep(0.02)
        return evs

    def _enough(
        self, platform: str, count: int, deadline: float, timeout: float
    ) -> list[dict[str, Any]] | None:
        """The events once there are ``count``; None to keep waiting; TimeoutError after."""
        evs = self.events(platform)
        if len(evs) >= count:
            return evs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{platform}: {len(evs)} of {count} events after {timeout}s")
        return None

    def settings_overrides(self, base_url: str) -> dict[str, Any]:
        """``Settings`` keyword arguments pointing every platform at this fake."""
        base = base_url.rstrip("/")
        kwai = {k: Secret(v) for k, v in self.kwai_tokens.items()}
        return {
            "meta": MetaConfig(
                pixel_id=self.meta_pixel_id,
                access_token=Secret(self.meta_token),
                base_url=f"{base}/meta",
            ),
            "kwai": KwaiConfig(access_tokens=kwai, base_url=f"{base}/kwai"),
            "bigo": BigoConfig(pixel_id=DEMO_BIGO_PIXEL_ID, base_url=f"{base}/bigo"),
            "rokt": RoktConfig(
                api_key=Secret(self.rokt_key),
                api_secret=Secret(self.rokt_secret),
                base_url=f"{base}/rokt",
            ),
            "roibest": RoibestConfig(base_url=f"{base}/roibest"),
            "tiktok": TiktokConfig(
                pixel_id=self.tiktok_pixel_id,
                access_token=Secret(self.tiktok_token),
                base_url=f"{base}/tiktok",
            ),
        }

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _unpack(platform: str, r: Received) -> list[dict[str, Any]]:
        data = r.json
        if platform == "meta":
            return [e for e in (data or {}).get("data", []) if isinstance(e, dict)]
        if platform == "tiktok":
            return [e for e in (data or {}).get("data", []) if isinstance(e, dict)]
        if platform == "rokt":
            if isinstance(data, list):
                return [b for b in data if isinstance(b, dict)]
            return [data] if isinstance(data, dict) else []
        return [data] if isinstance(data, dict) else []

    def _take_fault(self, platform: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(platform)
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.pop(0)
            return fault

    async def _serve(
        self,
        platform: str,
        request: Request,
        validate: Callable[[Request, bytes, dict[str, str]], tuple[Any, _Verdict]],
    ) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = dict(request.query_params)
        fault = self._take_fault(platform)
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)

        def record(parsed: Any, status: int, answer: Any, accepted: bool) -> None:
            self._record(
                Received(
                    platform,
                    request.method,
                    request.url.path,
                    query,
                    headers,
                    body,
                    parsed,
                    status,
                    answer,
                    accepted,
                )
            )

        if fault is not None and fault.status is not None:
            raw, media = _encode(fault.body)
            extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            answer: Any = (
                fault.body if not isinstance(fault.body, bytes) else raw.decode("utf-8", "replace")
            )
            record(_json_or_none(body), fault.status, answer, False)
            return Response(raw, status_code=fault.status, headers=extra, media_type=media)
        parsed: Any = None
        try:
            parsed, verdict = validate(request, body, headers)
        except _Reject as rej:
            verdict = _Verdict(rej.status, rej.answer)
            if parsed is None:
                parsed = _json_or_none(body)
        record(parsed, verdict.status, verdict.answer, verdict.accepted)
        if verdict.answer is None:
            return Response(b"", status_code=verdict.status)
        return JSONResponse(verdict.answer, status_code=verdict.status)

    def _record(self, r: Received) -> None:
        with self._lock:
            self._received.append(r)

    # ------------------------------------------------------------------ Meta

    async def _meta(self, request: Request) -> Response:
        return await self._serve("meta", request, self._meta_validate)

    def _meta_error(self, message: str, code: int = 100, kind: str = "OAuthException") -> _Reject:
        return _Reject(
            400,
            {
                "error": {
                    "message": message,
                    "type": kind,
                    "code": code,
                    "fbtrace_id": secrets.token_urlsafe(12),
                }
            },
        )

    def _meta_validate(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        ctype = _content_type(headers)
        params: dict[str, Any] = dict(request.query_params)
        if ctype == "application/x-www-form-urlencoded":
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._meta_error("Invalid form body") from exc
            params.update(_parse_form(body))
        elif ctype == "application/json":
            try:
                obj = json.loads(body)
            except ValueError as exc:
                raise self._meta_error("Invalid JSON body") from exc
            if not isinstance(obj, dict):
                raise self._meta_error("Invalid JSON body")
            params.update(obj)
        else:
            raise self._meta_error(f"Unsupported Content-Type {ctype or 'none'}")
        token = params.get("access_token")
        if not token:
            raise self._meta_error(
                "An access token is required to request this resource.", code=104
            )
        if token != self.meta_token:
            raise self._meta_error("Invalid OAuth access token - Cannot parse access token", 190)
        version = request.path_params["version"]
        if not re.fullmatch(r"v\d+\.\d+", version):
            raise self._meta_error(f"Unknown path components: /{version}", 2500)
        pixel = request.path_params["pixel"]
        if pixel != self.meta_pixel_id:
            raise self._meta_error(
                f"Unsupported post request. Object with ID '{pixel}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this "
                "operation.",
                100,
                "GraphMethodException",
            )
        data = params.get("data")
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise self._meta_error("(#100) param data must be an array.") from exc
        if not isinstance(data, list) or not data:
            raise self._meta_error("(#100) The parameter data is required")
        if len(data) > 1000:
            raise self._meta_error("(#100) param data must be an array of at most 1000 items")
        for i, ev in enumerate(data):
            problem = self._meta_event_problem(ev)
            if problem:
                raise self._meta_error(f"(#100) data[{i}]: {problem}")
        parsed = {"data": data, "test_event_code": params.get("test_event_code")}
        answer = {
            "events_received": len(data),
            "messages": [],
            "fbtrace_id": secrets.token_urlsafe(12),
        }
        return parsed, _Verdict(200, answer, [e for e in data if isinstance(e, dict)])

    def _meta_event_problem(self, ev: Any) -> str | None:
        if not isinstance(ev, dict):
            return "each event must be an object"
        name = ev.get("event_name")
        if not isinstance(name, str) or not name:
            return "event_name is required"
        t = ev.get("event_time")
        if not isinstance(t, int) or isinstance(t, bool):
            return "event_time must be an integer of Unix seconds"
        now = self.clock()
        if t > now + 300:
            return "event_time is in the future (milliseconds instead of seconds?)"
        if t < now - 7 * 86400:
            return "event_time is more than 7 days in the past"
        source = ev.get("action_source")
        if source not in _META_ACTION_SOURCES:
            return "action_source is missing or invalid"
        user = ev.get("user_data")
        if not isinstance(user, dict):
            return "user_data is required"
        for key in _META_CHECKED:
            if key not in user:
                continue
            values = user[key] if isinstance(user[key], list) else [user[key]]
            for v in values:
                if not isinstance(v, str):
                    return f"user_data.{key} must be a string"
                if key != "external_id" and not _HEX64.match(v):
                    return f"user_data.{key} must be a lowercase SHA-256 hex digest"
        ip = user.get("client_ip_address")
        if ip is not None and not _is_ip(ip):
            return "user_data.client_ip_address is not an IP address"
        fbc = user.get("fbc")
        if fbc is not None and not (isinstance(fbc, str) and _FBC.fullmatch(fbc)):
            return "user_data.fbc is malformed (fb.1.<ms>.<fbclid>)"
        fbp = user.get("fbp")
        if fbp is not None and not (isinstance(fbp, str) and _FBP.fullmatch(fbp)):
            return "user_data.fbp is malformed (fb.1.<ms>.<random>)"
        if source == "website":
            if not ev.get("event_source_url"):
                return "event_source_url is required for website events"
            if not user.get("client_user_agent"):
                return "user_data.client_user_agent is required for website events"
            if not any(k in user and user[k] for k in _META_IDENTIFIERS):
                return "user_data needs a customer information parameter besides the agent"
        elif not any(k in user and user[k] for k in _META_IDENTIFIERS | {"client_user_agent"}):
            return "user_data needs a customer information parameter"
        custom = ev.get("custom_data")
        if custom is not None and not isinstance(custom, dict):
            return "custom_data must be an object"
        custom = custom or {}
        if "value" in custom and not _is_number(custom["value"]):
            return "custom_data.value must be a number"
        if "currency" in custom and not (
            isinstance(custom["currency"], str) and _CURRENCY.fullmatch(custom["currency"])
        ):
            return "custom_data.currency must be an ISO 4217 code"
        if name == "Purchase" and ("value" not in custom or "currency" not in custom):
            return "Purchase events need custom_data.value and custom_data.currency"
        return None

    # ------------------------------------------------------------------ Kwai

    async def _kwai(self, request: Request) -> Response:
        return await self._serve("kwai", request, self._kwai_validate)

    def _kwai_validate(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        def fail(code: int, msg: str) -> _Reject:
            return _Reject(200, {"result": code, "error_msg": msg})

        if _content_type(headers) != "application/json":
            raise fail(10002, "Content-Type应为application/json")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise fail(10002, "请求体不是JSON") from exc
        if not isinstance(obj, dict):
            raise fail(10002, "请求体不是JSON对象")
        required: Sequence[tuple[str, type | tuple[type, ...]]] = (
            ("clickid", str),
            ("event_name", str),
            ("pixelId", str),
            ("access_token", str),
            ("testFlag", bool),
            ("trackFlag", bool),
            ("is_attributed", int),
            ("mmpcode", str),
            ("pixelSdkVersion", str),
        )
        for key, typ in required:
            if key not in obj or obj[key] is None or obj[key] == "":
                raise fail(10001, f"缺少{key}参数")
            v = obj[key]
            bad = not isinstance(v, typ) or (typ is int and isinstance(v, bool))
            if bad:
                raise fail(
                    10002, f"参数{key}类型错误\uff0c参数类型应为{getattr(typ, '__name__', typ)}"
                )
        if obj["testFlag"] is not False:
            raise fail(10002, "参数testFlag应为false")
        if obj["is_attributed"] != 1:
            raise fail(10002, "参数is_attributed应为1")
        if obj["mmpcode"] != "PL":
            raise fail(10002, "参数mmpcode应为PL")
        if obj["pixelSdkVersion"] != "9.9.9":
            raise fail(10002, "参数pixelSdkVersion应为9.9.9")
        expected = self.kwai_tokens.get(obj["pixelId"], self.kwai_tokens.get("*"))
        if expected is None or obj["access_token"] != expected:
            raise fail(10006, "token不合法\uff0c请求被拒绝")
        if not obj["clickid"].strip() or any(c.isspace() for c in obj["clickid"]):
            raise fail(10005, "callback字段不合法")
        if obj["event_name"] not in KWAI_EVENTS:
            raise fail(10007, "eventName不合法\uff0c请求被拒绝")
        if "properties" in obj:
            props = obj["properties"]
            if not isinstance(props, str):
                raise fail(10002, "参数properties类型错误\uff0c参数类型应为String")
            try:
                decoded = json.loads(props)
            except ValueError as exc:
                raise fail(10002, "参数properties不是JSON字符串") from exc
            if not isinstance(decoded, dict):
                raise fail(10002, "参数properties不是JSON对象")
        if "third_party" in obj and not isinstance(obj["third_party"], str):
            raise fail(10002, "参数third_party类型错误\uff0c参数类型应为String")
        has_value, has_currency = "value" in obj, "currency" in obj
        if has_value != has_currency:
            raise fail(10001, "缺少value或currency参数")
        if has_value:
            if not _is_number(obj["value"]):
                raise fail(10002, "参数value类型错误\uff0c参数类型应为number")
            if obj["currency"] not in KWAI_CURRENCIES:
                raise fail(10002, "参数currency不支持")
        return obj, _Verdict(200, {"result": 1, "error_msg": ""}, [obj])

    # ------------------------------------------------------------------ Bigo

    async def _bigo(self, request: Request) -> Response:
        return await self._serve("bigo", request, self._bigo_validate)

    def _bigo_validate(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        def fail(code: int, msg: str) -> _Reject:
            return _Reject(200, _bigo_answer(code, msg))

        if _content_type(headers) != "application/json":
            raise fail(-4, "Content-Type must be application/json")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise fail(-4, "invalid json") from exc
        if not isinstance(obj, dict):
            raise fail(-4, "invalid json")
        pixel = obj.get("pixel_id")
        if not isinstance(pixel, str) or not pixel:
            raise fail(-4, "need pixel_id")
        bbg = obj.get("bbg")
        if not isinstance(bbg, str) or len(bbg) < 8 or any(c.isspace() for c in bbg):
            raise fail(-4, "invalid bbg")
        if self.bigo_pixel_ids is not None and pixel not in self.bigo_pixel_ids:
            raise fail(-4, "notfound pixel")
        ev = obj.get("event")
        if not isinstance(ev, dict) or ev.get("event_id") not in BIGO_EVENTS:
            raise fail(-4, "invalid event_id")
        for key in ("monetary", "orig_monetary"):
            if key in ev and not (isinstance(ev[key], str) and _DECIMAL_STR.match(ev[key])):
                raise fail(-4, f"invalid {key}")
        if "currency" in ev and not (
            isinstance(ev["currency"], str) and re.fullmatch(r"[A-Z]{3}", ev["currency"])
        ):
            raise fail(-4, "invalid currency")
        ts = obj.get("timestamp_ms")
        if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or ts < 10**12):
            raise fail(-4, "invalid timestamp_ms")
        for key in ("url", "referer", "ip", "user_agent", "external_id", "cookie_id"):
            if key in obj and not isinstance(obj[key], str):
                raise fail(-4, f"invalid {key}")
        if "ip" in obj and public_ip(obj["ip"]) != obj["ip"]:
            # "It needs to be a public IP and not encrypted."
            raise fail(-4, "invalid ip")
        return obj, _Verdict(200, _bigo_answer(1, "success"), [obj])

    # ------------------------------------------------------------------ Rokt

    async def _rokt(self, request: Request) -> Response:
        return await self._serve("rokt", request, self._rokt_validate_single)

    async def _rokt_bulk(self, request: Request) -> Response:
        return await self._serve("rokt", request, self._rokt_validate_bulk)

    def _rokt_validate_single(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        obj = self._rokt_common(body, headers)
        if not isinstance(obj, dict):
            raise _rokt_error("/v2/events takes one batch object")
        self._rokt_batch(obj, "batch")
        return obj, _Verdict(202, None, [obj])

    def _rokt_validate_bulk(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        obj = self._rokt_common(body, headers)
        if not isinstance(obj, list) or not 1 <= len(obj) <= 100:
            raise _rokt_error("/v2/bulkevents takes an array of 1 to 100 batches")
        for i, batch in enumerate(obj):
            self._rokt_batch(batch, f"batch[{i}]")
        return obj, _Verdict(202, None, list(obj))

    def _rokt_common(self, body: bytes, headers: dict[str, str]) -> Any:
        auth = headers.get("authorization")
        if not auth:
            raise _Reject(401, None)
        scheme, _, cred = auth.partition(" ")
        try:
            pair = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise _Reject(403, None) from exc
        if scheme.lower() != "basic" or pair != f"{self.rokt_key}:{self.rokt_secret}":
            raise _Reject(403, None)
        if _content_type(headers) != "application/json":
            raise _rokt_error("Content-Type must be application/json")
        if len(body) > _MAX_ROKT_BYTES:
            raise _rokt_error("request larger than 256 KB")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _rokt_error("malformed JSON") from exc

    @staticmethod
    def _rokt_batch(batch: Any, where: str) -> None:
        if not isinstance(batch, dict):
            raise _rokt_error(f"{where} must be an object")
        if batch.get("environment") not in ("production", "development"):
            raise _rokt_error(f"{where}.environment must be production or development")
        ids = batch.get("user_identities")
        if not isinstance(ids, dict) or not (ids.get("email") or ids.get("other")):
            raise _rokt_error(f"{where}.user_identities needs email or other")
        for k, v in ids.items():
            if not isinstance(v, str):
                raise _rokt_error(f"{where}.user_identities.{k} must be a string")
        attrs = batch.get("user_attributes", {})
        if not isinstance(attrs, dict) or len(attrs) > 100:
            raise _rokt_error(f"{where}.user_attributes must be an object of at most 100")
        for k, v in attrs.items():
            if len(k) > 256 or (isinstance(v, str) and len(v) > 4096):
                raise _rokt_error(f"{where}.user_attributes.{k[:40]} is too long")
        events = batch.get("events")
        if not isinstance(events, list) or not events:
            raise _rokt_error(f"{where}.events must be a non-empty array")
        for j, e in enumerate(events):
            if not isinstance(e, dict) or e.get("event_type") != "custom_event":
                raise _rokt_error(f"{where}.events[{j}].event_type must be custom_event")
            data = e.get("data")
            if not isinstance(data, dict) or data.get("event_name") != "conversion":
                raise _rokt_error(f"{where}.events[{j}].data.event_name must be conversion")
            custom = data.get("custom_attributes", {})
            if not isinstance(custom, dict):
                raise _rokt_error(f"{where}.events[{j}].data.custom_attributes must be an object")
            for k, v in custom.items():
                if len(k) > 256 or (isinstance(v, str) and len(v) > 4096):
                    raise _rokt_error(f"{where}.events[{j}] attribute {k[:40]} is too long")

    # ------------------------------------------------------------------ ROIBest

    async def _roibest(self, request: Request) -> Response:
        return await self._serve("roibest", request, self._roibest_validate)

    def _roibest_validate(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        def fail(code: int, msg: str) -> _Reject:
            return _Reject(200, {"code": code, "msg": msg, "data": {}})

        if _content_type(headers) != "application/json":
            raise fail(400, "Content-Type must be application/json")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise fail(400, "invalid json") from exc
        if not isinstance(obj, dict):
            raise fail(400, "invalid json")
        link = obj.get("link_id")
        if not isinstance(link, str) or not link.strip():
            raise fail(1001, "link_id is required")
        name = obj.get("event_name")
        if not isinstance(name, str) or not name.strip():
            raise fail(1002, "event_name is required")
        extra = obj.get("extra", {})
        if not isinstance(extra, dict):
            raise fail(1003, "extra must be an object")
        if name == "Purchase" and (
            not isinstance(extra.get("currency"), str) or not _is_number(extra.get("value"))
        ):
            raise fail(1004, "Purchase needs extra.currency and extra.value")
        return obj, _Verdict(200, {"code": 0, "msg": "success", "data": {}}, [obj])

    # ------------------------------------------------------------------ TikTok

    async def _tiktok(self, request: Request) -> Response:
        return await self._serve("tiktok", request, self._tiktok_validate)

    def _tiktok_validate(
        self, request: Request, body: bytes, headers: dict[str, str]
    ) -> tuple[Any, _Verdict]:
        def fail(code: int, msg: str) -> _Reject:
            return _Reject(
                200, {"code": code, "message": msg, "request_id": secrets.token_hex(8), "data": {}}
            )

        if headers.get("access-token") != self.tiktok_token:
            raise fail(40105, "Access token is incorrect or has been revoked.")
        if _content_type(headers) != "application/json":
            raise fail(40002, "Content-Type must be application/json")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise fail(40002, "invalid json") from exc
        if not isinstance(obj, dict):
            raise fail(40002, "invalid json")
        if obj.get("event_source") != "web":
            raise fail(40002, "event_source must be web")
        if obj.get("event_source_id") != self.tiktok_pixel_id:
            raise fail(40002, "event_source_id is not a pixel of this account")
        data = obj.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            raise fail(40002, "data must be an array of 1 to 1000 events")
        for i, ev in enumerate(data):
            if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
                raise fail(40002, f"data[{i}].event is required")
            t = ev.get("event_time")
            if not isinstance(t, int) or isinstance(t, bool) or t > self.clock() + 300:
                raise fail(40002, f"data[{i}].event_time must be Unix seconds")
            user = ev.get("user")
            if not isinstance(user, dict) or not any(
                user.get(k) for k in ("ttclid", "ttp", "email", "phone", "external_id", "ip")
            ):
                raise fail(40002, f"data[{i}].user needs an identifier")
            for k in ("email", "phone", "external_id"):
                if k in user and not (isinstance(user[k], str) and _HEX64.match(user[k])):
                    raise fail(40002, f"data[{i}].user.{k} must be SHA-256")
        answer = {"code": 0, "message": "OK", "request_id": secrets.token_hex(8), "data": {}}
        return obj, _Verdict(200, answer, [e for e in data if isinstance(e, dict)])

    # ------------------------------------------------------------------ control routes

    async def _ctl_received(self, request: Request) -> Response:
        platform = request.query_params.get("platform") or None
        return JSONResponse([r.to_dict() for r in self.received(platform)])

    async def _ctl_events(self, request: Request) -> Response:
        platform = request.query_params.get("platform")
        if platform not in PLATFORMS:
            return JSONResponse({"error": "platform must be one of " + ", ".join(PLATFORMS)}, 400)
        return JSONResponse(self.events(platform))

    async def _ctl_faults(self, request: Request) -> Response:
        try:
            spec = json.loads(await request.body())
            if not isinstance(spec, dict):
                raise ValueError("not an object")
            self.inject(
                str(spec["platform"]),
                status=spec.get("status", 503),
                body=spec.get("body"),
                retry_after=spec.get("retry_after"),
                delay=float(spec.get("delay") or 0.0),
                count=int(spec.get("count") or 1),
            )
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"ok": True})

    async def _ctl_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})


def _bigo_answer(code: int, msg: str) -> dict[str, Any]:
    return {
        "code": code,
        "msg": msg,
        "logid": secrets.randbits(63),
        "timestamp": int(time.time()),
    }


def _rokt_error(message: str) -> _Reject:
    return _Reject(400, {"errors": [{"code": "BAD_REQUEST", "message": message}]})


def _encode(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain"
    return json.dumps(body).encode("utf-8"), "application/json"


def _json_or_none(body: bytes) -> Any:
    """The body as JSON for the record of a request, or None when it is not JSON."""
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tracking_mw.testing --port N``: serve the fake platforms."""
    parser = argparse.ArgumentParser(
        prog="python -m tracking_mw.testing", description="Fake ad platform servers."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    import uvicorn  # a test dependency; imported only when serving standalone

    uvicorn.run(FakePlatforms().app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
