"""``track()``: validate an event, fan it out to the platforms that apply, queue it durably.

``track()`` is a plain function, callable from async and sync views alike. It does no network
I/O: its only blocking work is one local commit to the outbox (one SQLite transaction, or
one Redis round trip), after which the dispatcher takes over.

Failure policy, and why:

- An invalid event (``InvalidEvent``) is the developer's bug and is raised at once, before
  anything is queued, so it shows in tests instead of as a platform's 400 days later.
- A platform that cannot take the event is *skipped* with the reason on the receipt.
- The outbox failing (disk full, Redis down) does **not** raise. A conversion is worth less
  than the checkout it follows, and a view that did not wrap ``track()`` in ``try`` must not
  turn a paid order into an error page. The receipt carries ``error``, every platform is in
  ``skipped`` with the reason, the ``failed`` counter grows, and one error is logged per
  failure streak (no payload, no PII), so the problem is visible to monitoring.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._context import current_state
from ._errors import ConfigurationError, InvalidEvent, OutboxError
from .attribution import Attribution
from .delivery._base import NewRecord
from .events import Event, UserData
from .platforms import validate_event
from .platforms._base import Skip

if TYPE_CHECKING:
    from ._runtime import Runtime
    from .delivery.spool import Spool

__all__ = ["Receipt", "Tracker", "link_visitor", "track"]

log = logging.getLogger("tracking_mw")

NO_CONSENT = "no consent"
DUPLICATE = "duplicate event_id: already queued"


@dataclass(frozen=True, init=False)
class Receipt:
    """What ``track()`` did with one event.

    ``queued``: platforms a delivery record was committed for by this call; ``skipped``:
    platform -> reason for every other configured platform; ``duplicate``: the event id was
    already queued for at least one platform (that platform is in ``skipped``); ``error``:
    set when the outbox could not be written (nothing was queued).
    """

    event_id: str
    queued: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    duplicate: bool = False
    error: str | None = None

    # Written out: one is built in every track() call (see Event.__init__ for why).
    def __init__(
        self,
        event_id: str,
        queued: tuple[str, ...] = (),
        skipped: Mapping[str, str] | None = None,
        duplicate: bool = False,
        error: str | None = None,
    ) -> None:
        self.__dict__.update(
            event_id=event_id,
            queued=queued,
            skipped={} if skipped is None else skipped,
            duplicate=duplicate,
            error=error,
        )

    @property
    def ok(self) -> bool:
        """True unless the outbox failed."""
        return self.error is None


def link_key(external_id: str) -> str:
    """The outbox key of a linked visitor: a hash, so the store never holds the raw id."""
    return hashlib.sha256(b"tracking_mw.link:" + external_id.encode("utf-8")).hexdigest()


class Tracker:
    """``track()`` and ``link_visitor()`` bound to one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._failing = False

    def track(
        self,
        name_or_event: str | Event,
        *,
        value: Any = None,
        currency: str | None = None,
        user: UserData | Mapping[str, Any] | None = None,
        contents: Sequence[Mapping[str, Any]] = (),
        properties: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        event_time: float | None = None,
        event_source_url: str | None = None,
        attribution: Attribution | Mapping[str, Any] | None = None,
        external_id: str | int | None = None,
    ) -> Receipt:
        """Queue one conversion for every platform that applies; see :func:`track`."""
        state = current_state()
        attr = self._attribution(attribution, external_id, state.attribution if state else None)
        if isinstance(name_or_event, Event):
            if (
                any(
                    v is not None
                    for v in (
                        value,
                        currency,
                        user,
                        properties,
                        event_id,
                        event_time,
                        event_source_url,
                    )
                )
                or contents
            ):
                raise TypeError("pass either an Event or a name with fields, not both")
            event = name_or_event
        else:
            event = Event(
                name=name_or_event,
                value=value,
                currency=currency,
                user=user,
                contents=contents,
                properties=properties,
                event_id=event_id,
                event_time=event_time,
                event_source_url=event_source_url,
            )
        validate_event(event)
        rt = self.runtime
        eid = event.event_id
        if state is not None and not state.consent and attribution is None and external_id is None:
            return Receipt(eid, (), dict.fromkeys(rt.adapters, NO_CONSENT))

        records: list[NewRecord] = []
        skipped: dict[str, str] = {}
        for name, adapter in rt.adapters.items():
            try:
                item = adapter.prepare(event, attr)
                key = adapter.batch_key(item)
            except Skip as skip:
                skipped[name] = skip.reason
                continue
            except InvalidEvent:
                raise
            except Exception as exc:  # an adapter bug must not break the view
                log.error(
                    "tracking_mw: %s: adapter failed to prepare an event: %s",
                    name,
                    type(exc).__name__,
                )
                skipped[name] = f"adapter error: {type(exc).__name__}"
                continue
            records.append(NewRecord(name, eid, event.name, key, event.event_time, item))
        if not records:
            return Receipt(eid, (), skipped)

        spool = rt.spool
        if spool is not None and spool.engaged:
            # The outbox failed and its spool is not moved yet: not tried in the request.
            return self._spooled(spool, eid, records, skipped, None)
        try:
            added = rt.outbox.add(records, time.time())
        except Exception as exc:
            # An outage (OutboxError: refused, timed out) is spooled; anything else is this
            # event's own problem, which a spooled copy would only repeat at every forward.
            if spool is not None and isinstance(exc, OutboxError):
                return self._spooled(spool, eid, records, skipped, exc)
            return self._failed(eid, records, skipped, exc)
        if self._failing:
            self._failing = False
            log.warning("tracking_mw: the outbox accepts events again")
        queued: list[str] = []
        for record, fresh in zip(records, added, strict=True):
            if fresh:
                queued.append(record.platform)
            else:
                skipped[record.platform] = DUPLICATE
        if queued:
            rt.metrics.add_each(queued, "accepted")
        return Receipt(eid, tuple(queued), skipped, len(queued) != len(records))

    def _spooled(
        self,
        spool: Spool,
        event_id: str,
        records: list[NewRecord],
        skipped: dict[str, str],
        exc: Exception | None,
    ) -> Receipt:
        """Keep ``records`` in the runtime's spool (the outbox failed with ``exc``, or failed
        before); a spool that fails too makes the receipt's error."""
        try:
            spool.put(records)
        except Exception as spool_exc:
            return self._failed(event_id, records, skipped, exc or spool_exc)
        if exc is not None and not self._failing:
            self._failing = True
            log.error(
                "tracking_mw: the outbox failed (%s); events are kept in the spool on this host "
                "until it accepts them again",
                type(exc).__name__,
            )
        queued = tuple(r.platform for r in records)
        self.runtime.metrics.add_each(queued, "accepted")
        return Receipt(event_id, queued, skipped)

    def _failed(
        self, event_id: str, records: list[NewRecord], skipped: dict[str, str], exc: Exception
    ) -> Receipt:
        reason = f"outbox error: {type(exc).__name__}"
        if not self._failing:
            self._failing = True
            # The exception text may quote SQL parameters: only its type is logged.
            log.error("tracking_mw: cannot queue events, the outbox failed: %s", type(exc).__name__)
        for r in records:
            skipped[r.platform] = reason
            self.runtime.metrics.add(r.platform, "failed")
        return Receipt(event_id, (), skipped, False, reason)

    def _attribution(
        self,
        attribution: Attribution | Mapping[str, Any] | None,
        external_id: str | int | None,
        current: Attribution | None,
    ) -> Attribution:
        if attribution is not None:
            if isinstance(attribution, Attribution):
                return attribution
            if not isinstance(attribution, Mapping):
                raise InvalidEvent(
                    "attribution must be an Attribution or its to_dict()", field="attribution"
                )
            try:
                return Attribution.from_dict(attribution)
            except ValueError as exc:
                raise InvalidEvent(str(exc), field="attribution") from exc
        if external_id is not None:
            snap = self.linked(external_id)
            if snap is not None:
                return snap
            return Attribution()
        return current if current is not None else Attribution()

    def linked(self, external_id: str | int) -> Attribution | None:
        """The attribution stored by :meth:`link_visitor` for ``external_id``, if any."""
        key = link_key(_external_id(external_id))
        try:
            data = self.runtime.outbox.linked(key, time.time())
        except Exception as exc:
            log.error("tracking_mw: cannot read a visitor link: %s", type(exc).__name__)
            return None
        if data is None:
            return None
        try:
            return Attribution.from_dict(data)
        except ValueError:
            return None

    def link_visitor(
        self, external_id: str | int, attribution: Attribution | Mapping[str, Any] | None = None
    ) -> bool:
        """Keep the visitor's attribution server-side under ``external_id``; see
        :func:`link_visitor`."""
        key = link_key(_external_id(external_id))
        if attribution is None:
            state = current_state()
            if state is None or not state.consent or state.attribution is None:
                return False
            snapshot = state.attribution.to_dict()
        elif isinstance(attribution, Attribution):
            snapshot = attribution.to_dict()
        else:
            try:
                snapshot = Attribution.from_dict(attribution).to_dict()
            except ValueError as exc:
                raise InvalidEvent(str(exc), field="attribution") from exc
        try:
            self.runtime.outbox.link(key, snapshot, time.time())
        except Exception as exc:
            log.error("tracking_mw: cannot store a visitor link: %s", type(exc).__name__)
            return False
        return True


