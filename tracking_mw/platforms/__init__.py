"""Platform adapters, one module per platform, and the event rules they share.

:func:`build_adapters` makes one adapter per configured platform. :func:`validate_event`
holds the *universal* rules, checked at ``track()`` time before anything is queued; an
event breaking one raises :class:`~tracking_mw.InvalidEvent` naming the field:

- ``Purchase`` (any case) needs ``value`` and ``currency``: Meta requires both for it, and
  ROIBest's Facebook links too. ``FirstDeposit`` does not: no document requires a value
  for it (Meta takes it as a custom event), so a deposit without an amount is still sent.
- ``value`` and ``currency`` go together or not at all (Kwai's rule; every platform reads a
  value in some currency, and guessing one would misreport revenue).
- ``contents`` items carry an ``id`` (string or number) and, when given, a positive
  whole ``quantity`` and a number ``price``/``item_price``.
- ``event_source_url`` is an absolute http(s) URL when given.
- the name is at most 256 characters (Rokt's limit, the strictest).

Rules that concern one platform only are *skips*, recorded on the receipt, never errors:
Kwai and a currency other than BRL/IDR/USD; Rokt without an email; Meta older than 7 days
or without a user agent; a platform whose vocabulary cell is "(not sent)"; a missing click
id / bbg / link id / ttclid.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .._errors import InvalidEvent
from ..config import Settings
from ..events import Event
from ._base import Adapter, Outcome, PlatformRequest, Skip, default_classification
from .bigo import BigoAdapter
from .kwai import KwaiAdapter
from .meta import MetaAdapter
from .roibest import RoibestAdapter
from .rokt import RoktAdapter
from .tiktok import TiktokAdapter

__all__ = [
    "ADAPTER_CLASSES",
    "Adapter",
    "BigoAdapter",
    "KwaiAdapter",
    "MetaAdapter",
    "Outcome",
    "PlatformRequest",
    "RoibestAdapter",
    "RoktAdapter",
    "Skip",
    "TiktokAdapter",
    "build_adapters",
    "default_classification",
    "validate_event",
]

#: Platform name -> adapter class, in the order adapters are built.
ADAPTER_CLASSES: dict[str, type[Adapter]] = {
    "meta": MetaAdapter,
    "kwai": KwaiAdapter,
    "bigo": BigoAdapter,
    "rokt": RoktAdapter,
    "roibest": RoibestAdapter,
    "tiktok": TiktokAdapter,
}

_MONEY_REQUIRED = frozenset({"purchase"})


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    """One adapter per configured platform (``settings.<platform>`` not ``None``)."""
    adapters: dict[str, Adapter] = {}
    for name, cls in ADAPTER_CLASSES.items():
        if getattr(settings, name, None) is not None:
            adapters[name] = cls(settings)  # type: ignore[call-arg]
    return adapters


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)


def validate_event(event: Event) -> None:
    """Raise :class:`InvalidEvent` (with ``field``) if no platform could accept ``event``."""
    if len(event.name) > 256:
        raise InvalidEvent("event name is longer than 256 characters", field="name")
    if event.name.lower() in _MONEY_REQUIRED:
        if event.value is None:
            raise InvalidEvent(f"{event.name} needs a value", field="value")
        if event.currency is None:
            raise InvalidEvent(f"{event.name} needs a currency", field="currency")
    if event.value is not None and event.currency is None:
        raise InvalidEvent("a value needs a currency", field="currency")
    if event.currency is not None and event.value is None:
        raise InvalidEvent("a currency needs a value", field="value")
    for i, c in enumerate(event.contents):
        cid = c.get("id")
        if (
            cid is None
            or isinstance(cid, bool)
            or not isinstance(cid, (str, int))
            or (isinstance(cid, str) and not cid.strip())
        ):
            raise InvalidEvent(f"contents[{i}] needs an id", field=f"contents[{i}].id")
        if "quantity" in c:
            q = c["quantity"]
            if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
                raise InvalidEvent(
                    f"contents[{i}].quantity must be a positive whole number",
                    field=f"contents[{i}].quantity",
                )
        for key in ("price", "item_price"):
            if key in c and (not _is_number(c[key]) or c[key] < 0):
                raise InvalidEvent(
                    f"contents[{i}].{key} must be a number >= 0", field=f"contents[{i}].{key}"
                )
    url = event.event_source_url
    if url is not None and (
        not isinstance(url, str) or not url.lower().startswith(("http://", "https://"))
    ):
        raise InvalidEvent("event_source_url must be an http(s) URL", field="event_source_url")
