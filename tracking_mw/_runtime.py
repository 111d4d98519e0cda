"""Owner of the tracker, the outbox and the dispatcher for one Settings object.

Contract used by the middlewares (asgi.py / wsgi.py):
    runtime = Runtime.for_settings(settings)   # one per Settings, shared by middlewares
    await runtime.startup()                    # ASGI lifespan startup (or the first request)
    await runtime.shutdown()                   # ASGI lifespan shutdown: graceful drain
    runtime.ensure_thread_dispatcher()         # WSGI: first request; fork-safe

``Runtime.default()`` is the runtime created last; ``track()`` outside a request (a worker,
a webhook handler in another framework) uses it. A process that only sends (a batch job)
calls ``tracking_mw.configure()`` (which builds one from ``Settings.from_env()``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

import httpx

from ._fork import catch_up, fork_safe_rlock
from .config import Settings, outbox_identity
from .delivery import Dispatcher, Metrics, Outbox, ThreadDispatcher, open_outbox
from .delivery.metrics import register_prometheus
from .delivery.spool import Spool
from .platforms import build_adapters
from .platforms._base import Adapter
from .tracker import Tracker

__all__ = ["Runtime"]

log = logging.getLogger("tracking_mw")


def _log_end(task: asyncio.Task[None]) -> None:
    # A dispatcher that dies would otherwise stop delivery in silence (asyncio reports an
    # unretrieved exception only when the task is collected, if ever).
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("tracking_mw: the dispatcher stopped: %s", type(exc).__name__)


class Runtime:
    """The tracker, outbox, adapters and dispatcher that belong to one :class:`Settings`."""

    _cache: ClassVar[dict[int, Runtime]] = {}
    _default: ClassVar[Runtime | None] = None
    _cache_lock: ClassVar[threading.RLock] = fork_safe_rlock()

    def __init__(
        self,
        settings: Settings,
        *,
        adapters: Mapping[str, Adapter] | None = None,
        outbox: Outbox | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Build a runtime. ``adapters``, ``outbox`` and ``transport`` replace the ones the
        settings describe (tests; a custom HTTP transport)."""
        self.settings = settings
        self.adapters: dict[str, Adapter] = (
            dict(adapters) if adapters is not None else build_adapters(settings)
        )
        self.outbox: Outbox = outbox if outbox is not None else open_outbox(settings.outbox)
        # A shared outbox on another host gets a local spool for its outages (spool.py).
        self.spool: Spool | None = None
        if (
            outbox is None
            and settings.outbox_spool
            and settings.outbox.startswith(("redis://", "rediss://"))
        ):
            self.spool = Spool(settings.outbox_spool, self.outbox, outbox_identity(settings.outbox))
            self.spool.resume()
        self.metrics = Metrics()
        self.tracker = Tracker(self)
        self._transport = transport
        self._task: asyncio.Task[None] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: Dispatcher | None = None
        self._thread: ThreadDispatcher | None = None
        self._thread_pid = os.getpid()
        self._atexit = False
        self._started = False
        register_prometheus(self)

    # -- registry ----------------------------------------------------------------------

    @classmethod
    def for_settings(cls, settings: Settings) -> Runtime:
        """The runtime of ``settings`` (created once per Settings object); becomes the default."""
        with cls._cache_lock:
            rt = cls._cache.get(id(settings))
            if rt is not None and rt.settings is settings:
                Runtime._default = rt
                return rt
        # Built outside the lock: opening the outbox takes the store's own fork-safe lock,
        # and fork() takes those in the order they were made, the store's after this one.
        new = cls(settings)
        with cls._cache_lock:
            rt = cls._cache.get(id(settings))
            if rt is None or rt.settings is not settings:
                rt = cls._cache[id(settings)] = new
            Runtime._default = rt
        if rt is not new:
            new.close()  # another thread made one meanwhile: one runtime per Settings
        return rt

    @classmethod
    def default(cls) -> Runtime | None:
        """The runtime created last by :meth:`for_settings` (or set by :meth:`set_default`)."""
        return Runtime._default

    @classmethod
    def set_default(cls, runtime: Runtime | None) -> None:
        """Make ``runtime`` the one ``track()`` uses outside a request (None: no default)."""
        Runtime._default = runtime

    # -- dispatchers -------------------------------------------------------------------

    def make_dispatcher(self) -> Dispatcher:
        """A new dispatcher over this runtime's outbox, adapters and counters."""
        return Dispatcher(
            self.outbox,
            self.adapters,
            self.settings.delivery,
            self.metrics,
            transport=self._transport,
        )

    @property
    def started(self) -> bool:
        """True once :meth:`startup` ran (in this process) and until :meth:`shutdown`."""
        return self._started

    async def startup(self, on_stop: Callable[[], None] | None = None) -> None:
        """Start the asyncio dispatcher on the running loop (idempotent).

        Does nothing but mark the runtime started when ``settings.start_dispatcher`` is
        False (dispatchers then run elsewhere, e.g. ``tracking-mw dispatch``).
        ``on_stop()`` is called when the dispatcher task ends, for whatever reason.
        """
        self._started = True
        if not self.settings.start_dispatcher or not self.adapters:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or self._task_loop is not loop:
            self._dispatcher = self.make_dispatcher()
            # A fresh, empty context: the task must not inherit the request state of whichever
            # request happened to start it (lazy startup on the first request).
            task = loop.create_task(self._dispatcher.run(), context=contextvars.Context())
            task.add_done_callback(_log_end)
            self._task = task
            self._task_loop = loop
        if on_stop is not None:
            task.add_done_callback(lambda _task: on_stop())

    async def shutdown(self) -> None:
        """Stop claiming, finish in-flight requests within ``delivery.shutdown_grace``,
        leave the rest in the outbox."""
        self._started = False
        task, dispatcher = self._task, self._dispatcher
        self._task = self._dispatcher = None
        if task is None or dispatcher is None or task.done():
            return
        dispatcher.request_stop()
        try:
            await asyncio.wait_for(
                asyncio.shield(task), self.settings.delivery.shutdown_grace + 5.0
            )
        except TimeoutError:
            task.cancel()
        except Exception as exc:
            log.error("tracking_mw: dispatcher ended with %s", type(exc).__name__)

    def ensure_thread_dispatcher(self) -> None:
        """Start the dispatcher thread unless it runs in this process (idempotent, fork-safe).

        After ``fork()`` (gunicorn ``--preload``) the parent's thread does not exist in the
        child: the pid check notices and the child starts its own. Called on every WSGI
        request, it also runs the fork hooks a server skipped (see ``_fork``).
        """
        # A worker forked without Python's fork hooks (uWSGI's default) redoes what they do
        # before its first request uses the outbox.
        catch_up(os.getpid())
        if not self.settings.start_dispatcher or not self.adapters:
            return
        thread = self._thread
        if thread is not None and thread.alive:
            return
        # One fork-safe lock for every runtime (threads start rarely): a child never inherits
        # it held, and two requests racing in a fresh child cannot both start a thread.
        with Runtime._cache_lock:
            pid = os.getpid()
            if pid != self._thread_pid:
                # The parent's thread does not exist here.
                self._thread_pid = pid
                self._thread = None
            if self._thread is not None and self._thread.alive:
                return
            self._thread = ThreadDispatcher(self.make_dispatcher)
            self._thread.start()
            if not self._atexit:
                # threading's exit hooks run before concurrent.futures refuses new work
                # (the dispatcher writes acks through a thread pool); atexit runs after.
                register = getattr(threading, "_register_atexit", atexit.register)
                register(self.stop_thread_dispatcher)
                self._atexit = True

    def stop_thread_dispatcher(self) -> None:
        """Stop the dispatcher thread gracefully (also run at interpreter exit)."""
        thread = self._thread
        if thread is not None:
            thread.stop(self.settings.delivery.shutdown_grace + 5.0)
            self._thread = None

    # -- observation -------------------------------------------------------------------

    def counters(self) -> dict[str, dict[str, float]]:
        """Per platform: accepted, delivered, retried, dead, failed (this process, since
        start), and from the outbox pending, oldest_pending_age (seconds), dead_letters."""
        counts = self.metrics.snapshot()
        stats = self.outbox.stats(time.time())
        out: dict[str, dict[str, float]] = {}
        for platform in [*self.adapters, *counts, *stats]:
            if platform in out:
                continue
            c = counts.get(platform, {})
            s = stats.get(platform, {})
            out[platform] = {
                "accepted": float(c.get("accepted", 0)),
                "delivered": float(c.get("delivered", 0)),
                "retried": float(c.get("retried", 0)),
                "dead": float(c.get("dead", 0)),
                "failed": float(c.get("failed", 0)),
                "pending": float(s.get("pending", 0)),
                "oldest_pending_age": float(s.get("oldest_pending_age", 0.0)),
                "dead_letters": float(s.get("dead", 0)),
            }
        return out

    def close(self) -> None:
        """Stop the dispatcher thread and the spool's forwarder, close the outbox, forget this
        runtime."""
        self.stop_thread_dispatcher()
        if self.spool is not None:
            self.spool.close()
        self.outbox.close()
        with Runtime._cache_lock:
            if Runtime._cache.get(id(self.settings)) is self:
                del Runtime._cache[id(self.settings)]
            if Runtime._default is self:
                Runtime._default = None

    def __repr__(self) -> str:
        return f"Runtime(platforms={list(self.adapters)!r}, outbox={type(self.outbox).__name__})"
