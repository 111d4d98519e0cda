"""The outbox contract shared by the SQLite, Redis and in-memory stores.

One *delivery record* is one event for one platform. Its life::

    add ──▶ pending ──claim (lease)──▶ in flight ──ack──────────▶ delivered ──prune──▶ (gone)
                ▲                          │ ──reschedule──▶ retrying ─┐
                │                          │ ──bury────────▶ dead      │
                └──── lease expired / release ◀────────────────────────┘
                                                 dead ──retry_dead──▶ retrying

A claim sets the record's due time to the end of its lease, so one index (due time per
platform) answers "what is due now" for new records, retries and expired leases alike: a
dispatcher that dies mid-send leaves its records to be claimed again once the lease ends
(at-least-once; a duplicate carries the same ``event_id``, which Meta, TikTok and Rokt
deduplicate, and Kwai, Bigo and ROIBest, which take no event id, do not).

``(platform, event_id)`` is unique: the same event tracked twice is queued once.
Every method is synchronous and short; the asyncio dispatcher calls them in a worker thread.
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qs, urlsplit

from .._errors import ConfigurationError
from .._json import dumps, loads  # the stored form of items and snapshots

__all__ = [
    "Claimed",
    "DeliveryView",
    "NewRecord",
    "Outbox",
    "OutboxOptions",
    "dumps",
    "excerpt",
    "loads",
    "new_token",
]

#: Statuses a record goes through.
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"

#: The platform's answer kept for the inspector is cut to this many characters.
RESPONSE_EXCERPT = 2048


def excerpt(text: str | bytes | None) -> str | None:
    """At most ``RESPONSE_EXCERPT`` characters of a platform's answer, for the inspector."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text[: RESPONSE_EXCERPT * 4].decode("utf-8", "replace")
    return text[:RESPONSE_EXCERPT]


def new_token() -> str:
    """A random lease token: only the holder of a lease may reschedule or bury the record."""
    return secrets.token_hex(8)


class NewRecord(NamedTuple):
    """What ``track()`` hands to the outbox: one platform's item for one event.

    A named tuple: built in every ``track()`` call, for every platform, and a tuple is
    several times cheaper to build than a frozen dataclass.
    """

    platform: str
    event_id: str
    event_name: str
    batch_key: str
    event_time: float
    item: Mapping[str, Any]


