"""The exceptions tracking_mw raises, all under one root.

    TrackingError
    ├── ConfigurationError   bad or missing settings, raised at startup (also a ValueError)
    ├── InvalidEvent         an event no configured platform could accept (also a ValueError)
    └── OutboxError          the durable outbox could not be read or written

Errors from lower layers (sqlite3, redis, httpx) are translated with ``raise ... from exc``
so callers only ever need to catch :class:`TrackingError`.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "InvalidEvent", "OutboxError", "TrackingError"]


class TrackingError(Exception):
    """Base class of every exception raised by tracking_mw."""


class ConfigurationError(TrackingError, ValueError):
    """A setting is missing or invalid. Raised when settings are built, never per request."""


class InvalidEvent(TrackingError, ValueError):
    """An event that no configured platform could accept.

    ``field`` names the offending field (``"value"``, ``"currency"``, ...) when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class OutboxError(TrackingError):
    """The outbox store failed (disk full, Redis unreachable, ...)."""
