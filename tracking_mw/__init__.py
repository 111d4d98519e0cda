"""tracking_mw: keep ad click identifiers and send server-side conversions that attribute."""

from __future__ import annotations

from ._context import current_attribution
from ._errors import ConfigurationError, InvalidEvent, OutboxError, TrackingError
from ._runtime import Runtime
from ._setup import configure
from .asgi import TrackingMiddleware
from .attribution import Attribution, ClientContext, Touch
from .config import (
    BigoConfig,
    DeliveryConfig,
    KwaiConfig,
    MetaConfig,
    RoibestConfig,
    RoktConfig,
    Secret,
    Settings,
    SettingsOverrides,
    TiktokConfig,
)
from .events import Event, UserData
from .inspector import Inspector
from .tracker import Receipt, link_visitor, track
from .wsgi import TrackingWSGIMiddleware

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "BigoConfig",
    "ClientContext",
    "ConfigurationError",
    "DeliveryConfig",
    "Event",
    "Inspector",
    "InvalidEvent",
    "KwaiConfig",
    "MetaConfig",
    "OutboxError",
    "Receipt",
    "RoibestConfig",
    "RoktConfig",
    "Runtime",
    "Secret",
    "Settings",
    "SettingsOverrides",
    "TiktokConfig",
    "Touch",
    "TrackingError",
    "TrackingMiddleware",
    "TrackingWSGIMiddleware",
    "UserData",
    "__version__",
    "configure",
    "current_attribution",
    "link_visitor",
    "track",
]
