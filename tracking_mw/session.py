"""The signed attribution cookie: itsdangerous, a dedicated salt, key rotation, a size budget.

What the cookie holds: the visitor id and, per platform, click id, pixel id, first/last seen
(Unix seconds), the landing URL (truncated), UTM tags and the secondary ids ``fbc``, ``fbp``,
``cookie_id``, ``ttp``. Never an IP address, user agent, email or phone: a signed cookie is
readable by anyone who holds it, only its integrity is protected.

- Signed with the newest key of ``Settings.secret_key`` and accepted with any listed key, so
  keys can be rotated without logging visitors out of their attribution.
- ``max_age`` (``Settings.cookie_max_age``) is enforced from the signing time, and a
  future-dated signature is rejected (beyond :data:`CLOCK_LEEWAY`: another host of the site,
  its clock a little ahead, may have signed it); touches first seen longer ago than
  ``max_age`` are dropped.
- Anything wrong with a cookie (tampered, expired, future, truncated, malformed, oversize, a
  payload of the wrong shape) makes it *absent*: :meth:`SessionCodec.decode` returns None,
  never raises.
- The payload is short plain text (see "Cookie formats" below) because the browser sends it
  with every request, and a server pays per byte of header it reads; the forms earlier
  versions wrote (base64url JSON) still read.
- Verifying a signature is the expensive part of a request that changes nothing, and the answer
  for one exact cookie string never changes (same keys, same bytes), so decoded cookies are kept
  in a small bounded cache keyed by the raw value; the age check is still made every time.
- The whole ``Set-Cookie`` line stays within :data:`~tracking_mw.config.MAX_SET_COOKIE_BYTES`:
  the oldest touches (by last seen) are shed until it fits, and an oversize cookie is never sent.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import logging
import string
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any, cast
from urllib.parse import quote, unquote

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes, want_bytes
from itsdangerous.signer import HMACAlgorithm, SigningAlgorithm

from ._json import loads as _loads
from .attribution import Attribution, Touch, _touch
from .capture import MAX_ID_LENGTH, MAX_LONG_ID_LENGTH
from .config import MAX_SET_COOKIE_BYTES, PLATFORMS, Secret, Settings

__all__ = ["CLOCK_LEEWAY", "MAX_LANDING_URL", "SALT", "SessionCodec"]

logger = logging.getLogger("tracking_mw")

SALT = "tracking_mw.attribution.v1"
# A browser keeps at most 4,096 bytes per cookie; a longer raw value cannot be ours.
MAX_COOKIE_CHARS = 4096
#: Seconds a signature may lie in the future and still count. A site served by several hosts
#: signs on one and reads on another: with the reader's clock behind, a visitor's next page
#: would otherwise see their fresh cookie as forged and lose the click (a request that
#: captures anything then writes a new session over it).
CLOCK_LEEWAY = 60
MAX_LANDING_URL = 512
_CACHE_SIZE = 4096
_EXTRA_KEYS = frozenset({"fbc", "fbp", "cookie_id", "ttp"})
_PLATFORMS = frozenset(PLATFORMS)

# Compressing pays only for payloads with several touches (repeated landing URLs), and costs
# more CPU than the rest of a landing request together: below this size (a quarter of the
# budget) the payload is sent as it is.
_COMPRESS_FROM = 1024
# A 8 KB window and a small hash table: the same output size as zlib's defaults for payloads
# this small, without initialising (and faulting in) zlib's 256 KB default state each time.
# Any zlib decompressor (window up to 32 KB) reads it, so older cookies and these mix freely.
_ZLIB_WBITS = 13
_ZLIB_MEMLEVEL = 4
_MAX_PAYLOAD = 64 * 1024


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_b2a = binascii.b2a_base64


def _b64(data: bytes) -> bytes:
    """``itsdangerous.encoding.base64_encode`` (same bytes), without its Python layers."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


_shed_logged = False


