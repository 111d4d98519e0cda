"""The visitor's attribution: one touch per ad platform plus the request's client context.

A *touch* is what one platform's ad click left behind (its click id, the pixel id that came
with it, pixel cookies, UTM tags, when it was first and last seen, and where it landed).
Touches of different platforms live side by side; a newer click id for a platform replaces
the older one (Kwai's document asks for exactly this, and Meta's tools behave the same).

The *client context* (IP, user agent, page URL, referrer) belongs to the current request.
It is never written into the cookie, but it is part of :meth:`Attribution.to_dict` so an app
can store a full snapshot with an order and send an attributed conversion days later.
"""

from __future__ import annotations

import binascii
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._fork import after_in_child

__all__ = ["Attribution", "ClientContext", "Touch"]


@dataclass(frozen=True, kw_only=True)
class Touch:
    """What one platform's click left: ids, times (Unix seconds), landing URL and extras.

    ``extra`` holds the platform's secondary identifiers under fixed keys:
    Meta ``fbc``/``fbp``, Bigo ``cookie_id``, TikTok ``ttp``.
    """

    platform: str
    click_id: str | None = None
    pixel_id: str | None = None
    first_seen: int = 0
    last_seen: int = 0
    landing_url: str | None = None
    utm: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``Touch.from_dict`` reads it back."""
        d: dict[str, Any] = {
            "platform": self.platform,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }
        if self.click_id is not None:
            d["click_id"] = self.click_id
        if self.pixel_id is not None:
            d["pixel_id"] = self.pixel_id
        if self.landing_url is not None:
            d["landing_url"] = self.landing_url
        if self.utm:
            d["utm"] = dict(self.utm)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Touch:
        """Rebuild a touch; raises ``ValueError``/``TypeError`` on a malformed dict."""
        platform = data["platform"]
        if not isinstance(platform, str):
            raise TypeError("touch platform must be a string")

        def opt_str(key: str) -> str | None:
            v = data.get(key)
            if v is None:
                return None
            if not isinstance(v, str):
                raise TypeError(f"touch {key} must be a string")
            return v

        def str_map(key: str) -> dict[str, str]:
            v = data.get(key) or {}
            if not isinstance(v, Mapping) or not all(
                isinstance(k, str) and isinstance(x, str) for k, x in v.items()
            ):
                raise TypeError(f"touch {key} must map strings to strings")
            return dict(v)

        return cls(
            platform=platform,
            click_id=opt_str("click_id"),
            pixel_id=opt_str("pixel_id"),
            first_seen=int(data.get("first_seen", 0)),
            last_seen=int(data.get("last_seen", 0)),
            landing_url=opt_str("landing_url"),
            utm=str_map("utm"),
            extra=str_map("extra"),
        )


@dataclass(frozen=True, kw_only=True)
class ClientContext:
    """The current request's client: raw IP and user agent (platforms want them unhashed)."""

    ip: str | None = None
    user_agent: str | None = None
    url: str | None = None
    referrer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict without empty fields."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientContext:
        """Rebuild a client context, ignoring unknown keys."""
        vals = {k: data.get(k) for k in ("ip", "user_agent", "url", "referrer")}
        for k, v in vals.items():
            if v is not None and not isinstance(v, str):
                raise TypeError(f"client {k} must be a string")
        return cls(**vals)


_URLSAFE = bytes.maketrans(b"+/", b"-_")
# os.urandom bytes fetched 4 KB at a time: one system call per 256 visitor ids instead of one
# each. The lock keeps two threads from taking the same bytes; a forked child drops the
# parent's unused bytes, so processes never share ids.
_RANDOM_CHUNK = 4096
_random = b""
_random_at = 0
_random_lock = threading.Lock()


# Visitor ids made 256 at a time: a landing takes one with a list pop (atomic, so no lock),
# not a lock, a system call share and three conversions.
_IDS_PER_FILL = 256
_ids: list[str] = []


def _forget_random() -> None:
    global _random, _random_at, _random_lock
    _random, _random_at, _random_lock = b"", 0, threading.Lock()
    _ids.clear()


after_in_child(_forget_random)


def _random16() -> bytes:
    global _random, _random_at
    with _random_lock:
        at = _random_at
        if at + 16 > len(_random):
            _random, at = os.urandom(_RANDOM_CHUNK), 0
        _random_at = at + 16
        return _random[at : at + 16]


def new_visitor_id() -> str:
    """A random, unguessable visitor id (128 bits from ``os.urandom``, URL-safe)."""
    while True:
        try:
            return _ids.pop()
        except IndexError:
            # Threads refilling at once only add more ids; each id is still popped once.
            _ids.extend(_fresh_ids())


def _fresh_ids() -> list[str]:
    # secrets.token_urlsafe(16) (os.urandom, base64url, no padding) without its Python layers.
    data = os.urandom(16 * _IDS_PER_FILL)
    b2a = binascii.b2a_base64
    return [
        b2a(data[i : i + 16], newline=False)[:22].translate(_URLSAFE).decode()
        for i in range(0, len(data), 16)
    ]


