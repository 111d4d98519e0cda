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
   A permanent outcome of a batch is taken to blame some event in it (the dispatcher splits
   the batch to find it) unless it is ``request_wide``: a bad token or a missing permission
   refuses any request, so its events are dead-lettered together, without splitting.
"""

from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal

from .._errors import ConfigurationError, InvalidEvent
from .._json import dumps_bytes, loads
from .._normalize import json_number
from ..attribution import Attribution
from ..events import Event

__all__ = [
    "Adapter",
    "Outcome",
    "PlatformRequest",
    "Skip",
    "clean_contents",
    "default_classification",
    "form_encode",
    "json_answer",
    "json_bytes",
    "json_request",
    "jsonable",
    "not_sent",
    "parse_json",
    "parse_retry_after",
    "platform_config",
    "require_money",
    "scalar_properties",
    "source_url",
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
    """The platform's verdict on one request.

    ``request_wide`` (permanent outcomes only): the answer is about the request itself
    (credentials, permissions), not about an event in it, so splitting a batch cannot help.
    The dispatcher also takes HTTP 401 and 403 as request-wide on every platform.
    """

    kind: OutcomeKind
    reason: str = ""
    retry_after: float | None = None
    request_wide: bool = False

    @classmethod
    def ok(cls) -> Outcome:
        return cls("ok")

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> Outcome:
        return cls("retry", reason, retry_after)

    @classmethod
    def permanent(cls, reason: str, *, request_wide: bool = False) -> Outcome:
        return cls("permanent", reason, request_wide=request_wide)


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


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the body every JSON platform gets."""
    return dumps_bytes(obj)


# urllib.parse.quote_plus() leaves these bytes as they are; a space becomes "+".
_FORM_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_FORM_CODES = {b: b"%%%02X" % b for b in range(256) if b not in _FORM_SAFE}


def form_quote(text: str) -> bytes:
    """``urllib.parse.quote_plus(text)`` as bytes, byte for byte, for large texts.

    ``quote_plus`` maps every byte through a Python function (~40 ms for the 400 kB of a
    1,000-event Meta request). Here one C pass finds which unsafe bytes occur, then one
    ``bytes.replace`` per distinct unsafe byte (a few dozen in JSON) encodes them: ``%``
    first, since every replacement adds ``%``; the space last, since its ``+`` is unsafe.
    """
    data = text.encode("utf-8")
    rest = data.translate(None, _FORM_SAFE)
    if not rest:
        return data
    # The distinct unsafe bytes: take one, drop all its copies, repeat (a C pass each).
    unsafe: set[int] = set()
    while rest:
        b = rest[0]
        unsafe.add(b)
        rest = rest.replace(bytes((b,)), b"")
    if 0x25 in unsafe:
        data = data.replace(b"%", b"%25")
        unsafe.discard(0x25)
    space = 0x20 in unsafe
    unsafe.discard(0x20)
    for b in unsafe:
        data = data.replace(bytes((b,)), _FORM_CODES[b])
    if space:
        data = data.replace(b" ", b"+")
    return data


def form_encode(pairs: Sequence[tuple[str, str]]) -> bytes:
    """``urllib.parse.urlencode(pairs).encode("ascii")``, byte for byte, but fast."""
    return b"&".join(form_quote(k) + b"=" + form_quote(v) for k, v in pairs)


def parse_json(body: bytes) -> Any:
    """The decoded JSON body, or ``None`` when it is empty or not JSON."""
    if not body:
        return None
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def json_answer(
    platform: str, field: str, status: int, headers: Mapping[str, str], body: bytes
) -> Outcome | dict[str, Any]:
    """The common first steps of judging a JSON answer that carries a status ``field``.

    HTTP-level retries (408, 429, 5xx) and other non-2xx statuses become an
    :class:`Outcome`; a 2xx without the field is retried (the event id deduplicates a
    resend). Otherwise the parsed body is returned for the adapter to read its own codes.
    """
    http = default_classification(status, headers)
    if http is not None:
        return http
    if not 200 <= status < 300:
        return Outcome.permanent(f"HTTP {status}")
    data = parse_json(body)
    if not isinstance(data, dict) or field not in data:
        return Outcome.retry(f"{platform} answered without a {field}")
    return data


