"""What every platform adapter provides. Adapters build requests and judge answers; no I/O.

The life of one event on one platform:

1. ``track()`` calls :meth:`Adapter.prepare` with the event and the visitor's attribution.
   It returns the platform's *item*: a JSON-ready dict with everything normalized and hashed
   (no credentials), or raises :class:`Skip` with a reason (no click id, currency not
   accepted, event "(not sent)" on this platform, ...). The item is stored in the outbox.
2. The dispatcher groups due items of one platform by :meth:`Adapter.batch_key` (Meta: the
   pixel; Rokt: one group) and takes at most ``max_batch`` of them.
3. :meth:`Adapter.build` turns the items into one :class:`PlatformRequest`, adding credentials.
4. After sending, :meth:`Adapter.classify` turns the platform's answer into an
   :class:`Outcome` for the whole request: ok, retry (maybe after N seconds) or permanent.
   Network errors and timeouts never reach an adapter: the dispatcher retries them.
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..attribution import Attribution
from ..events import Event

__all__ = [
    "Adapter",
    "Outcome",
    "PlatformRequest",
    "Skip",
    "default_classification",
    "parse_retry_after",
]

OutcomeKind = Literal["ok", "retry", "permanent"]


class Skip(Exception):
    """This platform does not take this event; ``reason`` says why (recorded on the receipt)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PlatformRequest:
    """One HTTP request to a platform. ``secrets`` lists values to mask when displayed."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    secrets: tuple[str, ...] = ()

    def masked_body(self) -> str:
        """The body as text with every credential replaced by ``***`` (for inspectors)."""
        text = self.body.decode("utf-8", "replace")
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text


@dataclass(frozen=True)
class Outcome:
    """The platform's verdict on one request."""

    kind: OutcomeKind
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def ok(cls) -> Outcome:
        return cls("ok")

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> Outcome:
        return cls("retry", reason, retry_after)

    @classmethod
    def permanent(cls, reason: str) -> Outcome:
        return cls("permanent", reason)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    raw = None
    for k, v in headers.items():
        if k.lower() == "retry-after":
            raw = v.strip()
            break
    if not raw:
        return None
    try:
        secs = float(raw)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - (time.time() if now is None else now)
    if secs != secs or secs < 0:  # NaN or in the past
        return 0.0
    return secs


def default_classification(status: int, headers: Mapping[str, str]) -> Outcome | None:
    """The one HTTP-level retry predicate: 408, 429 and 5xx retry; None means "look at body"."""
    if status == 408 or status == 429 or 500 <= status <= 599:
        return Outcome.retry(f"HTTP {status}", parse_retry_after(headers))
    return None


class Adapter(ABC):
    """Base of every platform adapter. Subclasses are small and declarative."""

    #: Platform name, as in settings (``"meta"``, ``"kwai"``, ...).
    name: ClassVar[str]
    #: Most items one request may carry (Meta 1,000; Rokt 100 batches; others 1).
    max_batch: ClassVar[int] = 1

    @abstractmethod
    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """The platform's item for this event, or raise :class:`Skip`. Pure and fast."""

    def batch_key(self, item: Mapping[str, Any]) -> str:
        """Items with the same key may share one request."""
        return ""

    @abstractmethod
    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """One request carrying ``items`` (``1 <= len(items) <= max_batch``)."""

    @abstractmethod
    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge the platform's answer to a request built by :meth:`build`."""
