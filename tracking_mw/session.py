"""The signed attribution cookie: itsdangerous, a dedicated salt, key rotation, a size budget.

What the cookie holds: the visitor id and, per platform, click id, pixel id, first/last seen
(Unix seconds), the landing URL (truncated), UTM tags and the secondary ids ``fbc``, ``fbp``,
``cookie_id``, ``ttp``. Never an IP address, user agent, email or phone: a signed cookie is
readable by anyone who holds it, only its integrity is protected.

- Signed with the newest key of ``Settings.secret_key`` and accepted with any listed key, so
  keys can be rotated without logging visitors out of their attribution.
- ``max_age`` (``Settings.cookie_max_age``) is enforced from the signing time, and a
  future-dated signature is rejected; touches first seen longer ago than ``max_age`` are dropped.
- Anything wrong with a cookie (tampered, expired, future, truncated, not base64, oversize,
  wrong JSON shape) makes it *absent*: :meth:`SessionCodec.decode` returns None, never raises.
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
import json.encoder
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any, cast

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes, want_bytes
from itsdangerous.signer import HMACAlgorithm, SigningAlgorithm

from ._json import dumps_bytes as _fast_json
from ._json import loads as _loads
from .attribution import Attribution, Touch, _touch
from .capture import MAX_ID_LENGTH, MAX_LONG_ID_LENGTH
from .config import MAX_SET_COOKIE_BYTES, PLATFORMS, Secret, Settings

__all__ = ["MAX_LANDING_URL", "SALT", "SessionCodec"]

logger = logging.getLogger("tracking_mw")

SALT = "tracking_mw.attribution.v1"
# A browser keeps at most 4,096 bytes per cookie; a longer raw value cannot be ours.
MAX_COOKIE_CHARS = 4096
MAX_LANDING_URL = 512
_CACHE_SIZE = 4096
_EXTRA_KEYS = frozenset({"fbc", "fbp", "cookie_id", "ttp"})
_PLATFORMS = frozenset(PLATFORMS)

# Compressing pays only for payloads with several touches (repeated landing URLs), and costs
# more CPU than the rest of a landing request together: below this size (base64 about 1,400
# characters, a third of the budget) the payload is sent as it is.
_COMPRESS_FROM = 1024
# A 8 KB window and a small hash table: the same output size as zlib's defaults for payloads
# this small, without initialising (and faulting in) zlib's 256 KB default state each time.
# Any zlib decompressor (window up to 32 KB) reads it, so older cookies and these mix freely.
_ZLIB_WBITS = 13
_ZLIB_MEMLEVEL = 4
_MAX_PAYLOAD = 64 * 1024


def _json_encoder() -> Callable[[Any], str]:
    """Compact JSON (the bytes ``json.dumps(o, separators=(",", ":"))`` gives)."""
    fallback = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return fallback.encode
    # The C encoder json.dumps builds on every call, built once (no circular-reference
    # markers: the payload is made of fresh lists and dicts of strings and ints).
    c_encode = make(
        None,
        fallback.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )

    def encode(o: Any) -> str:
        return "".join(c_encode(o, 0))

    return encode


_json = _json_encoder()
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


class _KeyedBLAKE2b(SigningAlgorithm):
    """BLAKE2b-256 in its keyed mode (BLAKE2's own MAC construction, RFC 7693).

    Why not HMAC: a landing request signs one cookie, and in a busy server process the
    HMAC-SHA256 path (an OpenSSL context copied per call) cost about 6 µs more per landing
    than this single call. Signatures are 32 bytes like HMAC-SHA256's. Cookies signed with
    HMAC-SHA256 (by earlier versions) still verify, so no visitor loses attribution.
    """

    def __init__(self) -> None:
        self.legacy = _HMACSHA256()

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return _blake2b(value, key=key, digest_size=32).digest()

    def verify_signature(self, key: bytes, value: bytes, sig: bytes) -> bool:
        return hmac.compare_digest(sig, self.get_signature(key, value)) or hmac.compare_digest(
            sig, self.legacy.get_signature(key, value)
        )


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
        mac = _blake2b(value, key=key, digest_size=32).digest()
        # 32 bytes are 44 base64 characters ending in one "=": cut it instead of stripping.
        return value + self._sep + _b2a(mac, newline=False)[:43].translate(_URLSAFE)

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


# The payload's version. 2 writes ``last_seen`` as the seconds since ``first_seen``, and the
# landing URL and extra values (Meta's ``fbc``) as [before, after] around the click id when
# they hold it (a landing URL nearly always does): a sixth less cookie for a Kwai landing, a
# quarter less for a Meta one, sent with every request. Version 1 cookies still read.
_VERSION = 2

# Shorter click ids are kept in place: the two-part form would not be smaller.
_MIN_CUT = 8


def _cut(text: str, click: str | None) -> str | list[str]:
    """``text``, or [before, after] around the first ``click`` in it (see _VERSION)."""
    if type(click) is str and len(click) >= _MIN_CUT:
        i = text.find(click)
        if i >= 0:
            return [text[:i], text[i + len(click) :]]
    return text


def _uncut(value: Any, click: str | None) -> Any:
    """The text :func:`_cut` made ``value`` from; anything but a list as it is."""
    if type(value) is not list:
        return value
    if len(value) != 2 or not click or not all(type(v) is str for v in value):
        raise ValueError("bad two-part value")
    return value[0] + click + value[1]


def _cut_map(m: Any, click: str | None) -> Any:
    """A touch's ``extra`` on the wire: values cut around the click id, 0 when empty."""
    if not m:
        return 0
    if type(click) is not str or len(click) < _MIN_CUT:
        return m
    out = dict(m)
    for k, v in out.items():
        if type(v) is str and click in v:
            out[k] = _cut(v, click)
    return out


def _touch_to_wire(t: Touch) -> list[Any]:
    first, last = t.first_seen, t.last_seen
    click = t.click_id
    url = t.landing_url
    return [
        t.platform,
        click,
        t.pixel_id,
        first,
        last - first if type(first) is int and type(last) is int else last,
        _cut(url[:MAX_LANDING_URL], click) if url else None,
        dict(t.utm) or 0,
        _cut_map(dict(t.extra), click),
    ]


def _touch_wire_fast(t: Touch) -> list[Any]:
    """:func:`_touch_to_wire` for the landing request's path: the touch's own maps, not
    copies (orjson writes dicts as they are; anything else sends encode() the long way)."""
    click = t.click_id
    url = t.landing_url
    first = t.first_seen
    return [
        t.platform,
        click,
        t.pixel_id,
        first,
        t.last_seen - first,
        _cut(url[:MAX_LANDING_URL], click) if url else None,
        t.utm or 0,
        _cut_map(t.extra, click),
    ]


def _touch_from_wire(w: Any, version: int = _VERSION) -> Touch:
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
        url = _uncut(url, click)
        if extra and isinstance(extra, dict):
            extra = {k: _uncut(v, click) for k, v in extra.items()}
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
        if age > self.max_age or age < 0:
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
        return signed_at, min(signed_at, oldest) + self.max_age

    def _verify(self, raw: str) -> tuple[int, Attribution, int] | None:
        try:
            payload, signed = self._load(raw)
            if not isinstance(payload, dict):
                return None
            version = payload.get("k")
            if version not in (1, _VERSION) or type(version) is not int:
                return None
            vid = payload.get("v")
            if not isinstance(vid, str) or not 0 < len(vid) <= 64:
                return None
            wire = payload.get("t")
            if not isinstance(wire, list):
                return None
            touches: dict[str, Touch] = {}
            for w in wire:
                t = _touch_from_wire(w, version)
                touches[t.platform] = t
        except (BadData, ValueError, TypeError, UnicodeError, OverflowError):
            return None
        except Exception:  # anything else a hostile value provokes is still just "absent"
            return None
        oldest = min((t.first_seen for t in touches.values()), default=2**62)
        return int(signed.timestamp()), Attribution(visitor_id=vid, touches=touches), oldest

    def _load(self, raw: str) -> tuple[Any, Any]:
        body, signed = self._signer.unsign(raw, max_age=self.max_age, return_timestamp=True)
        if body[:1] == b".":
            # Signed by us, so not a bomb; still bounded.
            data = zlib.decompressobj().decompress(base64_decode(body[1:]), _MAX_PAYLOAD)
        else:
            data = base64_decode(body)
        return _loads(data), signed

    def _dump(self, payload: Any) -> str:
        return self._sign_payload(_json(payload).encode("utf-8"), None)

    def _sign_payload(self, data: bytes, now: int | None) -> str:
        if len(data) >= _COMPRESS_FROM:
            z = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS, _ZLIB_MEMLEVEL)
            packed = z.compress(data) + z.flush()
            body = b"." + _b64(packed) if len(packed) < len(data) - 1 else _b64(data)
        else:
            body = _b64(data)
        if now is None:
            return self._signer.sign(body).decode("ascii")
        return self._signer.sign_at(body, now).decode("ascii")

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
        """
        vid = attribution.visitor_id
        touches = attribution.touches.values()
        try:
            if type(vid) is not str:
                raise TypeError("visitor id")
            # The common case (every touch the middleware makes): one call into orjson.
            data = _fast_json({"k": _VERSION, "v": vid, "t": list(map(_touch_wire_fast, touches))})
        except TypeError:
            # Odd values in a hand-made Attribution: the stdlib encoder's rules (and errors).
            data = _json(
                {"k": _VERSION, "v": vid, "t": list(map(_touch_to_wire, touches))}
            ).encode()
        if now is None or len(data) >= _COMPRESS_FROM:
            return self._sign_payload(data, now)
        # A landing's payload, inline: base64url without padding, then signed.
        body = _b2a(data, newline=False).translate(_URLSAFE).rstrip(b"=")
        return self._signer.sign_at(body, now).decode("ascii")

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
        global _shed_logged
        header = f"{self._prefix}{self.encode(attribution, now)}{self._attrs}"
        if len(header) <= self._budget:
            return header, attribution
        touches = dict(attribution.touches)
        current = attribution
        while True:
            if not touches:
                return None
            oldest = min(touches.values(), key=lambda t: (t.last_seen, t.first_seen))
            del touches[oldest.platform]
            current = Attribution(
                visitor_id=attribution.visitor_id, touches=dict(touches), client=attribution.client
            )
            if not _shed_logged:
                _shed_logged = True
                logger.warning(
                    "tracking_mw: attribution cookie over %s bytes; dropped the oldest touch",
                    MAX_SET_COOKIE_BYTES,
                )
            header = self.header_value(self.encode(current, now))
            if len(header) <= self._budget:
                return header, current

    def clear_cache(self) -> None:
        """Forget decoded cookies (tests; key rotation takes a new codec anyway)."""
        self._cache.clear()
