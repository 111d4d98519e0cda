"""A file on this host that keeps ``track()``'s records while a shared outbox cannot take them.

Why: a Redis outbox lives on another machine. While it is down, each ``track()`` would lose
its event (the receipt would report the error), and while it hangs, each would wait out the
client's socket timeout (2 s) in the request. With a spool, the first outage error moves
``track()`` to a SQLite file on this host (one local commit, as with the SQLite outbox) and
Redis is not tried again in the request path until the spool has been moved into it.

A forwarder thread of this process moves the spool into the outbox, retrying with backoff
(from :data:`FIRST_WAIT` up to :data:`MAX_WAIT` seconds); when the spool is empty, ``track()``
writes to the outbox again. A forward is an ordinary ``add``: the outbox's uniqueness of
``(platform, event_id)`` makes a record forwarded twice (a crash between the ``add`` and the
spool's delete, two processes forwarding the same rows) one delivery. Row ids are never
reused (AUTOINCREMENT), so a forwarder's delete never removes a row spooled after it read.

Every process of a host may share one spool file (SQLite locking, WAL), and so may several
outboxes: each row names its outbox (its URL without password), and a spool moves only its
own. A process that starts, or a worker forked from a master that made the runtime
(gunicorn ``--preload``), forwards what an earlier process left (:meth:`Spool.resume`).
Nothing here raises into ``track()``: a spool that cannot be written either is reported on
the receipt.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence

from .._errors import ConfigurationError
from .._fork import after_in_child, fork_safe_rlock
from .._json import dumps, loads
from ._base import NewRecord, Outbox

__all__ = ["FIRST_WAIT", "MAX_WAIT", "Spool"]

log = logging.getLogger("tracking_mw")

#: Seconds the forwarder waits before its first try, doubled after each failure up to MAX_WAIT.
FIRST_WAIT = 1.0
MAX_WAIT = 30.0
# Events moved per outbox add: one Redis round trip each, a few hundred records.
_FORWARD_BATCH = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox TEXT NOT NULL,
    spooled_at REAL NOT NULL,
    records TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_outbox ON spool (outbox, id);
"""


def _encode(records: Sequence[NewRecord]) -> str:
    return dumps([list(r) for r in records])


def _decode(text: str) -> list[NewRecord]:
    return [NewRecord(*r) for r in loads(text)]


# Every live spool of this process; one at-fork hook for all of them (os.register_at_fork
# hooks cannot be removed, so one per spool would pile up in a process that makes many).
_SPOOLS: weakref.WeakSet[Spool] = weakref.WeakSet()


def _resume_all() -> None:
    for spool in list(_SPOOLS):
        try:
            spool.resume()
        except Exception as exc:  # never break the fork of the app's own worker
            log.error("tracking_mw: the outbox spool cannot be resumed: %s", type(exc).__name__)


# A worker forked from a master that made the runtime (gunicorn --preload) forwards what an
# earlier worker left.
after_in_child(_resume_all)


