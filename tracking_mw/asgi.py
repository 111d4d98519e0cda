"""``TrackingMiddleware``: pure ASGI glue around the shared request logic in ``_core``.

Per-request state lives in locals and in a ``send`` wrapper, never on ``self`` (Starlette's
``SessionMiddleware`` shape; ``BaseHTTPMiddleware`` would break ContextVars for view code).
When nothing has to be written, the app gets the server's own ``send``: a returning visitor's
page view costs a scan of the header list, one lookup of its raw Cookie header, a shallow copy
of the scope and a ContextVar set/reset (see ``Core.recall``).

Lifespan: the scope is passed to the app; the runtime (tracker, dispatcher) starts when the app
is about to receive ``lifespan.startup`` and shuts down (draining) when the app reports
``lifespan.shutdown.complete``. If the app does not speak lifespan at all, the middleware
answers the server itself. A server without lifespan gets the runtime started on the first
HTTP request.
"""

from __future__ import annotations

import logging
import re
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable
from time import time as _now
from typing import Unpack
from urllib.parse import quote

from ._context import _state
from ._core import Core, RequestParts, quote_decoded_path
from ._setup import middleware_setup
from ._types import ASGIApp, Message, Receive, Scope, Send
from .config import Settings, SettingsOverrides
from .useragent import resolver_name

__all__ = ["TrackingMiddleware"]

logger = logging.getLogger("tracking_mw")

# Request headers tracking reads, by their lower-case ASGI names.
_WANTED = {
    b"cookie": 0,
    b"user-agent": 1,
    b"referer": 2,
    b"host": 3,
    b"x-forwarded-for": 4,
    b"forwarded": 5,
}


def _parts(scope: Scope) -> RequestParts:
    found: list[str | None] = [None] * 6
    wanted = _WANTED
    for name, value in scope.get("headers") or ():
        i = wanted.get(name)
        if i is None:
            continue
        text = value.decode("latin-1")
        prev = found[i]
        if prev is None:
            found[i] = text
        elif i == 0:
            found[i] = prev + "; " + text  # HTTP/2 may split cookies over several headers
        elif i >= 4:
            found[i] = prev + ", " + text  # repeated forwarding headers form one list
    client = scope.get("client")
    raw_path = scope.get("raw_path")
    if raw_path:
        path = _paths.get(raw_path)
        if path is None:
            path = _quote_raw(raw_path)
            if len(_paths) < 1024 and len(raw_path) <= 256:
                _paths[raw_path] = path
    else:
        # Per the ASGI spec "path" already includes root_path, decoded.
        path = quote_decoded_path(str(scope.get("path") or "").encode("utf-8", "surrogateescape"))
    # The server address goes as it is: it is formatted only if the Host header is unusable.
    return _new_parts(
        RequestParts,
        (
            scope.get("scheme", "http"),
            found[3],
            scope.get("server"),
            path,
            scope.get("query_string") or b"",
            found[0],
            found[1],
            found[2],
            client[0] if client else None,
            found[4],
            found[5],
        ),
    )


def _latin1(cookie: str) -> bytes:
    """The Cookie header as the request carried it (split headers joined), from the text
    :func:`_parts` made of it: the key of a remembered header."""
    return cookie.encode("latin-1")


def _never() -> bool:
    return False


# RequestParts is a named tuple: its fields in order, straight into tuple.__new__.
_new_parts = tuple.__new__


_PLAIN_PATH = re.compile(rb"[A-Za-z0-9_.\-~/:@!$&'()*+,;=%]*")
# Paths already quoted (a site's landing pages are few): a dict lookup instead of a regex.
_paths: dict[bytes, str] = {}


def _quote_raw(raw: bytes) -> str:
    if raw.find(b"?") >= 0:
        raw = raw.split(b"?", 1)[0]
    if _PLAIN_PATH.fullmatch(raw):
        return raw.decode("ascii")
    return quote(raw, safe="/:@!$&'()*+,;=~%")


