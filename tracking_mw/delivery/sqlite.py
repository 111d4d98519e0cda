"""``sqlite:///path``: the default outbox, one file next to the app (``sqlite:////abs/path``).

Choices, and why:

- **WAL journal, ``synchronous=NORMAL``** (the default here). In WAL mode a commit is one
  append to the ``-wal`` file, no fsync: a record committed before ``track()`` returns
  survives a crash or ``kill -9`` of the process, because the data is in the OS page cache.
  Only a power loss or kernel crash can roll back the last commits. ``synchronous=FULL``
  would also survive those, at the price of one fsync per ``track()`` (milliseconds on most
  disks, in the request path); choose it with ``sqlite:///path?synchronous=full``.
- **One connection per thread and per process.** sqlite3 connections must not cross threads,
  and a connection must never be used after ``fork()`` (gunicorn ``--preload``): the pid is
  checked and a child opens its own connections, leaving the parent's untouched.
- **One prepared INSERT per record in one transaction**, ``INSERT OR IGNORE`` against the
  unique ``(event_id, platform)`` key: duplicates cost nothing and are reported.
- **The due time doubles as the lease.** A claim moves ``next_attempt_at`` to the end of the
  lease inside a ``BEGIN IMMEDIATE`` transaction, so several dispatcher processes on one host
  never claim the same record, and a dispatcher that dies leaves it due again later.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .._errors import ConfigurationError, OutboxError
from ._base import (
    DEAD,
    DELIVERED,
    PENDING,
    RETRYING,
    Claimed,
    DeliveryView,
    NewRecord,
    Outbox,
    OutboxOptions,
    dumps,
    empty_stats,
    excerpt,
    fork_safe_rlock,
    loads,
    new_token,
)

__all__ = ["SQLiteOutbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    batch_key TEXT NOT NULL,
    event_time REAL NOT NULL,
    item TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease TEXT,
    last_status INTEGER,
    last_response TEXT,
    last_error TEXT,
    UNIQUE (event_id, platform)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (platform, next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS outbox_done ON outbox (status, updated_at)
    WHERE status IN ('delivered', 'dead');
CREATE TABLE IF NOT EXISTS links (
    key TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

# Every SQLite call of this process runs under this lock, which fork() waits for (see
# fork_safe_rlock). SQLite serializes writers anyway, so it costs no concurrency there.
_LOCK = fork_safe_rlock()

_INSERT = (
    "INSERT OR IGNORE INTO outbox (platform, event_id, event_name, batch_key, event_time, item,"
    " status, created_at, updated_at, next_attempt_at) VALUES (?,?,?,?,?,?,'pending',?,?,?)"
)
_VIEW_COLS = (
    "id, platform, event_id, event_name, status, attempts, created_at, updated_at,"
    " next_attempt_at, item, last_status, last_response, last_error"
)


def _view(row: tuple[Any, ...]) -> DeliveryView:
    status = row[4]
    return DeliveryView(
        record_id=str(row[0]),
        platform=row[1],
        event_id=row[2],
        event_name=row[3],
        status=status,
        attempts=row[5],
        created_at=row[6],
        updated_at=row[7],
        next_attempt_at=row[8] if status in (PENDING, RETRYING) else None,
        item=loads(row[9]),
        last_status=row[10],
        last_response=row[11],
        last_error=row[12],
    )


class SQLiteOutbox(Outbox):
    """The outbox in one SQLite file (WAL). Safe across threads, processes on one host, fork."""

    def __init__(
        self, path: str, options: OutboxOptions | None = None, *, synchronous: str = "normal"
    ) -> None:
        if synchronous.lower() not in ("normal", "full", "extra"):
            raise ConfigurationError("sqlite outbox option synchronous must be normal or full")
        self.path = path
        self.options = options or OutboxOptions()
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._pid = os.getpid()
        # Connections of a parent process, kept referenced but never touched again after
        # fork: closing them in the child could disturb the parent's locks.
        self._orphans: list[sqlite3.Connection] = []
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"outbox directory does not exist: {directory}")
        try:
            with _LOCK:
                self._conn().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot create the outbox schema: {exc}") from exc

    @classmethod
    def from_url(cls, url: str) -> SQLiteOutbox:
        """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (+ ``?options``)."""
        options, extra = OutboxOptions.from_url(url, allowed=("synchronous",))
        rest = url[len("sqlite://") :].split("?", 1)[0]
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigurationError("TRACKING_OUTBOX must look like sqlite:///path/to/file")
        path = rest[1:]
        return cls(path, options, synchronous=extra.get("synchronous", "normal"))

    def _conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        if pid != self._pid:
            # A forked child: forget every connection inherited from the parent.
            self._pid = pid
            old = getattr(self._local, "conn", None)
            if old is not None:
                self._orphans.append(old)
            self._local = threading.local()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot open the outbox: {exc}") from exc
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        with _LOCK:
            conn = self._conn()
            with self._tx_on(conn, immediate):
                yield conn

    @contextmanager
    def _tx_on(self, conn: sqlite3.Connection, immediate: bool) -> Iterator[None]:
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox write failed: {exc}") from exc

    def add(self, records: Sequence[NewRecord], now: float) -> list[bool]:
        rows = [
            (
                r.platform,
                r.event_id,
                r.event_name,
                r.batch_key,
                r.event_time,
                dumps(r.item),
                now,
                now,
                now,
            )
            for r in records
        ]
        with self._tx() as conn:
            # Fast path: one executemany; its rowcount tells whether every row was new.
            if conn.executemany(_INSERT, rows).rowcount == len(rows):
                return [True] * len(rows)
            # Some were duplicates (rare): undo and insert row by row to know which.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")
            return [conn.execute(_INSERT, row).rowcount == 1 for row in rows]

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        token = new_token()
        with self._tx(immediate=True) as conn:
            rows = conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, lease = ? WHERE id IN ("
                " SELECT id FROM outbox WHERE platform = ? AND status IN ('pending', 'retrying')"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING id, event_id, event_name, batch_key, event_time, item, attempts,"
                " created_at",
                (now + lease_seconds, token, platform, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [
            Claimed(
                record_id=str(r[0]),
                platform=platform,
                event_id=r[1],
                event_name=r[2],
                batch_key=r[3],
                event_time=r[4],
                item=loads(r[5]),
                attempts=r[6],
                created_at=r[7],
                lease=token,
            )
            for r in rows
        ]

    def ack(
        self, records: Sequence[Claimed], now: float, status: int | None, response: str | None
    ) -> None:
        text = excerpt(response)
        ids = [int(c.record_id) for c in records]
        with self._tx() as conn:
            # One statement per 500 ids: far cheaper than one per record for big batches.
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                conn.execute(
                    "UPDATE outbox SET status = 'delivered', attempts = attempts + 1,"
                    " updated_at = ?, lease = NULL, last_status = ?, last_response = ?,"
                    f" last_error = NULL WHERE status != 'delivered' AND id IN"
                    f" ({','.join('?' * len(part))})",
                    (now, status, text, *part),
                )

    def reschedule(
        self,
        records: Sequence[tuple[Claimed, float]],
        now: float,
        error: str,
        status: int | None,
        response: str | None,
    ) -> None:
        text = excerpt(response)
        with self._tx() as conn:
            conn.executemany(
                "UPDATE outbox SET status = 'retrying', attempts = attempts + 1, updated_at = ?,"
                " next_attempt_at = ?, lease = NULL, last_status = ?, last_response = ?,"
                " last_error = ? WHERE id = ? AND lease = ?"
                " AND status IN ('pending', 'retrying')",
                [
                    (now, when, status, text, error, int(c.record_id), c.lease)
                    for c, when in records
                ],
            )

    def bury(
        self,
        records: Sequence[Claimed],
        now: float,
        reason: str,
        status: int | None,
        response: str | None,
    ) -> None:
        text = excerpt(response)
        with self._tx() as conn:
            conn.executemany(
                "UPDATE outbox SET status = 'dead', attempts = attempts + 1, updated_at = ?,"
                " lease = NULL, last_status = ?, last_response = ?, last_error = ?"
                " WHERE id = ? AND lease = ? AND status IN ('pending', 'retrying')",
                [(now, status, text, reason, int(c.record_id), c.lease) for c in records],
            )

    def release(self, records: Sequence[Claimed], now: float) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE outbox SET next_attempt_at = ?, lease = NULL WHERE id = ? AND lease = ?"
                " AND status IN ('pending', 'retrying')",
                [(now, int(c.record_id), c.lease) for c in records],
            )

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with _LOCK:
                return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}") from exc

    def recent(self, limit: int = 100) -> list[DeliveryView]:
        rows = self._select(f"SELECT {_VIEW_COLS} FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [_view(r) for r in rows]

    def dead_letters(self, limit: int = 100) -> list[DeliveryView]:
        rows = self._select(
            f"SELECT {_VIEW_COLS} FROM outbox WHERE status = 'dead' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [_view(r) for r in rows]

    def retry_dead(self, record_ids: Sequence[str] | None, now: float) -> int:
        sql = (
            "UPDATE outbox SET status = 'retrying', attempts = 0, next_attempt_at = ?,"
            " updated_at = ?, lease = NULL WHERE status = 'dead'"
        )
        with self._tx() as conn:
            if record_ids is None:
                return conn.execute(sql, (now, now)).rowcount
            n = 0
            for rid in record_ids:
                if rid.isdigit():
                    n += conn.execute(sql + " AND id = ?", (now, now, int(rid))).rowcount
            return n

    def stats(self, now: float) -> dict[str, dict[str, float]]:
        rows = self._select(
            "SELECT platform, status, count(*), min(created_at) FROM outbox"
            " GROUP BY platform, status",
            (),
        )
        out: dict[str, dict[str, float]] = {}
        for platform, status, count, oldest in rows:
            s = out.setdefault(platform, empty_stats())
            if status in (PENDING, RETRYING):
                s["pending"] += count
                if status == RETRYING:
                    s["retrying"] += count
                s["oldest_pending_age"] = max(s["oldest_pending_age"], now - oldest)
            elif status in (DELIVERED, DEAD):
                s[status] += count
        return out

    def link(self, key: str, snapshot: Mapping[str, Any], now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO links (key, snapshot, expires_at) VALUES (?, ?, ?)",
                (key, dumps(dict(snapshot)), now + self.options.link_ttl),
            )

    def linked(self, key: str, now: float) -> dict[str, Any] | None:
        rows = self._select(
            "SELECT snapshot FROM links WHERE key = ? AND expires_at > ?", (key, now)
        )
        if not rows:
            return None
        found = loads(rows[0][0])
        return found if isinstance(found, dict) else None

    def prune(self, now: float) -> int:
        with self._tx() as conn:
            n = conn.execute(
                "DELETE FROM outbox WHERE status = 'delivered' AND updated_at < ?",
                (now - self.options.retention,),
            ).rowcount
            n += conn.execute(
                "DELETE FROM outbox WHERE status = 'dead' AND updated_at < ?",
                (now - self.options.dead_retention,),
            ).rowcount
            n += conn.execute("DELETE FROM links WHERE expires_at <= ?", (now,)).rowcount
        return n

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and os.getpid() == self._pid:
            conn.close()
            self._local.conn = None

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.path!r})"
