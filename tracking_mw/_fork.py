"""What a forked child must redo before it uses what its parent made.

Run by ``os.register_at_fork`` in every child that ``os.fork()`` makes (gunicorn, Celery,
multiprocessing), and otherwise by :func:`catch_up`, which the WSGI glue calls on every
request: a server may fork with the C library's ``fork()`` and skip Python's fork hooks
(uWSGI does unless ``py-call-osafterfork`` is set). Without them a worker would keep using
its master's SQLite connection and share its pool of random ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

__all__ = ["after_in_child", "catch_up"]

log = logging.getLogger("tracking_mw")

_hooks: list[Callable[[], None]] = []
# The process whose hooks have run, or that imported this module.
_pid = os.getpid()


def after_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, in the order hooks were added."""
    _hooks.append(hook)


def _run() -> None:
    global _pid
    _pid = os.getpid()
    for hook in list(_hooks):
        try:
            hook()
        except Exception as exc:  # never break the fork of the app's own worker
            log.error("tracking_mw: after fork: %s", type(exc).__name__)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run)


def catch_up(pid: int) -> None:
    """Run the hooks now if this process (``pid``, ``os.getpid()``) was forked without
    them."""
    if pid != _pid:
        _run()
