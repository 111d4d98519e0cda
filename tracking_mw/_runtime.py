"""Owner of the tracker, the outbox and the dispatcher for one Settings object.

Contract used by the middlewares (asgi.py / wsgi.py):
    runtime = Runtime.for_settings(settings)   # one per Settings, shared by middlewares
    await runtime.startup()                    # ASGI lifespan startup
    await runtime.shutdown()                   # ASGI lifespan shutdown
    runtime.ensure_thread_dispatcher()         # WSGI: first request; fork-safe
"""

from __future__ import annotations

from .config import Settings


class Runtime:
    """Transitional contract; the delivery engine fills it in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def for_settings(cls, settings: Settings) -> Runtime:
        return cls(settings)

    async def startup(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def ensure_thread_dispatcher(self) -> None:
        return None
