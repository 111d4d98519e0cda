"""The request logic both middlewares share; asgi.py and wsgi.py only translate protocols.

One request, in order:

1. consent hook (refusal or error: nothing is read, captured or written);
2. the attribution cookie is decoded (cached per exact value, see session.py);
3. identifiers are captured from the query string and cookies (capture.py);
4. bots are recognised (only if something would be captured) and left alone unless
   ``capture_bots``;
5. Meta's ``fbc``/``fbp`` are built or reused; touches are merged (attribution.merge_touch);
6. ``Set-Cookie`` values are produced only for what changed.

``fbp`` is created only when Meta is configured or an ``fbclid`` arrived: a site that does not
use Meta gets no Meta cookie. When the browser lost its ``_fbp``/``_fbc`` but the session still
has them, the stored values are written back instead of new ones, so the ids stay stable.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._context import RequestState
from .attribution import (
    ClientContext,
    Touch,
    _attribution,
    _client,
    _merge,
    _random16,
    new_visitor_id,
)
from .capture import (
    COOKIE_NAMES,
    META_FBC_COOKIE,
    META_FBP_COOKIE,
    Incoming,
    _encoded_names,
    _parse_query,
    build_fbc,
    build_fbp,
    capture,
    fbc_holds,
    is_cookie_safe,
    parse_cookies,
    query_names,
)
from .client_ip import resolve_client_ip
from .config import Settings
from .session import MAX_LANDING_URL, SessionCodec
from .useragent import MAX_USER_AGENT, is_bot

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Core", "RequestParts"]

logger = logging.getLogger("tracking_mw")

MAX_URL = 2048
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[A-Za-z0-9.\-_]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")
# Characters kept verbatim when rebuilding a URL; anything else is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=~%"
_QUERY_SAFE = "/:@!$&'()*+,;=~%?"
# Bytes that quote() would leave alone anyway: skip the call for them.
_PLAIN = re.compile(rb"[A-Za-z0-9_.\-~/:@!$&'()*+,;=%?]*")
_MISSING: Any = object()
_logged: set[str] = set()


def _log_once(key: str, message: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.warning(message, *args)


def _clean(value: str | None, cap: int) -> str | None:
    """Truncate a header value for storage; drop it if it holds control characters."""
    if not value:
        return None
    if len(value) > cap:
        value = value[:cap]
    # Printable ASCII has no control characters: skip the regex for the usual header.
    if not (value.isascii() and value.isprintable()) and _CONTROL.search(value):
        return None
    return value


@dataclass(slots=True)
class RequestParts:
    """The raw request parts tracking needs, already extracted by the protocol glue.

    ``path`` is the percent-encoded path; ``query`` the raw query string bytes.
    """

    scheme: str
    host: str | None
    server: str | None
    path: str
    query: bytes
    cookie: str | None
    user_agent: str | None
    referer: str | None
    peer: str | None
    x_forwarded_for: str | None
    forwarded: str | None


@dataclass(slots=True)
class Outcome:
    """The state to expose to the app and the ``Set-Cookie`` values to add to its response."""

    state: RequestState
    set_cookies: list[str]


class Core:
    """Protocol-independent tracking logic for one :class:`Settings` (no per-request state)."""

    def __init__(self, settings: Settings, runtime: Runtime | None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.codec = SessionCodec(settings)
        self._link_param = settings.roibest.link_param if settings.roibest is not None else None
        self._query_names = query_names(self._link_param)
        self._wanted_query = _encoded_names(self._query_names)
        self._cookie_names = frozenset((settings.cookie_name, *COOKIE_NAMES))
        self._cookie_name = settings.cookie_name
        self._trusted = settings.trusted_proxies
        self._capture_bots = settings.capture_bots
        self._meta_on = settings.meta is not None
        # Hosts already checked against _HOST (a site sees few): a dict lookup, not a regex.
        self._hosts: dict[str, bool] = {}
        self._agents: dict[str, str | None] = {}
        meta_attrs = f"; Max-Age={int(settings.meta_cookie_max_age)}; Path=/"
        if settings.cookie_domain:
            meta_attrs += f"; Domain={settings.cookie_domain}"
        if settings.cookie_secure:
            meta_attrs += "; Secure"
        # Not HttpOnly: the Meta pixel in the page reads these cookies.
        self._meta_attrs = meta_attrs + "; SameSite=Lax"

    # -- helpers -----------------------------------------------------------------------------

    def _consents(self, target: MutableMapping[str, Any]) -> bool:
        hook = self.settings.consent
        if hook is None:
            return True
        try:
            return bool(hook(target))
        except Exception as exc:
            _log_once(
                "consent",
                "tracking_mw: the consent hook raised %s; treating the visitor as not consenting",
                type(exc).__name__,
            )
            return False

    def _client(self, parts: RequestParts) -> ClientContext:
        trusted = self._trusted
        ip = (
            resolve_client_ip(
                parts.peer,
                x_forwarded_for=parts.x_forwarded_for,
                forwarded=parts.forwarded,
                trusted=trusted,  # type: ignore[arg-type]
            )
            if trusted
            else parts.peer
        )
        ua = parts.user_agent
        if ua:
            # A site sees the same agents over and over: remember what _clean made of them.
            cleaned = self._agents.get(ua, _MISSING)
            if cleaned is _MISSING:
                cleaned = _clean(ua, MAX_USER_AGENT)
                if len(self._agents) >= 4096:
                    self._agents.clear()
                if len(ua) <= MAX_USER_AGENT:
                    self._agents[ua] = cleaned
            ua = cleaned
        else:
            ua = None
        return _client(
            ip,
            ua,
            self._url(parts),
            _clean(parts.referer, MAX_URL) if parts.referer else None,
        )

    def _url(self, parts: RequestParts) -> str:
        host = parts.host
        if host:
            ok = self._hosts.get(host)
            if ok is None:
                ok = _HOST.fullmatch(host) is not None
                if len(self._hosts) < 1024:
                    self._hosts[host] = ok
            if not ok:
                host = None
        if not host:
            host = parts.server or "localhost"
        url = f"{parts.scheme}://{host}{parts.path}"
        if parts.query:
            q = parts.query[: MAX_URL * 2]
            url += "?" + (q.decode("ascii") if _PLAIN.fullmatch(q) else quote(q, safe=_QUERY_SAFE))
        return url[:MAX_URL]

    # -- the request -------------------------------------------------------------------------

    def process(self, parts: RequestParts, target: MutableMapping[str, Any]) -> Outcome:
        """Capture, merge and decide what to write for one request. Never raises on bad input."""
        if self.settings.consent is not None and not self._consents(target):
            return Outcome(RequestState(attribution=None, runtime=self.runtime, consent=False), [])
        now_f = time.time()
        now = int(now_f)
        cookies = parse_cookies(parts.cookie, self._cookie_names) if parts.cookie else {}
        stored = self.codec.decode(cookies.get(self._cookie_name), now) if cookies else None
        params = _parse_query(parts.query, self._wanted_query) if parts.query else {}
        if params or len(cookies) > (stored is not None):
            found, utm = capture(params, cookies, link_param=self._link_param)
        else:
            # The common later request: no parameters, no pixel cookies, nothing to capture.
            found, utm = {}, {}
        client = self._client(parts)

        if self._meta_on:
            meta_found = found.get("meta")
            need_fbp = meta_found is None or "fbp" not in meta_found.extra
        elif "meta" in found:
            meta_found = found["meta"]
            need_fbp = meta_found.click_id is not None and "fbp" not in meta_found.extra
        else:
            need_fbp = False
        if (found or need_fbp) and not self._capture_bots and is_bot(client.user_agent):
            found, need_fbp = {}, False

        if not found and not need_fbp:
            if stored is None:
                return Outcome(
                    RequestState(_attribution(new_visitor_id(), {}, client), self.runtime, True), []
                )
            return Outcome(
                RequestState(
                    _attribution(stored.visitor_id, stored.touches, client), self.runtime, True
                ),
                [],
            )

        set_cookies: list[str] = []
        if need_fbp or "meta" in found:
            meta = found.get("meta") or Incoming("meta")
            found["meta"] = meta
            stored_meta = stored.touches.get("meta") if stored is not None else None
            self._meta_ids(meta, stored_meta, cookies, now_f, set_cookies)

        touches: dict[str, Touch] = dict(stored.touches) if stored is not None else {}
        url = client.url
        landing = url[:MAX_LANDING_URL] if url else None
        changed = False
        for platform, inc in found.items():
            touch, ch = _merge(
                touches.get(platform),
                platform,
                inc.click_id,
                inc.pixel_id,
                inc.extra,
                utm,
                landing,
                now,
            )
            if ch:
                touches[platform] = touch
                changed = True

        visitor = stored.visitor_id if stored is not None else new_visitor_id()
        attribution = _attribution(visitor, touches, client)
        if changed:
            written = self.codec.set_cookie(attribution)
            if written is not None:
                header, attribution = written
                set_cookies.insert(0, header)
        return Outcome(RequestState(attribution, self.runtime, True), set_cookies)

    def _meta_ids(
        self,
        meta: Incoming,
        stored: Touch | None,
        cookies: dict[str, str],
        now_f: float,
        set_cookies: list[str],
    ) -> None:
        """Settle ``fbc``/``fbp`` for this request and queue the Meta cookies to write."""
        now_ms = int(now_f * 1000)
        fbclid = meta.click_id
        if fbclid is not None and "fbc" not in meta.extra:
            old = stored.extra.get("fbc") if stored is not None else None
            if old is not None and fbc_holds(old, fbclid):
                meta.extra["fbc"] = old
            else:
                meta.extra["fbc"] = build_fbc(fbclid, now_ms)
        if "fbp" not in meta.extra and (self._meta_on or fbclid is not None):
            old = stored.extra.get("fbp") if stored is not None else None
            if not old:
                # Uniform in 0..2147483647 (31 random bits) from os.urandom, like the pixel's.
                old = build_fbp(now_ms, int.from_bytes(_random16()[:4], "big") >> 1)
            meta.extra["fbp"] = old
        if not self.settings.write_meta_cookies:
            return
        for name, key in ((META_FBC_COOKIE, "fbc"), (META_FBP_COOKIE, "fbp")):
            value = meta.extra.get(key)
            # Written only when the browser lacks it, and only if it is a valid cookie value:
            # a click id with ";" or "," must never reach a header.
            if value is not None and cookies.get(name) != value and is_cookie_safe(value):
                set_cookies.append(f"{name}={value}{self._meta_attrs}")
