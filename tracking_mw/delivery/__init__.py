"""Durable outbox and dispatcher.

``open_outbox(url)`` picks the store from ``Settings.outbox`` (``TRACKING_OUTBOX``):

- ``sqlite:///path`` (default): one WAL file on this host; see :mod:`.sqlite`.
- ``redis://host:port/db`` or ``rediss://…``: one queue shared by several hosts and any
  number of dispatchers; see :mod:`.redis`. Needs ``pip install tracking_mw[redis]``.
- ``memory://``: this process only, lost on exit. Tests only: NOT durable.

Query options common to all: ``retention`` (seconds delivered records stay visible,
default 3 days), ``dead_retention`` (default 30 days), ``link_ttl`` (seconds a
``link_visitor()`` snapshot is kept, default 30 days). SQLite also takes
``synchronous=full`` (fsync every commit; see :mod:`.sqlite`), Redis ``prefix=`` (key prefix,
default ``{tmw}``) and redis-py's own options.

Semantics: at-least-once. A record is committed before ``track()`` returns, leased while
it is sent, acknowledged after the platform accepted it; a crash between sending and the
acknowledgement sends it again, with the same ``event_id``: Meta, TikTok and Rokt
deduplicate it; Kwai, Bigo and ROIBest take no event id and count it twice.
"""

from __future__ import annotations

from .._errors import ConfigurationError
from ._base import Claimed, DeliveryView, NewRecord, Outbox, OutboxOptions
from .dispatcher import Dispatcher, ThreadDispatcher
from .metrics import Metrics

__all__ = [
    "Claimed",
    "DeliveryView",
    "Dispatcher",
    "Metrics",
    "NewRecord",
    "Outbox",
    "OutboxOptions",
    "ThreadDispatcher",
    "open_outbox",
]


def open_outbox(url: str) -> Outbox:
    """The outbox named by ``url``; a bad URL is a :class:`ConfigurationError`."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteOutbox

        return SQLiteOutbox.from_url(url)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisOutbox

        return RedisOutbox.from_url(url)
    if url.startswith("memory://"):
        from .memory import MemoryOutbox

        return MemoryOutbox.from_url(url)
    raise ConfigurationError(
        "TRACKING_OUTBOX must be sqlite:///path, redis://host:port/db or memory://"
    )
