"""Settings for tests that drive a middleware in process."""

from __future__ import annotations

from typing import Any

from tracking_mw import Settings


def quiet_settings(key: str, **kw: Any) -> Settings:
    """Settings signed with ``key`` for plain-http test clients: a memory outbox and no
    dispatcher (nothing is sent); ``kw`` overrides any of them."""
    base: dict[str, Any] = {
        "secret_key": key,
        "cookie_secure": False,
        "outbox": "memory://",
        "start_dispatcher": False,
    }
    base.update(kw)
    return Settings(**base)
