"""The request logic both middlewares share; asgi.py and wsgi.py only translate protocols.

One request, in order:

1. consent hook (refusal or error: nothing is read, captured or written);
2. the attribution cookie is decoded (cached per exact value, see session.py);
3. identifiers are captured from the query string and cookies (capture.py);
4. bots are recognised (only if something would be captured) and left alone unless
   ``capture_bots``;
5. Meta's ``fbc``/``fbp`` are built or reused; touches are merged (attribution.merge_touch);
6. ``Set-Cookie`` values are produced only for what changed.

A returning visitor's page view without a query string, whose exact Cookie header already
led to nothing being written, gets that answer again straight away (steps 2-6 skipped) for as
long as it cannot change (see ``Core._remember_quiet``). The attribution shown to views, with
the request's client context, is assembled only when a view asks for it (``RequestState``).

``fbp`` is created only when Meta is configured or an ``fbclid`` arrived: a site that does not
use Meta gets no Meta cookie. When the browser lost its ``_fbp`` but the session still has it,
the stored value is written back instead of a new one, and a landing that brings the stored
fbclid again gets the stored ``fbc`` back (with its creation time), so the ids stay stable.
A lost ``_fbc`` is not written back on other pages; the server's events carry the stored
``fbc`` either way.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, MutableMapping
from functools import partial as _partial
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from ._context import RequestState
from ._context import deferred_state as _deferred
from .attribution import (
    LAST_SEEN_REFRESH,
    Attribution,
    ClientContext,
    Touch,
    _attribution,
    _client,
    _merge,
    _random16,
    _touch,
    new_visitor_id,
)
from .capture import (
    COOKIE_NAMES,
    META_FBC_COOKIE,
    META_FBP_COOKIE,
    Incoming,
    _capture,
    _checked_params,
    _encoded_names,
    _param_caps,
    _parse_query,
    _parse_query_text,
    build_fbc,
    build_fbp,
    fbc_created_ms,
    fbc_holds,
    is_cookie_safe,
    parse_cookies,
    pixels_by_click,
    query_names,
    url_without_personal_data,
)
from .client_ip import resolve_client_ip
from .config import Settings
from .session import MAX_LANDING_URL, SessionCodec
from .useragent import MAX_USER_AGENT, is_bot

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Core", "RequestParts", "quote_decoded_path"]

logger = logging.getLogger("tracking_mw")

MAX_URL = 2048
# Kept as they are when a path the server already decoded is quoted back ("%" and "?" not:
# in a decoded path they are characters of the path, escaped in the request).
_DECODED_PATH_SAFE = "/:@!$&'()*+,;=~"


def quote_decoded_path(path: bytes) -> str:
    """The URL path of a path the server already percent-decoded (WSGI's ``PATH_INFO``, an
    ASGI scope without ``raw_path``): the same under both glues."""
    return quote(path, safe=_DECODED_PATH_SAFE) or "/"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[A-Za-z0-9.\-_]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")
# Characters kept verbatim when rebuilding a URL; anything else is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=~%"
_QUERY_SAFE = "/:@!$&'()*+,;=~%?"
# Bytes that quote() would leave alone anyway: skip the call for them. A query made only of
# them is "plain"; deleting them (bytes.translate) is the quickest test for that.
_PLAIN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/:@!$&'()*+,;=%?"
_PLAIN = re.compile(b"[" + re.escape(_PLAIN_BYTES) + b"]*")
_MISSING: Any = object()
_NO_CLIENT = ClientContext()
# Remembered Cookie headers: at most this many, each at most _QUIET_MAX_CHARS long (a few MB
# in the worst case; a miss only means the usual parse and cached decode).
_QUIET_SIZE = 2048
_QUIET_MAX_CHARS = 4096
_logged: set[str] = set()


def _given(source: Any) -> Any:
    """The argument itself: the parts of a request given as its parts, a Cookie header
    remembered as it is."""
    return source


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


class RequestParts(NamedTuple):
    """The raw request parts tracking needs, already extracted by the protocol glue.

    ``path`` is the percent-encoded path; ``query`` the raw query string bytes; ``server``
    is ``host:port`` or the ASGI ``(host, port)`` pair (formatted only when it is needed).
    A named tuple: the ASGI glue builds it with ``tuple.__new__``, without a Python frame.
    """

    scheme: str
    host: str | None
    server: str | tuple[Any, Any] | None
    path: str
    query: bytes
    cookie: str | None
    user_agent: str | None
    referer: str | None
    peer: str | None
    x_forwarded_for: str | None
    forwarded: str | None


# A remembered quiet answer: valid from (a time in seconds, included), to (excluded), the
# attribution, and the builder of the attribution a view sees, given what the glue kept of
# the request (see Core.recall).
_Quiet = tuple[int, int, Attribution, Callable[[Any], Attribution]]


def _settle_cookie_click(inc: Incoming, stored: Touch | None) -> None:
    """Keep a pixel cookie's click id (``inc.from_cookie``) only if it can be this visitor's
    latest click: when nothing is stored for the platform, when it is the stored click id, or
    when the cookie dates its click after the stored one (Meta's ``_fbc`` holds its creation
    time). Otherwise it is a click older than the one stored, or of unknown age (Bigo's
    ``_bge_bbg`` has no time): a stale cookie (not yet rewritten by the pixel, or a copy
    under another Domain that the browser sends first) must not undo a newer landing's
    click, its pixel id and landing URL. The cookie's other identifiers still count."""
    if stored is None or stored.click_id is None or stored.click_id == inc.click_id:
        return
    fbc = inc.extra.get("fbc")
    if fbc is not None:
        created = fbc_created_ms(fbc)
        if created is not None and created > stored.first_seen * 1000:
            return
    inc.click_id = None
    inc.from_cookie = False
    inc.extra.pop("fbc", None)


