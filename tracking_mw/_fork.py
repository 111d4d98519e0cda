"""Forks: the locks a fork waits for, and what a forked child must redo before it uses what
its parent made.

One set of ``os.register_at_fork`` hooks serves everything here (hooks cannot be removed, so
one per lock or per object would pile up in a process that makes many):

- before a fork, every :func:`fork_safe_rlock` is taken, so no thread holds one over it; after
  it, each is released on both sides;
- in the child, then, every hook given to :func:`after_in_child` runs, in the order given.

A server may fork with the C library's ``fork()`` and skip Python's fork hooks (uWSGI does
unless ``py-call-osafterfork`` is set). :func:`catch_up`, which the WSGI glue calls on every
request, runs the child hooks then; without them a worker would keep using its master's
SQLite connection and share its pool of random ids. Locks cannot be made safe after the fact:
such a server needs a master with no threads holding them, which is the usual case.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["after_in_child", "catch_up", "fork_safe_rlock"]

log = logging.getLogger("tracking_mw")

# The locks fork() waits for, keyed by a counter (dict order is creation order), held
# weakly: an entry removes itself when its lock is dropped. Only single dict operations,
# atomic under the GIL: no lock guards these.
_locks: dict[int, weakref.ref[threading.RLock]] = {}
_lock_keys = itertools.count()
_held: list[threading.RLock] = []
_hooks: list[Callable[[], None]] = []
# The process whose child hooks have run, or that imported this module.
_pid = os.getpid()


def fork_safe_rlock() -> threading.RLock:
    """An RLock that ``fork()`` waits for: taken before a fork, released after it on both
    sides, so a child never inherits it held by a thread that does not exist there.

    SQLite needs this too: a child forked while another thread is inside a transaction
    inherits SQLite's in-process lock bookkeeping in that state and finds the database
    "locked" forever (gunicorn ``--preload`` forks a process that may hold connections).
    """
    lock = threading.RLock()
    key = next(_lock_keys)
    locks = _locks  # bound here: module globals may be gone when a lock dies at exit

    def forget(_: object) -> None:
        locks.pop(key, None)

    locks[key] = weakref.ref(lock, forget)
    return lock


def after_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, in the order hooks were added."""
    _hooks.append(hook)


def _before() -> None:
    # Newest first, as separate hooks would run: an object's lock before a module's.
    for ref in reversed(list(_locks.values())):
        lock = ref()
        if lock is not None:
            lock.acquire()
            _held.append(lock)


def _release() -> None:
    while _held:
        _held.pop().release()


def _run() -> None:
    global _pid
    _pid = os.getpid()
    for hook in list(_hooks):
        try:
            hook()
        except Exception as exc:  # never break the fork of the app's own worker
            log.error("tracking_mw: after fork: %s", type(exc).__name__)


def _in_child() -> None:
    _release()
    _run()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_release, after_in_child=_in_child)


def catch_up(pid: int) -> None:
    """Run the child hooks now if this process (``pid``, ``os.getpid()``) was forked without
    them."""
    if pid != _pid:
        _run()
