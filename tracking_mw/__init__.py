"""tracking_mw: keep ad click identifiers and send server-side conversions that attribute."""

from __future__ import annotations

from ._context import current_attribution
from ._errors import ConfigurationError, InvalidEvent, OutboxError, TrackingError
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
    TiktokConfig,
)
from .events import Event, UserData

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "BigoConfig",
    "ClientContext",
    "ConfigurationError",
    "DeliveryConfig",
    "Event",
    "InvalidEvent",
    "KwaiConfig",
    "MetaConfig",
    "OutboxError",
    "RoibestConfig",
    "RoktConfig",
    "Secret",
    "Settings",
    "TiktokConfig",
    "Touch",
    "TrackingError",
    "UserData",
    "__version__",
    "current_attribution",
]