class TrackingMiddleware:
    """Capture ad identifiers into a signed cookie and expose them to views (pure ASGI).

    ``TrackingMiddleware(app)`` reads settings from ``TRACKING_*`` variables
    (:meth:`Settings.from_env`); ``TrackingMiddleware(app, settings)`` uses ``settings``;
    keyword ``overrides`` change single settings either way (``cookie_secure=False``).
    Configuration errors raise :class:`~tracking_mw.ConfigurationError` here, at startup, and
    are logged too: Starlette and FastAPI build declared middleware inside the lifespan call,
    whose exceptions uvicorn's default lifespan mode does not show.

    On every HTTP request it captures the ad identifiers of every platform (``click_id`` +
    ``pixel_id``, ``bbg``, ``fbclid``, ``rtid``, ROIBest's link parameter, ``ttclid``, the
    pixel cookies ``_fbc``/``_fbp``/``_bge_bbg``/``_bge_ci``/``_ttp``, UTM tags), keeps them in
    its own signed cookie (``Settings.cookie_name``) and exposes the visitor's attribution to
    view code through :func:`~tracking_mw.current_attribution`. Rules worth knowing:

    - a repeated query parameter: the **first** occurrence wins (the same under WSGI);
    - ROIBest's parameter (``Settings.roibest.link_param``, ``link_id`` by default) is read
      unless ROIBest is switched off (``roibest=None``, ``TRACKING_ROIBEST_ENABLED=false``):
      a site that does not use ROIBest may switch it off, the name being generic;
    - Meta: ``fbc`` is built from ``fbclid`` when ``_fbc`` is missing or holds another
      fbclid; ``fbp`` is created only when Meta is configured or an ``fbclid`` arrived; both
      are written as first-party cookies unless ``write_meta_cookies=False``;
    - bots (per ``user-agents``) are not captured unless ``capture_bots=True``; a consent
      hook that says no (or raises) means nothing is read, stored or written;
    - ``Set-Cookie`` is sent only when the attribution changed (a repeat of the same click
      refreshes ``last_seen`` at most hourly), never over 4,093 bytes.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        **overrides: Unpack[SettingsOverrides],
    ) -> None:
        settings, self._runtime = middleware_setup(settings, overrides)
        self.app = app
        self.settings = settings
        self._core = Core(settings, self._runtime, _parts, _latin1)
        # Core's remembered answers, looked up here (None with a consent hook: see recall).
        self._remembered = self._core.remembered
        # Set at startup, never per request: whether the runtime has been started, and
        # whether the event loop it started on is closed (a test's loop closed without
        # cancelling its tasks: the next loop starts the dispatcher again). A bound method:
        # one call per request, where asking for the running loop costs 0.2 µs.
        self._started = False
        self._loop_closed: Callable[[], bool] = _never

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if not self._started or self._loop_closed():
            await self._startup()
        remembered = self._remembered
        if remembered is not None and not scope.get("query_string"):
            # A returning visitor's page view is answered from the Cookie header alone, its
            # raw bytes (split headers joined as _parts joins them), with Core.recall's test
            # written out here: a call per request costs 0.3 µs inside a server. Anything
            # odd in the headers goes the full way, which handles (and logs) it.
            raw: bytes | None = None
            try:
                for name, value in scope.get("headers") or ():
                    if name == b"cookie":
                        raw = value if raw is None else raw + b"; " + value
                entry = remembered.get(raw) if raw is not None else None
            except Exception:
                entry = None
            if entry is not None and entry[0] <= _now() < entry[1]:
                # The scope is copied (shallow) for a view that asks for the attribution
                # later: the app may replace its keys first (a router its path, a middleware
                # the client or the header list; Starlette's MutableHeaders replaces the list).
                token = _state.set((entry[3], {**scope}, self._runtime))
                try:
                    await self.app(scope, receive, send)
                finally:
                    _state.reset(token)
                return
        await self._process(scope, receive, send)

    async def _process(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every HTTP request the Cookie header alone does not answer."""
        try:
            state, cookies = self._core.process(_parts(scope), scope)
        except Exception as exc:  # tracking must never break the host app
            logger.error("tracking_mw: request not tracked: %s", type(exc).__name__)
            await self.app(scope, receive, send)
            return
        token = _state.set(state)
        try:
            if cookies:
                await self.app(scope, receive, _cookie_sender(send, cookies))
            else:
                await self.app(scope, receive, send)
        finally:
            _state.reset(token)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _startup(self) -> None:
        self._started = True
        loop = _get_running_loop()  # None under trio: nothing closes then
        self._loop_closed = loop.is_closed if loop is not None else _never
        try:
            # When the dispatcher ends (shutdown, or its event loop closed: a test client
            # without lifespan runs each request on a loop of its own), the next lifespan
            # startup or request starts it again, on the loop running then.
            await self._runtime.startup(on_stop=self._stopped)
        except Exception as exc:
            logger.error("tracking_mw: runtime failed to start: %s", type(exc).__name__)
        try:
            # Load the user-agent parser now rather than in the first visitor's request.
            resolver_name()
        except Exception as exc:
            logger.error("tracking_mw: user-agent parser failed to load: %s", type(exc).__name__)

    def _stopped(self) -> None:
        self._started = False

    async def _shutdown(self) -> None:
        self._started = False
        try:
            await self._runtime.shutdown()
        except Exception as exc:
            logger.error("tracking_mw: runtime failed to shut down: %s", type(exc).__name__)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent_any = False
        shut_down = False
        pending: list[Message] = []

        async def wrapped_receive() -> Message:
            message = await receive()
            pending.append(message)
            if message.get("type") == "lifespan.startup" and not self._started:
                await self._startup()
            return message

        async def wrapped_send(message: Message) -> None:
            nonlocal sent_any, shut_down
            sent_any = True
            kind = message.get("type")
            if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and not shut_down:
                shut_down = True
                await self._shutdown()
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except Exception:
            if sent_any:
                if not shut_down:
                    await self._shutdown()
                raise
            logger.debug("tracking_mw: the app does not handle lifespan; answering it here")
        if sent_any:
            if not shut_down:
                await self._shutdown()
            return
        # The app ignored lifespan: speak it ourselves so the runtime still starts and drains.
        while True:
            message = pending.pop(0) if pending else await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                if not self._started:
                    await self._startup()
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
            else:
                return


def _cookie_sender(send: Send, cookies: list[str]) -> Send:
    if len(cookies) == 1:
        # A landing's one cookie, nearly always: no comprehension (a function call in this
        # Python) per request.
        encoded = [(b"set-cookie", cookies[0].encode("latin-1"))]
    else:
        encoded = [(b"set-cookie", c.encode("latin-1")) for c in cookies]

    # A plain function handing back the server's awaitable: no coroutine of its own per message.
    def sender(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            # A copy: the app may reuse its message (and its header list) for other responses.
            message = {**message, "headers": [*(message.get("headers") or ()), *encoded]}
        return send(message)

    return sender