def _external_id(external_id: object) -> str:
    """``external_id`` as the key text: a non-empty string, or an integer (a database
    primary key, which Django and SQLAlchemy models have) as its decimal digits."""
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        return str(external_id)
    if not isinstance(external_id, str) or not external_id.strip():
        raise InvalidEvent(
            "external_id must be a non-empty string or an integer", field="external_id"
        )
    return external_id


def _runtime() -> Runtime:
    state = current_state()
    if state is not None and state.runtime is not None:
        return state.runtime
    from ._runtime import Runtime

    rt = Runtime.default()
    if rt is None:
        raise ConfigurationError(
            "tracking_mw is not set up: mount TrackingMiddleware (or TrackingWSGIMiddleware), "
            "or call tracking_mw.configure() once at startup"
        )
    return rt


def track(
    name_or_event: str | Event,
    *,
    value: Any = None,
    currency: str | None = None,
    user: UserData | Mapping[str, Any] | None = None,
    contents: Sequence[Mapping[str, Any]] = (),
    properties: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    event_time: float | None = None,
    event_source_url: str | None = None,
    attribution: Attribution | Mapping[str, Any] | None = None,
    external_id: str | int | None = None,
) -> Receipt:
    """Send a conversion to every configured platform that applies. Returns a :class:`Receipt`.

    ``track("Purchase", value=99.9, currency="BRL", user={"email": ...})`` in any view, sync
    or async (no ``await``): the event is validated (``InvalidEvent`` names the bad field),
    turned into one delivery record per platform, and committed to the outbox before this
    returns; the dispatcher sends them. The same ``event_id`` tracked twice is queued once.

    Attribution: the current request's visitor by default; ``attribution=`` a snapshot from
    ``current_attribution().to_dict()`` kept with an order, or ``external_id=`` an id given
    to :func:`link_visitor` earlier, for payments that clear later (webhooks).
    When the visitor refused consent, nothing is queued (every platform skipped,
    ``"no consent"``) unless an explicit attribution is given.

    Never raises because the outbox failed: the receipt's ``error`` says so instead.
    Raises ``ConfigurationError`` when no middleware or runtime is set up.
    """
    return _runtime().tracker.track(
        name_or_event,
        value=value,
        currency=currency,
        user=user,
        contents=contents,
        properties=properties,
        event_id=event_id,
        event_time=event_time,
        event_source_url=event_source_url,
        attribution=attribution,
        external_id=external_id,
    )


def link_visitor(
    external_id: str | int, attribution: Attribution | Mapping[str, Any] | None = None
) -> bool:
    """Remember the current visitor's attribution under ``external_id`` (a user or order id).

    Call it in a view when you learn who the visitor is (sign-up, checkout); a webhook can
    later ``track(..., external_id=external_id)`` and the conversion is attributed to the
    click that brought them. The snapshot is kept in the outbox's store (hashed key) for
    the outbox's ``link_ttl`` (default 30 days). Returns False when there was nothing to
    keep (outside a request, no consent) or the store failed.
    """
    return _runtime().tracker.link_visitor(external_id, attribution)
