"""``configure()``: set tracking up where no middleware runs (a worker, a webhook, a script)."""

from __future__ import annotations

from typing import Any

from ._runtime import Runtime
from .config import Settings

__all__ = ["configure"]


def configure(settings: Settings | None = None, **overrides: Any) -> Runtime:
    """Set up tracking for this process and return its :class:`Runtime`.

    The middlewares do this themselves; call it in a process that has none (a Celery worker
    receiving payment webhooks, a cron job) so ``track()`` there knows its outbox and
    platforms. Without ``settings`` they come from ``TRACKING_*`` (:meth:`Settings.from_env`);
    keyword ``overrides`` change single settings. Delivery is left to the dispatchers of the
    web app or of ``tracking-mw dispatch``; ``runtime.ensure_thread_dispatcher()`` starts one
    in this process too. ``runtime.counters()`` reads the delivery counters.
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    runtime = Runtime.for_settings(settings)
    Runtime.set_default(runtime)
    return runtime