def json_request(
    url: str,
    body: Any,
    *,
    accept: str = "application/json",
    secrets: tuple[str, ...] = (),
) -> PlatformRequest:
    """A ``POST`` of ``body`` as compact JSON."""
    return PlatformRequest(
        method="POST",
        url=url,
        headers={"Content-Type": "application/json", "Accept": accept},
        body=json_bytes(body),
        secrets=secrets,
    )


def platform_config(settings: Any, name: str, label: str) -> Any:
    """``settings.<name>``, or ``ConfigurationError`` when that platform is not configured."""
    config = getattr(settings, name)
    if config is None:
        raise ConfigurationError(f"{label} is not configured")
    return config


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

    #: True when :meth:`build_stored` is faster than parsing the items for :meth:`build`.
    builds_stored: ClassVar[bool] = False

    def build_stored(self, items_json: Sequence[str]) -> PlatformRequest:
        """:meth:`build` from the items' compact JSON text as the outbox stored it.

        The same request as ``build([json.loads(t) for t in items_json])``; an adapter may
        splice the texts instead of parsing and re-encoding them.
        """
        return self.build([json.loads(t) for t in items_json])

    @abstractmethod
    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge the platform's answer to a request built by :meth:`build`."""


def source_url(event: Event, attribution: Attribution) -> str | None:
    """Where the event happened: the event's own URL, else the current request's URL."""
    return event.event_source_url or attribution.client.url or None


def require_money(platform: str, sent_as: str, event: Event) -> None:
    """Raise :class:`InvalidEvent` when ``event`` goes to ``platform`` as a ``Purchase``
    (``sent_as``, after the user's ``event_map``) without a value and a currency: the
    platform would reject it, and :func:`validate_event` checks only the common names."""
    if sent_as.strip().lower() != "purchase" or event.name.strip().lower() == "purchase":
        return
    if event.value is None or event.currency is None:
        missing = "value" if event.value is None else "currency"
        raise InvalidEvent(
            f"{event.name} is sent to {platform} as {sent_as}, which needs a value and a currency",
            field=missing,
        )


def not_sent(platform: str, name: str) -> Skip:
    """The :class:`Skip` for an event the vocabulary marks "(not sent)" on ``platform``."""
    return Skip(f"{platform} does not take {name}")


def scalar_properties(props: Mapping[str, Any], *, max_len: int = 4096) -> dict[str, Any]:
    """The JSON scalars of ``props`` (str, int, float, bool), strings cut to ``max_len``."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        if not isinstance(k, str) or not k:
            continue
        if isinstance(v, str):
            out[k[:256]] = v[:max_len]
        elif isinstance(v, (bool, int)) or (
            isinstance(v, float) and v == v and v not in (float("inf"), float("-inf"))
        ):
            out[k[:256]] = v
    return out


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` made JSON-ready: Decimals become numbers, tuples lists; other types dropped.

    Returns ``None`` for what cannot be represented (and for nesting deeper than 8).
    """
    if _depth > 8:
        return None
    cls = value.__class__
    if cls is str or cls is int or value is None or cls is bool:  # fast path, no ABC checks
        return value
    if cls is dict and not value:
        return {}
    if isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Decimal):
        return json_number(value) if value.is_finite() else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            j = jsonable(v, _depth + 1)
            if isinstance(k, str) and j is not None:
                out[k] = j
        return out
    if isinstance(value, (list, tuple)):
        items = [jsonable(v, _depth + 1) for v in value]
        return [v for v in items if v is not None]
    return None


def clean_contents(contents: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Contents as ``[{"id", "quantity", "item_price", ...}]``, JSON-ready.

    ``price`` is accepted for ``item_price``; ``id`` becomes a string; items without an id
    are kept only for their other fields.
    """
    if not contents:
        return []  # most events: skip the loop's set-up
    out: list[dict[str, Any]] = []
    for c in contents:
        item: dict[str, Any] = {}
        for k, v in c.items():
            j = jsonable(v)
            if j is None:
                continue
            if k == "id":
                item["id"] = str(j)
            elif k in ("price", "item_price"):
                if isinstance(j, (int, float)) and not isinstance(j, bool):
                    item["item_price"] = j
            elif k == "quantity":
                if isinstance(j, int) and not isinstance(j, bool):
                    item["quantity"] = j
            else:
                item[k] = j
        if item:
            out.append(item)
    return out