class _HMACSHA256(HMACAlgorithm):
    """itsdangerous' HMAC-SHA256, with the keyed state reused (same bytes, less work).

    Cookies were signed with it before keyed BLAKE2b; it still verifies them."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha256)
        # The keyed HMAC state per derived key; copying it skips the key set-up per call.
        self._keyed: dict[bytes, Any] = {}

    def keyed(self, key: bytes) -> Any:
        """An HMAC-SHA256 object keyed with ``key``, to ``copy()`` and feed the message."""
        state = self._keyed.get(key)
        if state is None:
            mac = hmac.new(key, digestmod=hashlib.sha256)
            # hmac.HMAC wraps OpenSSL's HMAC object when it can; that object has the same
            # copy/update/digest methods without the Python layer (a third of the cost).
            state = self._keyed[key] = getattr(mac, "_hmac", None) or mac
        return state

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        mac = self.keyed(key).copy()
        mac.update(value)
        return cast(bytes, mac.digest())


_blake2b = hashlib.blake2b
# The tag: 128 bits, the size HMAC tags are commonly cut to (a forgery still takes 2**128
# tries), 21 characters fewer in every request's Cookie header than a 256-bit one.
_TAG_BYTES = 16


class _KeyedBLAKE2b(SigningAlgorithm):
    """BLAKE2b in its keyed mode (BLAKE2's own MAC construction, RFC 7693), 128-bit tags.

    Why not HMAC: a landing request signs one cookie, and in a busy server process the
    HMAC-SHA256 path (an OpenSSL context copied per call) cost about 6 µs more per landing
    than this single call. Cookies signed with a 256-bit BLAKE2b tag or with HMAC-SHA256 (by
    earlier versions) still verify, so no visitor loses attribution.
    """

    def __init__(self) -> None:
        self.legacy = _HMACSHA256()

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return _blake2b(value, key=key, digest_size=_TAG_BYTES).digest()

    def verify_signature(self, key: bytes, value: bytes, sig: bytes) -> bool:
        if len(sig) == _TAG_BYTES:
            return hmac.compare_digest(sig, self.get_signature(key, value))
        # 32 bytes: BLAKE2b-256 (written before the shorter tag) or HMAC-SHA256 (before that).
        return hmac.compare_digest(
            sig, _blake2b(value, key=key, digest_size=32).digest()
        ) or hmac.compare_digest(sig, self.legacy.get_signature(key, value))


class _Signer(TimestampSigner):
    """itsdangerous' TimestampSigner with each key's derivation done once, not per call.

    Verification is itsdangerous' own ``unsign``. :meth:`sign` produces the very bytes
    ``TimestampSigner.sign`` does with the same algorithm (a test compares them), through the
    same ``get_timestamp`` and derived key, with the encoded timestamp reused within a second.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes | str | None, bytes] = {}
        self._sep = want_bytes(self.sep)
        self._stamp: tuple[int, bytes] = (-1, b"")
        self._signing: bytes | None = None

    def sign(self, value: str | bytes) -> bytes:
        """``value.<timestamp>.<signature>``, exactly as ``TimestampSigner.sign``."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        return self.sign_at(value, self.get_timestamp())

    def sign_at(self, value: bytes, now: int) -> bytes:
        """:meth:`sign` with the timestamp given (the request's clock, already read)."""
        stamp = self._stamp
        if stamp[0] != now:
            stamp = self._stamp = (now, self._sep + base64_encode(int_to_bytes(now)))
        key = self._signing
        if key is None:
            if not isinstance(self.algorithm, _KeyedBLAKE2b):
                value += stamp[1]
                return value + self._sep + self.get_signature(value)
            # Signing always uses the newest key: derived once.
            key = self._signing = self.derive_key()
        value += stamp[1]
        mac = _blake2b(value, key=key, digest_size=_TAG_BYTES).digest()
        # 16 bytes are 24 base64 characters ending in "==": cut them instead of stripping.
        return value + self._sep + _b2a(mac, newline=False)[:22].translate(_URLSAFE)

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self._derived.get(secret_key)
        if key is None:
            key = self._derived[secret_key] = super().derive_key(secret_key)
        return key


def _str_or_none(v: Any, cap: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > cap:
        raise ValueError("bad string")
    return v


def _str_map(v: Any, keys: frozenset[str] | None) -> dict[str, str]:
    if not v:
        return {}
    if not isinstance(v, dict):
        raise ValueError("bad map")
    out: dict[str, str] = {}
    for k, x in v.items():
        if not isinstance(x, str) or len(x) > MAX_LONG_ID_LENGTH:
            raise ValueError("bad map value")
        if keys is None or k in keys:
            out[k] = x
    return out


# Cookie formats. Versions 1 and 2 (still read) were base64url of a JSON object
# {"k": version, "v": visitor id, "t": [touch, ...]}, each touch a list of 8: platform, click id,
# pixel id, first seen, last seen, landing URL, UTM map, extra map. Version 2 wrote last seen
# as seconds after first seen, and the landing URL and extra values as [before, after]
# around the click id.
#
# Version 3 (written now) is cookie-safe text with no base64: "~" (never a base64 character),
# the visitor id, then one "|" and the touch per touch; a touch is its 8 fields joined by "!":
# platform, click id, pixel id (empty for none), first seen, last seen minus first seen, the
# landing URL, UTM and extra maps as "key^value^key^value". A URL or extra value holding the
# click id has it replaced by "*". Every text is percent-escaped (UTF-8) where it holds a
# character outside the cookie-safe set or one of "%|!^*". A Kwai landing's cookie is 40%
# shorter than version 2's, and the browser sends it with every request: the server reads
# a third fewer bytes of Cookie header per page view.
_V3 = b"~"
_SAFE = "#$&'()+/:<=>?@[]`{}"  # with A-Z a-z 0-9 _ . - ~, which quote() never escapes
_SAFE_BYTES = (string.ascii_letters + string.digits + "_.-~" + _SAFE).encode("ascii")
# Shorter click ids are kept in place: cutting them out would not save anything.
_MIN_CUT = 8


def _plain(text: str) -> bool:
    """Whether ``text`` holds only cookie-safe characters other than % | ! ^ * (raises
    ``TypeError`` for a non-text). A C loop: a regex search took twice as long."""
    return text.isascii() and not text.encode("ascii").translate(None, _SAFE_BYTES)


def _esc(text: str) -> str:
    """``text`` with every character outside the cookie-safe set (and % | ! ^ *) escaped."""
    if _plain(text):
        return text
    return quote(text, safe=_SAFE, errors="surrogatepass")


_chain = chain.from_iterable


def _unesc(text: str) -> str:
    return unquote(text, errors="surrogatepass") if "%" in text else text


def _cut(text: str, click: str, esc: Callable[[str], str]) -> str:
    """``text`` escaped by ``esc``, its first ``click`` (if any) written as ``*``."""
    if click:
        i = text.find(click)
        if i >= 0:
            return esc(text[:i]) + "*" + esc(text[i + len(click) :])
    return esc(text)


def _uncut(field: str, click: str | None) -> str:
    """The text :func:`_cut` made ``field`` from."""
    before, star, after = field.partition("*")
    if not star:
        return _unesc(field)
    if not click or "*" in after:
        raise ValueError("bad cut")
    return _unesc(before) + click + _unesc(after)


def _map_text(m: Mapping[str, str], click: str, esc: Callable[[str], str]) -> str:
    return "^".join([esc(k) + "^" + _cut(v, click, esc) for k, v in m.items()])


def _map_of(field: str, click: str | None, keys: frozenset[str] | None) -> dict[str, str]:
    if not field:
        return {}
    items = field.split("^")
    if len(items) % 2:
        raise ValueError("bad map")
    out: dict[str, str] = {}
    for i in range(0, len(items), 2):
        k = _unesc(items[i])
        if keys is None or k in keys:
            v = _uncut(items[i + 1], click)
            if len(v) > MAX_LONG_ID_LENGTH:
                raise ValueError("bad map value")
            out[k] = v
    return out


def _touch_head(t: Touch) -> tuple[str, str, str, str]:
    """A touch's click id, its times field pair (``first!last-first``), its landing URL as
    stored and the click id to cut out of texts (empty when too short to be worth it).
    Raises ``TypeError`` for non-int times (a hand-made touch)."""
    click = t.click_id or ""
    first, last = t.first_seen, t.last_seen
    if type(first) is not int or type(last) is not int:
        raise TypeError("touch times must be int")
    url = t.landing_url[:MAX_LANDING_URL] if t.landing_url else ""
    return click, f"{first}!{last - first}", url, click if len(click) >= _MIN_CUT else ""


def _touch_text(t: Touch) -> str:
    """A touch in the version 3 form, every text escaped as needed. Raises ``TypeError`` for
    a non-text id, URL or map value, or non-int times (a hand-made touch; the middleware
    never makes one)."""
    click, times, url, cut = _touch_head(t)
    return "!".join(
        (
            _esc(t.platform),
            _esc(click),
            _esc(t.pixel_id or ""),
            times,
            _cut(url, cut, _esc),
            _map_text(t.utm, "", _esc),
            _map_text(t.extra, cut, _esc),
        )
    )


# str.replace unbound: a value that is not text raises TypeError, as joining it would.
_replace = str.replace


def _plain_payload(vid: str, touches: Iterable[Touch]) -> bytes | None:
    """The version 3 payload (ASCII bytes) built without escaping, when no text in it needs
    escaping (nearly always: ids, URLs and UTM tags are cookie-safe); otherwise None.

    One check of the whole payload instead of one per text: deleting its cookie-safe bytes
    must leave exactly as many bytes as separators were put in between the texts. Every
    separator is outside the cookie-safe set, so any byte a text adds (a separator of its own,
    or anything that needs escaping) makes the count differ. Equal to what the escaping path
    (:func:`_touch_text`) makes whenever it returns a payload; raises ``TypeError`` as that
    path does.
    """
    texts = [vid]
    seps = 0
    for t in touches:
        click, times, url, cut = _touch_head(t)
        if cut:
            # One "*" for the click id, if it is there: the text gets shorter by the rest.
            n = len(url)
            url = _replace(url, cut, "*", 1)
            seps += len(url) != n
        utm = t.utm
        if utm:
            utm_text = "^".join(_chain(utm.items()))
            seps += 2 * len(utm) - 1
        else:
            utm_text = ""
        extra = t.extra
        if extra:
            items: list[str] = []
            for k, v in extra.items():
                if cut:
                    n = len(v)
                    v = _replace(v, cut, "*", 1)
                    seps += len(v) != n
                items += (k, v)
            extra_text = "^".join(items)
            seps += 2 * len(extra) - 1
        else:
            extra_text = ""
        # "|" before the touch and "!" between its eight fields (one inside ``times``).
        seps += 8
        texts.append(
            "!".join(
                (
                    t.platform,
                    click,
                    t.pixel_id or "",
                    times,
                    url,
                    utm_text,
                    extra_text,
                )
            )
        )
    payload = "~" + "|".join(texts)
    if payload.isascii():
        data = payload.encode("ascii")
        if len(data.translate(None, _SAFE_BYTES)) == seps:
            return data
    return None


def _text_str(field: str, cap: int) -> str | None:
    """An optional text field: empty means none."""
    if not field:
        return None
    v = _unesc(field)
    if len(v) > cap:
        raise ValueError("bad string")
    return v


def _touch_of_text(text: str) -> Touch:
    fields = text.split("!")
    if len(fields) != 8:
        raise ValueError("bad touch")
    platform, click, pixel, first, last, url, utm, extra = fields
    if platform not in _PLATFORMS:
        raise ValueError("unknown platform")
    click_id = _text_str(click, MAX_LONG_ID_LENGTH)
    first_seen = int(first)
    landing = _uncut(url, click_id) if url else None
    if landing is not None and (not landing or len(landing) > MAX_LANDING_URL):
        raise ValueError("bad landing URL")
    return _touch(
        platform,
        click_id,
        _text_str(pixel, MAX_ID_LENGTH),
        first_seen,
        first_seen + int(last),
        landing,
        _map_of(utm, None, None),
        _map_of(extra, click_id, _EXTRA_KEYS),
    )


def _parse_text(data: bytes) -> tuple[str, dict[str, Touch]]:
    """Visitor id and touches of a version 3 payload (``data`` starts with ``~``)."""
    vid, *touches = data[1:].decode("ascii").split("|")
    vid = _unesc(vid)
    out: dict[str, Touch] = {}
    for text in touches:
        t = _touch_of_text(text)
        out[t.platform] = t
    return vid, out


def _json_uncut(value: Any, click: str | None) -> Any:
    """A version 2 [before, after] value whole again; anything but a list as it is."""
    if type(value) is not list:
        return value
    if len(value) != 2 or not click or not all(type(v) is str for v in value):
        raise ValueError("bad two-part value")
    return value[0] + click + value[1]


def _touch_from_json(w: Any, version: int) -> Touch:
    if not isinstance(w, list) or len(w) != 8:
        raise ValueError("bad touch")
    platform, click, pixel, first, last, url, utm, extra = w
    if platform not in _PLATFORMS:
        raise ValueError("unknown platform")
    if type(first) is not int or type(last) is not int:
        raise ValueError("bad times")
    click = _str_or_none(click, MAX_LONG_ID_LENGTH)
    if version >= 2:
        last += first
        url = _json_uncut(url, click)
        if extra and isinstance(extra, dict):
            extra = {k: _json_uncut(v, click) for k, v in extra.items()}
    return _touch(
        platform,
        click,
        _str_or_none(pixel, MAX_ID_LENGTH),
        first,
        last,
        _str_or_none(url, MAX_LANDING_URL),
        _str_map(utm, None),
        _str_map(extra, _EXTRA_KEYS),
    )


def _parse_json(data: bytes) -> tuple[str, dict[str, Touch]]:
    """Visitor id and touches of a version 1 or 2 payload."""
    payload = _loads(data)
    if not isinstance(payload, dict):
        raise ValueError("not an object")
    version = payload.get("k")
    if version not in (1, 2) or type(version) is not int:
        raise ValueError("unknown version")
    vid = payload.get("v")
    wire = payload.get("t")
    if not isinstance(vid, str) or not isinstance(wire, list):
        raise ValueError("bad payload")
    out: dict[str, Touch] = {}
    for w in wire:
        t = _touch_from_json(w, version)
        out[t.platform] = t
    return vid, out


class SessionCodec:
    """Encode and decode the attribution cookie for one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        # Settings normalises secret_key to a tuple of Secret at construction.
        keys = [s.reveal() for s in cast("tuple[Secret, ...]", settings.secret_key)]
        # itsdangerous signs with the *last* key and accepts all; settings list newest first.
        self._signer = _Signer(
            list(reversed(keys)),
            salt=SALT,
            key_derivation="hmac",
            digest_method=hashlib.sha256,
            algorithm=_KeyedBLAKE2b(),
        )
        self.name = settings.cookie_name
        self.max_age = int(settings.cookie_max_age)
        self._cache: dict[str, tuple[int, Attribution, int]] = {}
        attrs = f"; Max-Age={self.max_age}; Path=/"
        if settings.cookie_domain:
            attrs += f"; Domain={settings.cookie_domain}"
        attrs += "; HttpOnly"
        if settings.cookie_secure:
            attrs += "; Secure"
        attrs += f"; SameSite={str(settings.cookie_samesite).capitalize()}"
        self._attrs = attrs
        self._prefix = self.name + "="
        self._budget = MAX_SET_COOKIE_BYTES - len("Set-Cookie: ")

    # -- reading -----------------------------------------------------------------------------

    def decode(self, raw: str | None, now: int | None = None) -> Attribution | None:
        """The attribution in cookie value ``raw``, or None when it is absent or not valid."""
        if not raw or len(raw) > MAX_COOKIE_CHARS:
            return None
        if now is None:
            now = int(time.time())
        hit = self._cache.get(raw)
        if hit is None:
            hit = self._verify(raw)
            if hit is None:
                return None
            self._remember(raw, hit)
        signed_at, attribution, oldest = hit
        age = now - signed_at
        if age > self.max_age or age < -CLOCK_LEEWAY:
            return None
        if now - oldest > self.max_age:
            attribution = self._prune(attribution, now)
        return attribution

    def stable_span(self, raw: str) -> tuple[int, int] | None:
        """The times (inclusive, seconds) over which ``decode(raw, now)`` keeps giving what it
        gives now, or None when ``raw`` is not a verified value in the cache."""
        hit = self._cache.get(raw)
        if hit is None:
            return None
        signed_at, _, oldest = hit
        return signed_at - CLOCK_LEEWAY, min(signed_at, oldest) + self.max_age

    def _verify(self, raw: str) -> tuple[int, Attribution, int] | None:
        try:
            # The signature only: its age is judged by decode(), against its own clock.
            body, signed = self._signer.unsign(raw, return_timestamp=True)
            if body[:1] == b".":
                # Signed by us, so not a bomb; still bounded.
                data = zlib.decompressobj().decompress(base64_decode(body[1:]), _MAX_PAYLOAD)
            elif body[:1] == _V3:
                data = body
            else:
                data = base64_decode(body)
            vid, touches = _parse_text(data) if data[:1] == _V3 else _parse_json(data)
            if not 0 < len(vid) <= 64:
                return None
        except (BadData, ValueError, TypeError, UnicodeError, OverflowError):
            return None
        except Exception:  # anything else a hostile value provokes is still just "absent"
            return None
        oldest = min((t.first_seen for t in touches.values()), default=2**62)
        return int(signed.timestamp()), Attribution(visitor_id=vid, touches=touches), oldest

    def _dump(self, payload: Any) -> str:
        """A version 1 or 2 cookie value (base64url JSON) for ``payload``: earlier versions
        wrote these, and they still read."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        return self._signer.sign(_b64(data)).decode("ascii")

    def _sign_payload(self, data: bytes, now: int | None) -> str:
        if len(data) >= _COMPRESS_FROM:
            z = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS, _ZLIB_MEMLEVEL)
            packed = z.compress(data) + z.flush()
            if len(packed) * 4 // 3 + 1 < len(data):
                data = b"." + _b64(packed)
        if now is None:
            return self._signer.sign(data).decode("ascii")
        return self._signer.sign_at(data, now).decode("ascii")

    def _remember(self, raw: str, entry: tuple[int, Attribution, int]) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            try:
                for key in list(cache)[: _CACHE_SIZE // 8]:
                    cache.pop(key, None)
            except RuntimeError:  # resized by another thread meanwhile; harmless
                pass
        cache[raw] = entry

    def _prune(self, attribution: Attribution, now: int) -> Attribution:
        keep = {p: t for p, t in attribution.touches.items() if now - t.first_seen <= self.max_age}
        return Attribution(visitor_id=attribution.visitor_id, touches=keep)

    # -- writing -----------------------------------------------------------------------------

    def encode(self, attribution: Attribution, now: int | None = None) -> str:
        """The signed cookie value for ``attribution`` (client context is never included).

        ``now`` is the signing time (Unix seconds); by default the signer reads the clock.
        Raises ``TypeError`` for values no touch made by the middleware holds.
        """
        return self._encode(attribution.visitor_id, attribution.touches, now)

    def _encode(self, vid: str, touches: Mapping[str, Touch], now: int | None) -> str:
        if type(vid) is not str:
            raise TypeError("visitor id must be a string")
        values = touches.values()
        data = _plain_payload(vid, values)
        if data is None:
            texts = [_esc(vid)]
            texts += map(_touch_text, values)
            data = ("~" + "|".join(texts)).encode("ascii")
        return self._sign_payload(data, now)

    def header_value(self, value: str) -> str:
        """The ``Set-Cookie`` header value carrying cookie value ``value``."""
        return self._prefix + value + self._attrs

    def set_cookie(
        self, attribution: Attribution, now: int | None = None
    ) -> tuple[str, Attribution] | None:
        """``(Set-Cookie value, what it stores)`` within the size budget, or None.

        Sheds the touches seen longest ago until the header fits; logs the first time.
        ``now`` is the signing time, as for :meth:`encode`.
        """
        written = self.set_cookie_of(attribution.visitor_id, attribution.touches, now)
        if written is None:
            return None
        header, kept = written
        if kept is not attribution.touches:
            attribution = Attribution(
                visitor_id=attribution.visitor_id, touches=kept, client=attribution.client
            )
        return header, attribution

    def set_cookie_of(
        self, vid: str, touches: Mapping[str, Touch], now: int | None = None
    ) -> tuple[str, Mapping[str, Touch]] | None:
        """:meth:`set_cookie` for a visitor id and its touches (no :class:`Attribution` is
        made, the request path's form): ``(Set-Cookie value, the touches it stores)``, the
        very ``touches`` given when none had to be shed, or None."""
        global _shed_logged
        header = f"{self._prefix}{self._encode(vid, touches, now)}{self._attrs}"
        if len(header) <= self._budget:
            return header, touches
        kept = dict(touches)
        while True:
            if not kept:
                return None
            oldest = min(kept.values(), key=lambda t: (t.last_seen, t.first_seen))
            del kept[oldest.platform]
            if not _shed_logged:
                _shed_logged = True
                logger.warning(
                    "tracking_mw: attribution cookie over %s bytes; dropped the oldest touch",
                    MAX_SET_COOKIE_BYTES,
                )
            header = self.header_value(self._encode(vid, kept, now))
            if len(header) <= self._budget:
                return header, kept

    def clear_cache(self) -> None:
        """Forget decoded cookies (tests; key rotation takes a new codec anyway)."""
        self._cache.clear()