class Spool:
    """The local spool of one outbox (see the module docstring): ``path`` is the SQLite
    file, ``outbox`` the shared outbox its records are moved into, ``name`` what tells that
    outbox's rows from another's in a shared file (its URL without password)."""

    def __init__(self, path: str, outbox: Outbox, name: str) -> None:
        # Absolute now: a process that changes directory later still uses this file.
        path = os.path.abspath(path)
        if not os.path.isdir(os.path.dirname(path)):
            raise ConfigurationError(
                f"TRACKING_OUTBOX_SPOOL: directory does not exist: {os.path.dirname(path)}"
            )
        if os.path.isdir(path):
            raise ConfigurationError(f"TRACKING_OUTBOX_SPOOL is a directory: {path}")
        self.path = path
        self.name = name
        self.outbox = outbox
        self._lock = fork_safe_rlock()
        self._conn: sqlite3.Connection | None = None
        # Connections of a parent process, kept referenced and never used or closed here:
        # closing one in a forked child could disturb the parent's SQLite locks.
        self._inherited: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        # True while the outbox is failing: track() writes here without trying it.
        self.engaged = False
        self.wait = FIRST_WAIT
        _SPOOLS.add(self)  # weakly: resumed in forked children (_resume_all)

    # -- storage ------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # Called with self._lock held. A forked child opens its own connection.
        if self._closed:
            raise sqlite3.ProgrammingError("the spool is closed")
        if self._conn is not None and self._pid != os.getpid():
            self._inherited.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._pid = os.getpid()
            self._thread = None
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def put(self, records: Sequence[NewRecord]) -> None:
        """Commit ``records`` (one event's) to the spool and make sure they get forwarded.
        Raises ``sqlite3.Error``/``OSError`` when the file cannot be written."""
        text = _encode(records)
        with self._lock:
            self._db().execute(
                "INSERT INTO spool (outbox, spooled_at, records) VALUES (?, ?, ?)",
                (self.name, time.time(), text),
            )
            self.engaged = True
            self._ensure_forwarder()

    def pending(self) -> int:
        """Records of this outbox waiting in the spool (all processes sharing the file)."""
        with self._lock:
            rows = (
                self._db()
                .execute("SELECT records FROM spool WHERE outbox = ?", (self.name,))
                .fetchall()
            )
        return sum(len(loads(r[0])) for r in rows)

    def forward(self) -> int:
        """Move this outbox's spooled records into it; the number of records moved. Raises
        (``OutboxError`` and the like) when the outbox still fails: what was moved stays
        moved. Stops between batches once :meth:`close` was called."""
        moved = 0
        while not self._stop.is_set():
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        "SELECT id, records FROM spool WHERE outbox = ? ORDER BY id LIMIT ?",
                        (self.name, _FORWARD_BATCH),
                    )
                    .fetchall()
                )
            if not rows:
                break
            records = [rec for _, text in rows for rec in _decode(text)]
            # Outside the lock: track() may spool meanwhile while this waits on the outbox.
            self.outbox.add(records, time.time())
            with self._lock:
                self._db().executemany("DELETE FROM spool WHERE id = ?", [(r[0],) for r in rows])
            moved += len(records)
        return moved

    def _is_empty(self) -> bool:
        # Called with self._lock held.
        row = (
            self._db()
            .execute("SELECT 1 FROM spool WHERE outbox = ? LIMIT 1", (self.name,))
            .fetchone()
        )
        return row is None

    # -- forwarder ----------------------------------------------------------------------

    def resume(self) -> None:
        """Forward what an earlier process left in the spool file, if anything: called by
        the runtime at startup, and in every child forked after that."""
        if self._closed or not os.path.exists(self.path):
            return  # never needed yet: no file is made until an outage needs one
        try:
            with self._lock:
                if not self._is_empty():
                    self.engaged = True
                    self._ensure_forwarder()
        except sqlite3.Error as exc:
            log.error("tracking_mw: the outbox spool cannot be read: %s", type(exc).__name__)

    def _ensure_forwarder(self) -> None:
        # Called with self._lock held.
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.wait = FIRST_WAIT
        self._thread = threading.Thread(target=self._run, name="tracking_mw-spool", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.wait):
            try:
                moved = self.forward()
                with self._lock:
                    if self._stop.is_set() or not self._is_empty():
                        continue
                    # Under the lock: a put() after this starts a new forwarder.
                    self.engaged = False
                    self._thread = None
            except Exception as exc:  # the outbox (or the file) still fails: wait, never die
                self.wait = min(self.wait * 2, MAX_WAIT)
                log.warning(
                    "tracking_mw: the outbox still fails (%s); events stay in the spool",
                    type(exc).__name__,
                )
                continue
            if moved:
                log.warning("tracking_mw: the spooled events are in the outbox now")
            return

    def close(self, timeout: float = 5.0) -> None:
        """Stop the forwarder (what is spooled stays in the file) and close the file."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        _SPOOLS.discard(self)
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, engaged={self.engaged})"
