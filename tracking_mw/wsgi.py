"""``TrackingWSGIMiddleware``: WSGI glue around the same request logic as the ASGI middleware.

Flask: ``app.wsgi_app = TrackingWSGIMiddleware(app.wsgi_app)``. Django:
``application = TrackingWSGIMiddleware(get_wsgi_application())``.

The request state is set in a ContextVar for the duration of the app call (the thread handling
the request runs the view inside it), and again while the server draws each chunk of a body
the app makes as it goes (a generator, a streamed Flask response), and while it closes it:
the same answer as the ASGI middleware gives a streaming view.
Delivery runs in a background thread started on demand (``ensure_thread_dispatcher``, which is
cheap, idempotent and re-started in a forked worker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Unpack
from urllib.parse import quote

from ._context import Deferred, RequestState, _state
from ._core import Core, RequestParts, quote_decoded_path
from ._setup import middleware_setup
from ._types import StartResponse, WSGIApp, WSGIEnviron
from .config import Settings, SettingsOverrides

__all__ = ["TrackingWSGIMiddleware"]

logger = logging.getLogger("tracking_mw")
_PATH_SAFE = "/:@!$&'()*+,;=~%"


def _parts(environ: WSGIEnviron) -> RequestParts:
    get = environ.get
    raw_uri = get("REQUEST_URI") or get("RAW_URI")
    if raw_uri and isinstance(raw_uri, str) and raw_uri.startswith("/"):
        path = quote(raw_uri.split("?", 1)[0].encode("latin-1", "replace"), safe=_PATH_SAFE)
    else:
        # PEP 3333: SCRIPT_NAME/PATH_INFO are percent-decoded bytes in latin-1 strings.
        decoded = get("SCRIPT_NAME", "") + get("PATH_INFO", "")
        path = quote_decoded_path(decoded.encode("latin-1", "replace"))
    query = get("QUERY_STRING") or ""
    port = get("SERVER_PORT")
    name = get("SERVER_NAME")
    return RequestParts(
        scheme=get("wsgi.url_scheme", "http"),
        host=get("HTTP_HOST"),
        server=f"{name}:{port}" if name and port else name,
        path=path,
        query=query.encode("latin-1", "replace"),
        cookie=get("HTTP_COOKIE"),
        user_agent=get("HTTP_USER_AGENT"),
        referer=get("HTTP_REFERER"),
        peer=get("REMOTE_ADDR") or None,
        x_forwarded_for=get("HTTP_X_FORWARDED_FOR"),
        forwarded=get("HTTP_FORWARDED"),
    )


class TrackingWSGIMiddleware:
    """Capture ad identifiers into a signed cookie and expose them to views (WSGI).

    Same arguments and behaviour as :class:`~tracking_mw.TrackingMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        **overrides: Unpack[SettingsOverrides],
    ) -> None:
        settings, self._runtime = middleware_setup(settings, overrides)
        self.app = app
        self.settings = settings
        self._core = Core(settings, self._runtime, _parts)
        self._recall = self._core.recall

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        try:
            self._runtime.ensure_thread_dispatcher()
        except Exception as exc:
            logger.error("tracking_mw: dispatcher thread failed to start: %s", type(exc).__name__)
        state: RequestState | Deferred | None = None
        cookies: list[str] = []
        try:
            if not environ.get("QUERY_STRING"):
                # A returning visitor's page view is answered from the Cookie header alone.
                # The environ is copied only then: the app may change it before a view asks
                # for the attribution.
                cookie = environ.get("HTTP_COOKIE")
                if cookie:
                    build = self._recall(cookie)
                    if build is not None:
                        state = (build, dict(environ), self._runtime)
            if state is None:
                state, cookies = self._core.process(_parts(environ), environ)
        except Exception as exc:  # tracking must never break the host app
            logger.error("tracking_mw: request not tracked: %s", type(exc).__name__)
            state = None
        if state is None:
            return self.app(environ, start_response)
        token = _state.set(state)
        try:
            if cookies:
                body = self.app(environ, _cookie_start_response(start_response, cookies))
            else:
                body = self.app(environ, start_response)
            # What the view left (a state it made from the deferred one), for the body.
            state = _state.get()
        finally:
            _state.reset(token)
        if type(body) in _MADE or _is_file(body, environ):
            return body  # nothing runs while the server sends it (and sendfile stays)
        return _TrackedBody(body, state)


# Bodies already made: nothing of the app's runs while the server iterates them.
_MADE = (list, tuple)


def _is_file(body: object, environ: WSGIEnviron) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


class _TrackedBody:
    """An app's body iterable, drawn and closed with the request's state set (PEP 3333:
    ``close()`` is passed on whatever happens)."""

    __slots__ = ("_body", "_it", "_state")

    def __init__(self, body: Iterable[bytes], state: RequestState | Deferred | None) -> None:
        self._body = body
        self._it: Iterator[bytes] | None = None
        self._state = state

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = _state.set(self._state)
        try:
            it = self._it
            if it is None:
                it = self._it = iter(self._body)
            return next(it)
        finally:
            _state.reset(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is None:
            return
        token = _state.set(self._state)
        try:
            close()
        finally:
            _state.reset(token)


def _cookie_start_response(start_response: StartResponse, cookies: list[str]) -> StartResponse:
    extra = [("Set-Cookie", c) for c in cookies]

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None:
            return start_response(status, [*headers, *extra], exc_info)
        return start_response(status, [*headers, *extra])

    return wrapped