def _drop_expired_fbc_click(
    found: dict[str, Incoming], inc: Incoming, now: int, max_age: int
) -> None:
    """Meta keeps ``_fbc`` for 90 days, longer than the attribution window: a click it dates
    before the window (pruned from the session, or the session cookie expired) is not
    captured again as if new. Its ``fbp`` still counts."""
    fbc = inc.extra.get("fbc")
    if fbc is None:
        return
    created = fbc_created_ms(fbc)
    if created is not None and now - created // 1000 > max_age:
        inc.click_id = None
        inc.from_cookie = False
        del inc.extra["fbc"]
        if not inc.extra:
            del found["meta"]


class Core:
    """Protocol-independent tracking logic for one :class:`Settings` (no per-request state).

    ``parts_of`` makes a request's parts from what a glue keeps of a remembered request (its
    scope or environ, copied); ``cookie_key`` turns a Cookie header as ``RequestParts``
    holds it into the form the glue looks it up by (:meth:`recall`). By default both are
    the identity: the parts themselves, the header as text.
    """

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None,
        parts_of: Callable[[Any], RequestParts] = _given,
        cookie_key: Callable[[str], str | bytes] = _given,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.codec = SessionCodec(settings)
        self._link_param = settings.roibest.link_param if settings.roibest is not None else None
        self._query_names = query_names(self._link_param)
        self._wanted_query = _encoded_names(self._query_names)
        self._wanted_text = frozenset(self._query_names)
        self._caps = _param_caps(self._query_names)
        self._consent = settings.consent
        self._cookie_names = frozenset((settings.cookie_name, *COOKIE_NAMES))
        self._cookie_name = settings.cookie_name
        self._trusted = settings.trusted_proxies
        self._proxy_header = settings.proxy_header
        self._capture_bots = settings.capture_bots
        self._meta_on = settings.meta is not None
        # Hosts already checked against _HOST (a site sees few): a dict lookup, not a regex.
        self._hosts: dict[str, bool] = {}
        self._agents: dict[str, str | None] = {}
        # The bot flag per user agent as the request sent it (useragent.py caches the parse;
        # this answers a landing with one lookup).
        self._bots: dict[str, bool] = {}
        # Cookie header (as cookie_key makes it) -> (from, to, attribution, its builder) of
        # returning visitors' quiet requests; the builder (_attribution_later with the
        # attribution's parts bound) is made once per entry, not per request.
        self._quiet: dict[str | bytes, _Quiet] = {}
        # The same, for a glue that looks a Cookie header up itself (as recall() does, with
        # its test), or None with a consent hook: the hook must see every request.
        self.remembered = self._quiet if self._consent is None else None
        self._parts_of = parts_of
        self._cookie_key = cookie_key
        meta_attrs = f"; Max-Age={int(settings.meta_cookie_max_age)}; Path=/"
        if settings.cookie_domain:
            meta_attrs += f"; Domain={settings.cookie_domain}"
        if settings.cookie_secure:
            meta_attrs += "; Secure"
        # Not HttpOnly: the Meta pixel in the page reads these cookies.
        self._meta_attrs = meta_attrs + "; SameSite=Lax"

    # -- helpers -----------------------------------------------------------------------------

    def _consents(self, target: MutableMapping[str, Any]) -> bool:
        hook = self._consent
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

    def _agent(self, ua: str) -> str | None:
        """The user agent as stored: ``_clean`` of it, remembered per agent string."""
        # A site sees the same agents over and over: remember what _clean made of them.
        cleaned = _clean(ua, MAX_USER_AGENT)
        if len(self._agents) >= 4096:
            self._agents.clear()
        if len(ua) <= MAX_USER_AGENT:
            self._agents[ua] = cleaned
        return cleaned

    def _host(self, host: str | None, server: str | tuple[Any, Any] | None) -> str:
        """The Host header if it is a plausible host name, else the server's address."""
        if host:
            ok = self._hosts.get(host)
            if ok is None:
                # Hosts already checked (a site sees few): a dict lookup, not a regex.
                ok = _HOST.fullmatch(host) is not None
                if len(self._hosts) < 1024:
                    self._hosts[host] = ok
            if ok:
                return host
        if type(server) is not str:
            server = f"{server[0]}:{server[1]}" if server and server[1] is not None else None
        return server or "localhost"

    # -- the request -------------------------------------------------------------------------

    def process(
        self, parts: RequestParts, target: MutableMapping[str, Any]
    ) -> tuple[RequestState, list[str]]:
        """Capture, merge and decide what to write for one request. Never raises on bad input.

        Returns the state to expose to the app and the ``Set-Cookie`` values to add to its
        response (none when nothing changed).
        """
        runtime = self.runtime
        if self._consent is not None and not self._consents(target):
            return RequestState(None, runtime, False), []
        now_f = time.time()
        now = int(now_f)
        raw_cookie = parts.cookie
        if raw_cookie:
            if not parts.query:
                # The glue asked recall() first, unless a consent hook is set.
                entry = self._quiet.get(self._cookie_key(raw_cookie))
                if entry is not None and entry[0] <= now_f < entry[1]:
                    known = entry[2]
                    build = _partial(self._attribution_of, None, known.visitor_id, known.touches)
                    return _deferred(build, parts, runtime), []
            cookies = parse_cookies(raw_cookie, self._cookie_names)
            stored = self.codec.decode(cookies.get(self._cookie_name), now) if cookies else None
        else:
            cookies, stored = {}, None

        # The page URL (at most MAX_URL characters, URL-safe) and the query's parameters.
        # Without a query the URL is needed only for a capture from cookies or by a view that
        # asks for the attribution: it is made then (_page_url).
        query = parts.query
        checked = False
        params: Mapping[str, str | None]
        url: str | None
        if not query:
            params = {}
            url = None
        else:
            origin = self._origin(parts)
            if len(query) <= MAX_URL * 2 and not query.translate(None, _PLAIN_BYTES):
                # URL-safe ASCII, nearly every real query: decoded once, for the URL and the
                # parse.
                text = query.decode("ascii")
                url = f"{origin}?{text}"
                if "%" in text or "+" in text:
                    params = _parse_query_text(text, self._wanted_text)
                else:
                    params = _checked_params(text, self._caps)
                    checked = True
            else:
                params = _parse_query(query, self._wanted_query)
                q = query[: MAX_URL * 2]
                safe = q.decode("ascii") if _PLAIN.fullmatch(q) else quote(q, safe=_QUERY_SAFE)
                url = f"{origin}?{safe}"
            if len(url) > MAX_URL:
                url = url[:MAX_URL]

        if params or len(cookies) > (stored is not None):
            found, utm = _capture(params, cookies, self._link_param, checked)
            bigo = found.get("bigo")
            if "kwai" in found and bigo is not None and bigo.click_id and not bigo.from_cookie:
                # Both platforms' clicks on one URL: each pixel id goes with its own.
                pixels = pixels_by_click(query)
                found["kwai"].pixel_id = pixels["kwai"]
                bigo.pixel_id = pixels["bigo"]
            meta_in = found.get("meta")
            if meta_in is not None and meta_in.from_cookie:
                _drop_expired_fbc_click(found, meta_in, now, self.codec.max_age)
        else:
            # The common later request: no parameters, no pixel cookies, nothing to capture.
            found, utm = {}, {}

        if self._meta_on:
            meta_found = found.get("meta")
            need_fbp = meta_found is None or "fbp" not in meta_found.extra
        elif "meta" in found:
            meta_found = found["meta"]
            need_fbp = meta_found.click_id is not None and "fbp" not in meta_found.extra
        else:
            need_fbp = False
        if not found and not need_fbp:
            self._remember_quiet(parts, cookies, stored, found)
        elif not self._capture_bots and (ua := parts.user_agent):
            bot = self._bots.get(ua)
            if bot is None:
                bot = self._bot(ua)
            if bot:
                found, need_fbp = {}, False

        if not found and not need_fbp:
            # Nothing to write. The attribution is assembled only if the app asks for it.
            if stored is not None:
                build = _partial(self._attribution_of, url, stored.visitor_id, stored.touches)
            else:
                # The visitor id is drawn now: the attribution must not change if made twice.
                build = _partial(self._attribution_of, url, new_visitor_id(), {})
            return _deferred(build, parts, runtime), []

        set_cookies: list[str] = []
        if need_fbp or "meta" in found:
            meta = found.get("meta") or Incoming("meta")
            found["meta"] = meta
            stored_meta = stored.touches.get("meta") if stored is not None else None
            self._meta_ids(meta, stored_meta, cookies, now_f, set_cookies)

        if url is None:
            url = self._page_url(parts)  # no query: nothing personal in it
        else:
            # Dropped once here, for the cookie and for the view. A landing's query is nearly
            # always its platform's parameters and nothing else.
            url = url_without_personal_data(url, len(params) == query.count(b"&") + 1)
        landing = url[:MAX_LANDING_URL]
        if stored is None:
            # A first visit: every touch is new, as _merge makes it when nothing is stored.
            # The request's own dicts go into the touch when no other touch shares them.
            touches: dict[str, Touch] = {}
            shared = len(found) > 1
            for platform, inc in found.items():
                click = inc.click_id
                touches[platform] = _touch(
                    platform,
                    click,
                    inc.pixel_id,
                    now,
                    now,
                    landing,
                    # A pixel cookie's click came with some earlier page's tags, not these.
                    ({} if click is None or inc.from_cookie else dict(utm) if shared else utm),
                    inc.extra,
                )
            changed = True
            visitor = new_visitor_id()
        else:
            touches = dict(stored.touches)
            changed = False
            for platform, inc in found.items():
                old = touches.get(platform)
                if inc.from_cookie:
                    _settle_cookie_click(inc, old)
                touch, ch = _merge(
                    old,
                    platform,
                    inc.click_id,
                    inc.pixel_id,
                    inc.extra,
                    {} if inc.from_cookie else utm,
                    landing,
                    now,
                )
                if ch:
                    touches[platform] = touch
                    changed = True
            visitor = stored.visitor_id

        kept: Mapping[str, Touch] = touches
        if not changed and not set_cookies:
            # Pixel cookies captured again with nothing new (every page view of a visitor
            # on a site that uses Meta): as quiet as a request with nothing to capture.
            self._remember_quiet(parts, cookies, stored, found)
        if changed:
            written = self.codec.set_cookie_of(visitor, touches, now)
            if written is not None:
                header, kept = written  # the oldest touches may have been shed to fit
                set_cookies.insert(0, header)
        build = _partial(self._attribution_of, url, visitor, kept, clean=True)
        return _deferred(build, parts, runtime), set_cookies

    def recall(self, cookie: str | bytes) -> Callable[[Any], Attribution] | None:
        """For a request without a query string whose Cookie header (as ``cookie_key``
        makes it) is remembered (see _remember_quiet): the builder of its attribution. The
        glue sets ``(build, kept, runtime)`` as the request's state (``_context.Deferred``),
        ``kept`` being what it keeps of the request for ``parts_of``. Otherwise ``None``:
        then ``process()`` handles the request.

        A returning visitor's page view, seen before with this very Cookie header and
        nothing to capture, gets the same answer again without parsing or decoding, and
        without the rest of the request being read unless a view asks for the attribution.
        With a consent hook this is never used: the hook sees every request in
        ``process()``.
        """
        remembered = self.remembered
        if remembered is None:
            return None
        entry = remembered.get(cookie)
        if entry is not None and entry[0] <= time.time() < entry[1]:
            return entry[3]
        return None

    def _attribution_later(
        self, visitor: str, touches: Mapping[str, Touch], source: Any
    ) -> Attribution:
        """:meth:`_attribution_of` with the request parts made now from ``source``. Never
        raises."""
        try:
            parts = self._parts_of(source)
        except Exception as exc:  # tracking must never break the host app
            logger.error("tracking_mw: client context not read: %s", type(exc).__name__)
            return _attribution(visitor, touches, _NO_CLIENT)
        return self._attribution_of(None, visitor, touches, parts)

    def _remember_quiet(
        self,
        parts: RequestParts,
        cookies: dict[str, str],
        stored: Attribution | None,
        found: Mapping[str, Incoming],
    ) -> None:
        """Remember that a request without a query and with this Cookie header writes
        nothing and shows ``stored``, for as long as that cannot change. (Called for any
        request that writes nothing, with what it ``found`` in its cookies; only those
        without a query and with a valid session cookie are kept.)

        The header alone decides what is captured and merged; a bot's request captures
        nothing, which also writes nothing and shows ``stored``. The clock decides the rest:
        the cookie's validity and pruning (its stable span), and the hourly ``last_seen``
        refresh of a click id that a pixel cookie in this header brings again (Bigo's
        ``_bge_bbg``, Meta's ``_fbc``), hence the end time. A click id only a landing's query
        brings (Kwai's, most platforms') is never refreshed by this header: a visitor who
        clicked days ago is remembered as long as one who clicked a minute ago.
        """
        raw_cookie = parts.cookie
        if parts.query or stored is None or not raw_cookie or len(raw_cookie) > _QUIET_MAX_CHARS:
            return
        span = self.codec.stable_span(cookies[self._cookie_name])
        if span is None:
            return
        until = span[1]
        touches = stored.touches
        for platform, inc in found.items():
            # Nothing was written, so a click id found here is the one stored: it refreshes
            # that touch's last_seen once the hour is up.
            t = touches.get(platform)
            if inc.click_id is not None and t is not None:
                until = min(until, t.last_seen + LAST_SEEN_REFRESH - 1)
        quiet = self._quiet
        if len(quiet) >= _QUIET_SIZE:
            quiet.clear()
        build = _partial(self._attribution_later, stored.visitor_id, stored.touches)
        quiet[self._cookie_key(raw_cookie)] = (span[0], until + 1, stored, build)

    def _origin(self, parts: RequestParts) -> str:
        """``scheme://host/path`` of the request (no query string)."""
        host = parts.host
        if not host or not self._hosts.get(host):
            host = self._host(host, parts.server)
        return f"{parts.scheme}://{host}{parts.path}"

    def _page_url(self, parts: RequestParts) -> str:
        """The URL of a request without a query string (see process())."""
        url = self._origin(parts)
        return url[:MAX_URL] if len(url) > MAX_URL else url

    def _agent_of(self, ua: str) -> str | None:
        agent = self._agents.get(ua, _MISSING)
        return self._agent(ua) if agent is _MISSING else agent

    def _bot(self, ua: str) -> bool:
        """Whether the agent stored for ``ua`` is a bot's, remembered per agent string."""
        agent = self._agent_of(ua)
        bot = bool(agent) and is_bot(agent)
        # A user agent over the cap (truncated before parsing) is never a key.
        if len(self._bots) < 4096 and len(ua) <= MAX_USER_AGENT:
            self._bots[ua] = bot
        return bot

    def _attribution_of(
        self,
        url: str | None,
        visitor: str,
        touches: Mapping[str, Touch],
        parts: RequestParts,
        clean: bool = False,
    ) -> Attribution:
        """The request's attribution with its client context, made when a view first asks.

        ``url`` is the page URL of a request with a query (``clean``: its personal data
        already dropped), or None: then it is made from ``parts``, without a query.
        Runs inside the app's view: it must never raise. Equal inputs give equal results,
        so two threads of one request racing here agree.
        """
        try:
            if url is None:
                url = self._page_url(parts)
            elif not clean:
                url = url_without_personal_data(url)
            ua = parts.user_agent
            trusted = self._trusted
            referer = parts.referer
            client = _client(
                resolve_client_ip(
                    parts.peer,
                    x_forwarded_for=parts.x_forwarded_for,
                    forwarded=parts.forwarded,
                    trusted=trusted,  # type: ignore[arg-type]
                    header=self._proxy_header,
                )
                if trusted
                else parts.peer,
                self._agent_of(ua) if ua else None,
                url,
                url_without_personal_data(r)
                if referer and (r := _clean(referer, MAX_URL))
                else None,
            )
        except Exception as exc:  # tracking must never break the host app
            logger.error("tracking_mw: client context not read: %s", type(exc).__name__)
            client = _NO_CLIENT
        return _attribution(visitor, touches, client)

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