@dataclass(frozen=True, kw_only=True)
class Attribution:
    """One visitor's touches (by platform), visitor id and the current client context."""

    visitor_id: str = field(default_factory=new_visitor_id)
    touches: Mapping[str, Touch] = field(default_factory=dict)
    client: ClientContext = field(default_factory=ClientContext)

    def touch(self, platform: str) -> Touch | None:
        """The touch of ``platform``, if the visitor came from it."""
        return self.touches.get(platform)

    def click_id(self, platform: str) -> str | None:
        """Shortcut: the click id captured for ``platform``."""
        t = self.touches.get(platform)
        return t.click_id if t else None

    def with_touch(self, touch: Touch) -> Attribution:
        """A copy with ``touch`` stored for its platform (replacing the previous one)."""
        touches = dict(self.touches)
        touches[touch.platform] = touch
        return replace(self, touches=touches)

    def with_client(self, client: ClientContext) -> Attribution:
        """A copy with another client context."""
        return replace(self, client=client)

    @property
    def platforms(self) -> list[str]:
        """Platforms this visitor has touches from."""
        return list(self.touches)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot, to store with an order for an offline conversion later."""
        return {
            "visitor_id": self.visitor_id,
            "touches": {p: t.to_dict() for p, t in self.touches.items()},
            "client": self.client.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attribution:
        """Rebuild a snapshot made by :meth:`to_dict`; raises ``ValueError`` if malformed."""
        try:
            vid = data["visitor_id"]
            if not isinstance(vid, str) or not vid:
                raise TypeError("visitor_id must be a non-empty string")
            raw = data.get("touches") or {}
            if not isinstance(raw, Mapping):
                raise TypeError("touches must be a mapping")
            touches = {str(p): Touch.from_dict({**t, "platform": p}) for p, t in raw.items()}
            client = ClientContext.from_dict(data.get("client") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an attribution snapshot: {exc}") from exc
        return cls(visitor_id=vid, touches=touches, client=client)


# -- fast construction (the request path) ---------------------------------------------------

# Instances of the frozen dataclasses above made without the generated ``__init__``'s
# per-field ``object.__setattr__`` calls (the middleware builds several per request): the same
# objects ``cls(**fields)`` makes, every field set, in declaration order.
_new = object.__new__
_set = object.__setattr__


def _touch(
    platform: str,
    click_id: str | None,
    pixel_id: str | None,
    first_seen: int,
    last_seen: int,
    landing_url: str | None,
    utm: Mapping[str, str],
    extra: Mapping[str, str],
) -> Touch:
    obj = _new(Touch)
    _set(
        obj,
        "__dict__",
        {
            "platform": platform,
            "click_id": click_id,
            "pixel_id": pixel_id,
            "first_seen": first_seen,
            "last_seen": last_seen,
            "landing_url": landing_url,
            "utm": utm,
            "extra": extra,
        },
    )
    return obj


def _client(
    ip: str | None, user_agent: str | None, url: str | None, referrer: str | None
) -> ClientContext:
    obj = _new(ClientContext)
    _set(obj, "__dict__", {"ip": ip, "user_agent": user_agent, "url": url, "referrer": referrer})
    return obj


def _attribution(
    visitor_id: str, touches: Mapping[str, Touch], client: ClientContext
) -> Attribution:
    obj = _new(Attribution)
    _set(obj, "__dict__", {"visitor_id": visitor_id, "touches": touches, "client": client})
    return obj


# -- merge rules (used by the middlewares) ---------------------------------------------------

# Rewriting the cookie only to move ``last_seen`` forward is worth it at most once an hour.
LAST_SEEN_REFRESH = 3600
# Extras derived from one click id: they go when a newer click id replaces it. The others
# (``fbp``, ``cookie_id``, ``ttp``) identify the browser and survive a new click.
CLICK_EXTRAS = frozenset({"fbc"})


def merge_touch(
    old: Touch | None,
    *,
    platform: str,
    click_id: str | None,
    pixel_id: str | None,
    extra: Mapping[str, str],
    utm: Mapping[str, str],
    landing_url: str | None,
    now: int,
    refresh_after: int = LAST_SEEN_REFRESH,
) -> tuple[Touch, bool]:
    """Fold what one request says about ``platform`` into its stored touch.

    Returns ``(touch, changed)``; ``changed`` means the cookie must be rewritten.

    - No stored touch: a new one (first and last seen now, this landing URL and UTM tags).
    - A different click id: replaces the touch (first seen resets); browser-level extras stay.
    - The same click id again: ``last_seen`` moves forward, but only counts as a change once
      ``refresh_after`` seconds have passed; a new pixel id, UTM tags or extra values do count.
    - ``click_id=None`` (cookie-only identifiers such as ``_fbp``): only ``extra`` is updated.
    """
    return _merge(old, platform, click_id, pixel_id, extra, utm, landing_url, now, refresh_after)


def _merge(
    old: Touch | None,
    platform: str,
    click_id: str | None,
    pixel_id: str | None,
    extra: Mapping[str, str],
    utm: Mapping[str, str],
    landing_url: str | None,
    now: int,
    refresh_after: int = LAST_SEEN_REFRESH,
) -> tuple[Touch, bool]:
    """:func:`merge_touch` with positional arguments (the middleware's path)."""
    if old is None or (click_id is not None and click_id != old.click_id):
        if old is None or not old.extra:
            fresh = dict(extra)
        else:
            fresh = {k: v for k, v in old.extra.items() if k not in CLICK_EXTRAS}
            fresh.update(extra)
        return (
            _touch(
                platform,
                click_id,
                pixel_id,
                now,
                now,
                landing_url,
                dict(utm) if click_id is not None else {},
                fresh,
            ),
            True,
        )
    new_extra = {**old.extra, **extra} if extra else old.extra
    new_pixel = pixel_id if (click_id is not None and pixel_id) else old.pixel_id
    new_utm = dict(utm) if (click_id is not None and utm) else old.utm
    changed = new_extra != old.extra or new_pixel != old.pixel_id or new_utm != old.utm
    last = old.last_seen
    if click_id is not None and now - old.last_seen >= refresh_after:
        last = now
        changed = True
    if not changed:
        return old, False
    return (
        _touch(
            old.platform,
            old.click_id,
            new_pixel,
            old.first_seen,
            last,
            old.landing_url,
            dict(new_utm),
            dict(new_extra),
        ),
        True,
    )