class Claimed:
    """A record leased to one dispatcher. ``attempts`` counts the tries made before this one.

    A store that keeps items as JSON text passes ``item_json`` instead of ``item``: the
    text is parsed only if ``item`` is read. A batching adapter can splice the stored texts
    into its request (:meth:`~tracking_mw.platforms.Adapter.build_stored`) without parsing
    and re-encoding every item, which is most of the cost of a 1,000-event Meta request.
    """

    __slots__ = (
        "_item",
        "_json",
        "attempts",
        "batch_key",
        "created_at",
        "event_id",
        "event_name",
        "event_time",
        "lease",
        "platform",
        "record_id",
    )

    record_id: str
    platform: str
    event_id: str
    event_name: str
    batch_key: str
    event_time: float
    attempts: int
    created_at: float
    lease: str

    def __init__(
        self,
        record_id: str,
        platform: str,
        event_id: str,
        event_name: str,
        batch_key: str,
        event_time: float,
        item: dict[str, Any] | None = None,
        attempts: int = 0,
        created_at: float = 0.0,
        lease: str = "",
        *,
        item_json: str | None = None,
    ) -> None:
        if item is None and item_json is None:
            raise TypeError("Claimed needs item or item_json")
        self.record_id = record_id
        self.platform = platform
        self.event_id = event_id
        self.event_name = event_name
        self.batch_key = batch_key
        self.event_time = event_time
        self._item = item
        self._json = item_json
        self.attempts = attempts
        self.created_at = created_at
        self.lease = lease

    @property
    def item(self) -> dict[str, Any]:
        """The platform's item (parsed from the stored text on first use)."""
        item = self._item
        if item is None:
            item = self._item = loads(self._json or "null")
        return item

    @property
    def item_json(self) -> str:
        """The item as compact JSON text (the stored text when the store kept one)."""
        text = self._json
        if text is None:
            text = self._json = dumps(self._item)
        return text

    def _key(self) -> tuple[Any, ...]:
        return (
            self.record_id,
            self.platform,
            self.event_id,
            self.event_name,
            self.batch_key,
            self.event_time,
            self.item,
            self.attempts,
            self.created_at,
            self.lease,
        )

    def __eq__(self, other: object) -> bool:
        # Field by field, as the dataclass this used to be.
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Claimed)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # holds a dict, as before: not hashable

    def __repr__(self) -> str:
        # No item: it holds hashed personal data and click ids.
        return (
            f"Claimed(record_id={self.record_id!r}, platform={self.platform!r},"
            f" event_id={self.event_id!r}, attempts={self.attempts})"
        )


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One record as the inspector and ``tracking-mw dead-letters list`` show it."""

    record_id: str
    platform: str
    event_id: str
    event_name: str
    status: str
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    item: dict[str, Any]
    last_status: int | None
    last_response: str | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "record_id": self.record_id,
            "platform": self.platform,
            "event_id": self.event_id,
            "event_name": self.event_name,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_attempt_at": self.next_attempt_at,
            "item": self.item,
            "last_status": self.last_status,
            "last_response": self.last_response,
            "last_error": self.last_error,
        }


def _bad_option(key: str, value: object) -> ConfigurationError:
    return ConfigurationError(
        f"TRACKING_OUTBOX option {key} must be a finite number of seconds > 0, not {value!r}"
    )


@dataclass(frozen=True, kw_only=True)
class OutboxOptions:
    """Options read from the outbox URL's query string (``?retention=86400&link_ttl=...``).

    ``retention``: seconds a delivered record stays visible before it is pruned (default 3
    days); ``dead_retention``: the same for dead letters (default 30 days); ``link_ttl``:
    seconds a ``link_visitor()`` snapshot is kept (default 30 days).
    """

    retention: float = 3 * 86400.0
    dead_retention: float = 30 * 86400.0
    link_ttl: float = 30 * 86400.0

    def __post_init__(self) -> None:
        for key in ("retention", "dead_retention", "link_ttl"):
            value = getattr(self, key)
            # "not > 0" rather than "<= 0": NaN fails every comparison.
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise _bad_option(key, value)

    @classmethod
    def from_url(
        cls, url: str, allowed: Sequence[str] | None = ()
    ) -> tuple[OutboxOptions, dict[str, str]]:
        """The common options plus the store-specific ones named in ``allowed`` (``None``:
        any other option is passed over, as ``Settings`` does before the store is known)."""
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        common: dict[str, float] = {}
        extra: dict[str, str] = {}
        for key, values in query.items():
            value = values[-1]
            if key in ("retention", "dead_retention", "link_ttl"):
                try:
                    number = float(value)
                except ValueError:
                    number = math.nan
                if not math.isfinite(number):
                    # Shown as given ("soon", "nan"), not as the float it became.
                    raise _bad_option(key, value)
                common[key] = number
            elif allowed is None or key in allowed:
                extra[key] = value
            else:
                raise ConfigurationError(f"unknown outbox option {key!r}")
        return cls(**common), extra


class Outbox(ABC):
    """A durable queue of delivery records plus the visitor links of ``link_visitor()``."""

    #: False only for the in-memory store (tests).
    durable: ClassVar[bool] = True
    #: True when calls from several threads at once make progress together (Redis round
    #: trips); False when the store serializes them anyway (SQLite), in which case the
    #: dispatcher makes every call from one thread, whose connection keeps a warm cache.
    parallel_io: ClassVar[bool] = True

    options: OutboxOptions

    @abstractmethod
    def add(self, records: Sequence[NewRecord], now: float) -> list[bool]:
        """Commit all records at once; per record, True if new, False if already queued."""

    @abstractmethod
    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        """Lease up to ``limit`` due records of ``platform`` (oldest due first)."""

    @abstractmethod
    def ack(
        self, records: Sequence[Claimed], now: float, status: int | None, response: str | None
    ) -> None:
        """Mark records delivered."""

    @abstractmethod
    def reschedule(
        self,
        records: Sequence[tuple[Claimed, float]],
        now: float,
        error: str,
        status: int | None,
        response: str | None,
    ) -> None:
        """Try ``(record, next_attempt_at)`` pairs again later (only while holding the lease)."""

    @abstractmethod
    def bury(
        self,
        records: Sequence[Claimed],
        now: float,
        reason: str,
        status: int | None,
        response: str | None,
    ) -> None:
        """Move records to the dead letters with ``reason``."""

    @abstractmethod
    def release(self, records: Sequence[Claimed], now: float) -> None:
        """Give leased records back unsent, due at once (shutdown)."""

    @abstractmethod
    def recent(self, limit: int = 100) -> list[DeliveryView]:
        """The newest records, newest first (the inspector's delivery log)."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeliveryView]:
        """Dead records, newest first."""

    @abstractmethod
    def retry_dead(self, record_ids: Sequence[str] | None, now: float) -> int:
        """Queue dead letters again (all of them when ``record_ids`` is None); how many."""

    @abstractmethod
    def stats(self, now: float) -> dict[str, dict[str, float]]:
        """Per platform: ``pending`` (not yet delivered, incl. retrying), ``retrying``,
        ``delivered`` (kept until pruned), ``dead``, ``oldest_pending_age`` (seconds)."""

    @abstractmethod
    def link(self, key: str, snapshot: Mapping[str, Any], now: float) -> None:
        """Keep an attribution snapshot under ``key`` for ``options.link_ttl`` seconds."""

    @abstractmethod
    def linked(self, key: str, now: float) -> dict[str, Any] | None:
        """The snapshot kept under ``key``, unless expired."""

    @abstractmethod
    def prune(self, now: float) -> int:
        """Delete delivered and dead records past retention, and expired links; how many."""

    def checkpoint(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Housekeeping the dispatcher runs between claims, off the request path (SQLite:
        a passive WAL checkpoint)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections."""


def empty_stats() -> dict[str, float]:
    """The stats of a platform with no records."""
    return {"pending": 0, "retrying": 0, "delivered": 0, "dead": 0, "oldest_pending_age": 0.0}
