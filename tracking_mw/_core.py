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
import random
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._context import RequestState
from .attribution import Attribution, ClientContext, Touch, merge_touch, new_visitor_id
from .capture import (
    COOKIE_NAMES,
    META_FBC_COOKIE,
    META_FBP_COOKIE,
    Incoming,
    build_fbc,
    build_fbp,
    capture,
    fbc_holds,
    is_cookie_safe,
    parse_cookies,
    parse_query,
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
_rand = random.SystemRandom()
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
    if _CONTROL.search(value):
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
        self._cookie_names = (settings.cookie_name, *COOKIE_NAMES)
        self._meta_on = settings.meta is not None
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
        s = self.settings
        ip = resolve_client_ip(
            parts.peer,
            x_forwarded_for=parts.x_forwarded_for,
            forwarded=parts.forwarded,
            trusted=s.trusted_proxies,  # type: ignore[arg-type]
        )
        return ClientContext(
            ip=ip,
            user_agent=_clean(parts.user_agent, MAX_USER_AGENT),
            url=self._url(parts),
            referrer=_clean(parts.referer, MAX_URL),
        )

    @staticmethod
    def _url(parts: RequestParts) -> str:
        host = parts.host
        if not host or not _HOST.fullmatch(host):
            host = parts.server or "localhost"
        url = f"{parts.scheme}://{host}{parts.path}"
        if parts.query:
            q = parts.query[: MAX_URL * 2]
            url += "?" + (q.decode("ascii") if _PLAIN.fullmatch(q) else quote(q, safe=_QUERY_SAFE))
        return url[:MAX_URL]

    # -- the request -------------------------------------------------------------------------

    def process(self, parts: RequestParts, target: MutableMapping[str, Any]) -> Outcome:
        """Capture, merge and decide what to write for one request. Never raises on bad input."""
        if not self._consents(target):
            return Outcome(RequestState(attribution=None, runtime=self.runtime, consent=False), [])
        now_f = time.time()
        now = int(now_f)
        cookies = parse_cookies(parts.cookie, self._cookie_names)
        stored = self.codec.decode(cookies.get(self.settings.cookie_name), now)
        params = parse_query(parts.query, self._query_names) if parts.query else {}
        if params or len(cookies) > (stored is not None):
            found, utm = capture(params, cookies, link_param=self._link_param)
        else:
            # The common later request: no parameters, no pixel cookies, nothing to capture.
            found, utm = {}, {}
        client = self._client(parts)

        stored_meta = stored.touches.get("meta") if stored is not None else None
        need_fbp = (self._meta_on or ("meta" in found and found["meta"].click_id is not None)) and (
            "meta" not in found or "fbp" not in found["meta"].extra
        )
        if (found or need_fbp) and not self.settings.capture_bots and is_bot(client.user_agent):
            found, need_fbp = {}, False

        if not found and not need_fbp:
            if stored is None:
                return Outcome(self._state(Attribution(client=client)), [])
            return Outcome(
                self._state(
                    Attribution(visitor_id=stored.visitor_id, touches=stored.touches, client=client)
                ),
                [],
            )

        set_cookies: list[str] = []
        if need_fbp or "meta" in found:
            meta = found.get("meta") or Incoming("meta")
            found["meta"] = meta
            self._meta_ids(meta, stored_meta, cookies, now_f, set_cookies)

        touches: dict[str, Touch] = dict(stored.touches) if stored is not None else {}
        landing = client.url[:MAX_LANDING_URL] if client.url else None
        changed = False
        for platform, inc in found.items():
            touch, ch = merge_touch(
                touches.get(platform),
                platform=platform,
                click_id=inc.click_id,
                pixel_id=inc.pixel_id,
                extra=inc.extra,
                utm=utm,
                landing_url=landing,
                now=now,
            )
            if ch:
                touches[platform] = touch
                changed = True

        visitor = stored.visitor_id if stored is not None else new_visitor_id()
        attribution = Attribution(visitor_id=visitor, touches=touches, client=client)
        if changed:
            written = self.codec.set_cookie(attribution)
            if written is not None:
                header, attribution = written
                set_cookies.insert(0, header)
        return Outcome(self._state(attribution), set_cookies)

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
            meta.extra["fbp"] = old or build_fbp(now_ms, _rand.randint(0, 2147483647))
        if not self.settings.write_meta_cookies:
            return
        for name, key in ((META_FBC_COOKIE, "fbc"), (META_FBP_COOKIE, "fbp")):
            value = meta.extra.get(key)
            # Written only when the browser lacks it, and only if it is a valid cookie value:
            # a click id with ";" or "," must never reach a header.
            if value is not None and cookies.get(name) != value and is_cookie_safe(value):
                set_cookies.append(f"{name}={value}{self._meta_attrs}")

    def _state(self, attribution: Attribution) -> RequestState:
        return RequestState(attribution=attribution, runtime=self.runtime, consent=True)
