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
- **Checkpoints off the request path.** SQLite's automatic WAL checkpoint runs inside the
  commit that crosses the threshold, and it fsyncs: a few milliseconds in one unlucky
  ``track()``. The threshold is raised (4,000 pages) and the dispatcher runs a PASSIVE
  checkpoint between claims, which never blocks writers. Durability is unchanged: a
  checkpoint only copies committed pages from the WAL into the database file.
- **Claims leave items as text.** A claimed record carries its stored JSON; the Meta
  adapter splices those texts into the request body without parsing them.
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
# A claim is two statements in one transaction: mark the due records with the lease, then
# read them back as ONE row (metadata as a JSON array, items joined by RS, a character
# compact JSON never holds). Reading 1,000 rows one by one re-takes the GIL 1,000 times,
# and while the event loop is busy each of those waits (a claim took 3x its SQL time).
_CLAIM_MARK = (
    "UPDATE outbox SET next_attempt_at = ?, lease = ? WHERE id IN ("
    " SELECT id FROM outbox WHERE platform = ? AND status IN ('pending', 'retrying')"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
)
_CLAIMED_WHERE = (
    " FROM outbox WHERE platform = ? AND status IN ('pending', 'retrying')"
    " AND next_attempt_at = ? AND lease = ?"
)
# Floats as text with 17 significant digits: JSON's REAL output keeps only 15.
_CLAIMED_ONE_ROW = (
    "SELECT count(*), json_group_array(json_array(id, event_id, event_name, batch_key,"
    " printf('%!.17g', event_time), attempts, printf('%!.17g', created_at))),"
    " group_concat(item, char(30)) FROM (SELECT *" + _CLAIMED_WHERE + " ORDER BY id)"
)
_CLAIMED_ROWS = (
    "SELECT id, event_id, event_name, batch_key, event_time, item, attempts, created_at"
    + _CLAIMED_WHERE
    + " ORDER BY id"
)
_RS = "\x1e"
# Pages the WAL may grow to before a committing connection checkpoints it itself (the
# SQLite default is 1,000). A checkpoint inside a commit copies the WAL into the database
# and fsyncs it: milliseconds, which would land in some unlucky track() call. The
# dispatcher checkpoints (PASSIVE) between claims instead; this bound only matters when
# no dispatcher runs, and keeps the WAL under about 16 MB then.
_AUTOCHECKPOINT_PAGES = 4_000
# Page cache of a connection that claims (see claim()), in KiB.
_CLAIM_CACHE_KB = 16_384
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

    # Every call runs under one process-wide lock (and SQLite has one writer at a time).
    parallel_io = False

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
                conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
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
        # The transaction is written out (no context manager): this is track()'s whole
        # cost in the request path, and every microsecond here is one of the view's.
        with _LOCK:
            conn = self._conn()
            try:
                conn.execute("BEGIN")
                try:
                    # Fast path: one executemany; its rowcount tells whether all were new.
                    if conn.executemany(_INSERT, rows).rowcount == len(rows):
                        added = [True] * len(rows)
                    else:
                        # Some were duplicates (rare): undo, insert one by one to know which.
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN")
                        added = [conn.execute(_INSERT, row).rowcount == 1 for row in rows]
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox write failed: {exc}") from exc
        return added

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        token = new_token()
        if not getattr(self._local, "claims", False):
            # A claiming connection (a dispatcher's) touches hundreds of pages per call:
            # a bigger page cache than SQLite's 2 MB default halves the cost of a claim.
            # Only these connections get it; track()'s connections write a few pages.
            with _LOCK:
                self._conn().execute(f"PRAGMA cache_size=-{_CLAIM_CACHE_KB}")
            self._local.claims = True
        until = now + lease_seconds
        with self._tx(immediate=True) as conn:
            if conn.execute(_CLAIM_MARK, (until, token, platform, now, limit)).rowcount <= 0:
                return []
            count, metas_json, items_text = conn.execute(
                _CLAIMED_ONE_ROW, (platform, until, token)
            ).fetchone()
            metas: list[list[Any]] = loads(metas_json) if count else []
            items = items_text.split(_RS) if count else []
            if len(items) != count or len(metas) != count:
                # An item holding RS (not written by this library): read row by row.
                rows = conn.execute(_CLAIMED_ROWS, (platform, until, token)).fetchall()
                metas = [[r[0], r[1], r[2], r[3], r[4], r[6], r[7]] for r in rows]
                items = [r[5] for r in rows]
        # The item stays JSON text: parsed only if read (see Claimed).
        return [
            Claimed(
                str(m[0]),
                platform,
                m[1],
                m[2],
                m[3],
                float(m[4]),
                None,
                m[5],
                float(m[6]),
                token,
                item_json=item,
            )
            for m, item in zip(metas, items, strict=True)
        ]

    def checkpoint(self) -> None:
        """Copy the WAL back into the database file without blocking anyone (PASSIVE).

        Run by the dispatcher between claims, so that ``track()`` (whose connections only
        checkpoint automatically once the WAL is very large) never pays for it.
        """
        try:
            with _LOCK:
                self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox checkpoint failed: {exc}") from exc

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
