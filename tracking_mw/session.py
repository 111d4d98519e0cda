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

import hashlib
import hmac
import json
import logging
import time
import zlib
from typing import Any, cast

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

from .attribution import Attribution, Touch
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

# Compressing pays only for payloads with several touches (repeated landing URLs).
_COMPRESS_FROM = 400
_MAX_PAYLOAD = 64 * 1024

_JSON = json.JSONEncoder(separators=(",", ":"))

_shed_logged = False


class _HMACSHA256(HMACAlgorithm):
    """itsdangerous' HMAC-SHA256, with the keyed state reused (same bytes, less work)."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha256)
        # The keyed HMAC state per derived key; copying it skips the key set-up per call.
        self._keyed: dict[bytes, hmac.HMAC] = {}

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        keyed = self._keyed.get(key)
        if keyed is None:
            keyed = self._keyed[key] = hmac.new(key, digestmod=hashlib.sha256)
        mac = keyed.copy()
        mac.update(value)
        return mac.digest()


class _Signer(TimestampSigner):
    """itsdangerous' TimestampSigner with each key's derivation done once, not per call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes | str | None, bytes] = {}

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


def _touch_to_wire(t: Touch) -> list[Any]:
    url = t.landing_url[:MAX_LANDING_URL] if t.landing_url else None
    return [
        t.platform,
        t.click_id,
        t.pixel_id,
        t.first_seen,
        t.last_seen,
        url,
        dict(t.utm) or 0,
        dict(t.extra) or 0,
    ]


def _touch_from_wire(w: Any) -> Touch:
    if not isinstance(w, list) or len(w) != 8:
        raise ValueError("bad touch")
    platform, click, pixel, first, last, url, utm, extra = w
    if platform not in _PLATFORMS:
        raise ValueError("unknown platform")
    if type(first) is not int or type(last) is not int:
        raise ValueError("bad times")
    return Touch(
        platform=platform,
        click_id=_str_or_none(click, MAX_LONG_ID_LENGTH),
        pixel_id=_str_or_none(pixel, MAX_ID_LENGTH),
        first_seen=first,
        last_seen=last,
        landing_url=_str_or_none(url, MAX_LANDING_URL),
        utm=_str_map(utm, None),
        extra=_str_map(extra, _EXTRA_KEYS),
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
            algorithm=_HMACSHA256(),
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

    def _verify(self, raw: str) -> tuple[int, Attribution, int] | None:
        try:
            payload, signed = self._load(raw)
            if not isinstance(payload, dict) or payload.get("k") != 1:
                return None
            vid = payload.get("v")
            if not isinstance(vid, str) or not 0 < len(vid) <= 64:
                return None
            wire = payload.get("t")
            if not isinstance(wire, list):
                return None
            touches: dict[str, Touch] = {}
            for w in wire:
                t = _touch_from_wire(w)
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
        return json.loads(data), signed

    def _dump(self, payload: Any) -> str:
        data = _JSON.encode(payload).encode("utf-8")
        body = base64_encode(data)
        if len(data) >= _COMPRESS_FROM:
            packed = zlib.compress(data)
            if len(packed) < len(data) - 1:
                body = b"." + base64_encode(packed)
        return self._signer.sign(body).decode("ascii")

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

    def encode(self, attribution: Attribution) -> str:
        """The signed cookie value for ``attribution`` (client context is never included)."""
        payload = {
            "k": 1,
            "v": attribution.visitor_id,
            "t": [_touch_to_wire(t) for t in attribution.touches.values()],
        }
        return self._dump(payload)

    def header_value(self, value: str) -> str:
        """The ``Set-Cookie`` header value carrying cookie value ``value``."""
        return f"{self.name}={value}{self._attrs}"

    def set_cookie(self, attribution: Attribution) -> tuple[str, Attribution] | None:
        """``(Set-Cookie value, what it stores)`` within the size budget, or None.

        Sheds the touches seen longest ago until the header fits; logs the first time.
        """
        global _shed_logged
        header = self.header_value(self.encode(attribution))
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
            header = self.header_value(self.encode(current))
            if len(header) <= self._budget:
                return header, current

    def clear_cache(self) -> None:
        """Forget decoded cookies (tests; key rotation takes a new codec anyway)."""
        self._cache.clear()
