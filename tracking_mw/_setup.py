"""Setting tracking up: the settings and runtime of a middleware being built, and
``configure()`` where no middleware runs (a worker, a webhook, a script)."""

from __future__ import annotations

import logging
from typing import Unpack

from ._errors import ConfigurationError, OutboxError
from ._runtime import Runtime
from .config import Settings, SettingsOverrides

__all__ = ["configure", "middleware_setup", "settings_of"]

logger = logging.getLogger("tracking_mw")


def settings_of(settings: Settings | None, overrides: SettingsOverrides) -> Settings:
    """``settings`` with the keyword ``overrides`` applied; without ``settings``, those of
    the environment (:meth:`Settings.from_env`) with them."""
    if settings is None:
        return Settings.from_env(**overrides)
    return settings.replace(**overrides) if overrides else settings


def middleware_setup(
    settings: Settings | None, overrides: SettingsOverrides
) -> tuple[Settings, Runtime]:
    """:func:`settings_of` and their runtime, for a middleware being built; a configuration
    error (of the settings, or of the outbox they name) is logged as well as raised.

    Starlette and FastAPI build the middleware of ``middleware=[...]`` and ``add_middleware``
    on the app's first call, the lifespan startup. uvicorn's default lifespan mode reports an
    exception there only as "ASGI 'lifespan' protocol appears unsupported", then serves, and
    every request fails. The log line says at startup what to set.
    """
    try:
        settings = settings_of(settings, overrides)
        return settings, Runtime.for_settings(settings)
    except (ConfigurationError, OutboxError) as exc:
        # The messages name settings, formats and the outbox's file, never a secret's value
        # (an outbox that cannot be opened, e.g. in a directory the app may not write to).
        logger.error("tracking_mw: %s", exc)
        raise


def configure(settings: Settings | None = None, **overrides: Unpack[SettingsOverrides]) -> Runtime:
    """Set up tracking for this process and return its :class:`Runtime`.

    The middlewares do this themselves; call it in a process that has none (a Celery worker
    receiving payment webhooks, a cron job) so ``track()`` there knows its outbox and
    platforms. Without ``settings`` they come from ``TRACKING_*`` (:meth:`Settings.from_env`);
    keyword ``overrides`` change single settings. Delivery is left to the dispatchers of the
    web app or of ``tracking-mw dispatch``; ``runtime.ensure_thread_dispatcher()`` starts one
    in this process too. ``runtime.counters()`` reads the delivery counters.
    """
    runtime = Runtime.for_settings(settings_of(settings, overrides))
    Runtime.set_default(runtime)
    return runtime
