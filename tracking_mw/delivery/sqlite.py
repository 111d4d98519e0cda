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
  checked and a child opens its own connections, leaving the parent's untouched. A
  connection is closed when its thread ends or when the outbox is dropped, whichever comes
  first, and only by the process that opened it (Python 3.13 warns about a connection
  garbage-collected open).
- **Two tables: what is sent, and how its delivery goes.** ``events`` holds one row per
  event: its platforms' items, written once by ``track()`` and never changed. ``deliveries``
  holds one small row per (event, platform): status, attempts, due time, lease, last answer.
  A SQLite commit costs what it writes (one WAL frame per page changed), so:

  - ``track()`` appends one row to ``events``, a rowid table with no index: its commit
    changes the table's last page and nothing else. Rows of ``deliveries`` would change
    three b-trees (the table, the ``(event_id, platform)`` key, the due-time index).
  - The dispatcher turns new ``events`` rows into ``deliveries`` rows at the start of each
    claim, in the claim's own transaction, off the request path (``moved.upto`` is the last
    event done; rowids only grow, because the newest event row is never deleted). Reads
    that count or list deliveries do the same first, so a fresh event is never invisible.
  - Claims, acks and retries rewrite only the small ``deliveries`` rows, never the items:
    a fifth of the pages they would otherwise write.
- **Duplicates.** ``(event_id, platform)`` is unique in ``deliveries``, so an event tracked
  twice is queued once, whatever the timing. ``add()`` also *reports* a duplicate: one this
  process queued before, or one already in ``deliveries`` (the insert looks the key up,
  which writes nothing). A copy queued by another process in the few milliseconds before the
  first one reached ``deliveries`` is dropped when it gets there; only its receipt says
  "queued".
- **The due time doubles as the lease.** A claim moves ``next_attempt_at`` to the end of the
  lease inside a ``BEGIN IMMEDIATE`` transaction, so several dispatcher processes on one host
  never claim the same record, and a dispatcher that dies leaves it due again later.
- **Checkpoints off the request path.** SQLite's automatic WAL checkpoint runs inside the
  commit that crosses the threshold, and it fsyncs: a few milliseconds in one unlucky
  ``track()``. The threshold is raised (4,000 pages) and the dispatcher runs a PASSIVE
  checkpoint between claims, which never blocks writers, nor holds the lock every other
  SQLite call of the process takes. Durability is unchanged: a checkpoint only copies
  committed pages from the WAL into the database file.
- **Pruning in batches.** Old records are deleted 1,000 per transaction, with a pause
  between two, so a ``track()`` waits for a batch or so, not for the whole backlog.
- **Claims leave items as text.** A claimed record carries its stored JSON (cut out of the
  event row by SQL); the Meta adapter splices those texts into the request body unparsed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from .._errors import ConfigurationError, OutboxError
from .._fork import after_in_child, fork_safe_rlock
from .._json import clean_text
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
    loads,
    new_token,
)

__all__ = ["SQLiteOutbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_time REAL NOT NULL,
    created_at REAL NOT NULL,
    heads TEXT NOT NULL,
    items TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_ref INTEGER NOT NULL,
    item_start INTEGER NOT NULL,
    item_len INTEGER NOT NULL,
    platform TEXT NOT NULL,
    event_id TEXT NOT NULL,
    batch_key TEXT NOT NULL,
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
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (platform, next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (status, updated_at)
    WHERE status IN ('delivered', 'dead');
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_ref);
CREATE TABLE IF NOT EXISTS moved (
    one INTEGER PRIMARY KEY CHECK (one = 0),
    upto INTEGER NOT NULL
);
INSERT OR IGNORE INTO moved (one, upto) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS links (
    key TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

# Bumped in every forked child: _conn() compares it instead of calling os.getpid() (a
# system call) in every track().
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


after_in_child(_forked)

# Every SQLite call of this process runs under this lock, which fork() waits for (see
# fork_safe_rlock). SQLite serializes writers anyway, so it costs no concurrency there.
# One exception, the checkpoint (see _CHECKPOINT_LOCK).
_LOCK = fork_safe_rlock()
# The dispatcher's PASSIVE checkpoint copies pages and fsyncs the database: milliseconds,
# which a track() of this process would wait for under _LOCK. It runs under this lock
# instead. Why that is safe:
# - _LOCK is there for fork(): a child must never inherit SQLite's in-process lock state
#   half changed. fork() waits for this lock too, so it never forks mid-checkpoint either.
#   (fork takes this lock first, then _LOCK: at-fork "before" hooks run newest first. A
#   checkpoint never holds both at once, so the order cannot deadlock.)
# - The checkpoint uses the calling thread's own connection, which no other thread uses;
#   SQLite lets threads use separate connections at once, unless it was built
#   single-threaded (sqlite3.threadsafety 0), in which case the checkpoint keeps _LOCK.
# - A PASSIVE checkpoint takes the WAL's checkpoint lock, never the write lock: commits of
#   other connections go on meanwhile, exactly as when another process checkpoints.
_CHECKPOINT_LOCK = fork_safe_rlock()
_SINGLE_THREADED = sqlite3.threadsafety == 0

# One event as one row: ``heads`` is a JSON array of [platform, batch_key, item length],
# ``items`` the items' JSON texts joined by RS (see _RS), in the same order. The row is
# written only if no delivery of the event exists yet (an index lookup, no page written).
_INTO_EVENTS = "INSERT INTO events (event_id, event_name, event_time, created_at, heads, items)"
_EVENT_INSERT = (
    _INTO_EVENTS
    + " SELECT ?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?)"
)
_EVENT_INSERT_ANY = _INTO_EVENTS + " VALUES (?,?,?,?,?,?)"
_NEW_EVENTS = "SELECT id, event_id, created_at, heads FROM events WHERE id > ? ORDER BY id LIMIT ?"
_NEW_EVENTS_WITH_ITEMS = (
    "SELECT id, event_id, created_at, heads, event_name, event_time, items FROM events"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
# OR IGNORE: the unique key drops a copy of an event that another process queued too.
# Plain "?" placeholders (created_at given twice): Python 3.12.0-3.12.3 warn about numbered
# ones bound from a sequence.
_DELIVERY_INSERT = (
    "INSERT OR IGNORE INTO deliveries (id, event_ref, item_start, item_len, platform, event_id,"
    " batch_key, status, created_at, updated_at, next_attempt_at, lease)"
    " VALUES (?,?,?,?,?,?,?,'pending',?,?,?,?)"
)
# Events turned into deliveries per transaction: bounds the time a claim holds the write
# lock (a track() in another process waits for it) when a backlog has built up.
_MOVE_BATCH = 2_000
# Deliveries (and expired links) deleted per transaction by prune(). A transaction holds
# _LOCK (a track() of this process waits) and SQLite's write lock (a track() of another
# process waits): a backlog of old records goes a bounded batch at a time.
_PRUNE_BATCH = 1_000
# Event ids this process queued lately, and for which platforms: a duplicate from the same
# process is reported without a read. Bounded (10,000 to 20,000 ids); the unique key is
# what guarantees "once".
_RECENT_IDS = 10_000
_NONE: frozenset[str] = frozenset()
# A record's item, cut out of its event row.
_ITEM = "substr(e.items, d.item_start, d.item_len)"
# A claim is two statements in one transaction: mark the due records with the lease, then
# read them back as ONE row (metadata as a JSON array, items joined by RS, a character
# compact JSON never holds). Reading 1,000 rows one by one re-takes the GIL 1,000 times,
# and while the event loop is busy each of those waits (a claim took 3x its SQL time).
_CLAIM_MARK = (
    "UPDATE deliveries SET next_attempt_at = ?, lease = ? WHERE id IN ("
    " SELECT id FROM deliveries WHERE platform = ? AND status IN ('pending', 'retrying')"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
)
# Whether a claim would find anything: a due record of the platform (the partial index
# deliveries_due) or an event not yet made into deliveries. A read: an idle dispatcher asks
# this instead of taking the write lock (BEGIN IMMEDIATE) several times a second per lane,
# in every worker process, which every track() on the host would queue behind.
_ANYTHING_DUE = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE platform = ?"
    " AND status IN ('pending', 'retrying') AND next_attempt_at <= ?)"
    " OR EXISTS (SELECT 1 FROM events WHERE id > (SELECT upto FROM moved))"
)
# CROSS JOIN keeps ``d`` the outer loop, so records come in id order.
_CLAIMED = (
    " FROM (SELECT * FROM deliveries WHERE platform = ? AND status IN ('pending', 'retrying')"
    " AND next_attempt_at = ? AND lease = ? ORDER BY id) d CROSS JOIN events e"
    " ON e.id = d.event_ref"
)
# Floats as text with 17 significant digits: JSON's REAL output keeps only 15.
_CLAIMED_ONE_ROW = (
    "SELECT count(*), json_group_array(json_array(d.id, d.event_id, e.event_name, d.batch_key,"
    " printf('%!.17g', e.event_time), d.attempts, printf('%!.17g', d.created_at))),"
    f" group_concat({_ITEM}, char(30))" + _CLAIMED
)
_CLAIMED_ROWS = (
    "SELECT d.id, d.event_id, e.event_name, d.batch_key, e.event_time, d.attempts,"
    f" d.created_at, {_ITEM}" + _CLAIMED
)
_RS = "\x1e"
# Events (ids filled in) none of whose deliveries is left, once pruned. Never the newest
# event: new rowids must stay above ``moved.upto``.
_DELETE_BARE_EVENTS = (
    "DELETE FROM events WHERE id IN ({}) AND id < (SELECT max(id) FROM events)"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_ref = events.id)"
)
# Pages the WAL may grow to before a committing connection checkpoints it itself (the
# SQLite default is 1,000). A checkpoint inside a commit copies the WAL into the database
# and fsyncs it: milliseconds, which would land in some unlucky track() call. The
# dispatcher checkpoints (PASSIVE) between claims instead; this bound only matters when
# no dispatcher runs, and keeps the WAL under about 16 MB then.
_AUTOCHECKPOINT_PAGES = 4_000
# Page cache of a connection that claims (see claim()), in KiB.
_CLAIM_CACHE_KB = 16_384
_VIEW = (
    "SELECT d.id, d.platform, d.event_id, e.event_name, d.status, d.attempts, d.created_at,"
    f" d.updated_at, d.next_attempt_at, {_ITEM}, d.last_status, d.last_response, d.last_error"
    " FROM deliveries d JOIN events e ON e.id = d.event_ref"
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
        # Absolute now: a thread or process that changes directory later (a server that
        # chdirs to /, a worker started elsewhere) still opens this file, not a new one.
        self.path = path if path == ":memory:" else os.path.abspath(path)
        self.options = options or OutboxOptions()
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._pid = os.getpid()
        self._generation = _generation
        # Connections of a parent process, kept referenced but never touched again after
        # fork: closing them in the child could disturb the parent's locks.
        self._orphans: list[sqlite3.Connection] = []
        # Every connection opened, with the pid that opened it: closed when the outbox is
        # dropped (each is also closed when its thread ends, see _conn).
        self._opened: list[tuple[sqlite3.Connection, int]] = []
        weakref.finalize(self, _close_own, self._opened)
        # Two generations (see _RECENT_IDS): dropping a whole dict is O(1), while deleting
        # a dict's oldest keys one by one makes finding the next oldest ever slower.
        self._recent: dict[str, tuple[frozenset[str], float]] = {}
        self._recent_old: dict[str, tuple[frozenset[str], float]] = {}
        directory = os.path.dirname(self.path)
        if self.path != ":memory:" and not os.path.isdir(directory):
            raise ConfigurationError(f"outbox directory does not exist: {directory}")
        try:
            with _LOCK:
                self._conn().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot create the outbox schema in {self.path}: {exc}") from exc

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
        if self._generation != _generation:
            # A forked child: forget every connection inherited from the parent.
            self._generation = _generation
            self._pid = os.getpid()
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
                raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
            self._local.conn = conn
            opened = (conn, self._pid)
            self._opened.append(opened)
            # Closed when this thread ends (a thread-local alone would let it be collected
            # open), and forgotten: a server may start a thread per request.
            weakref.finalize(threading.current_thread(), _thread_ended, self._opened, opened)
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
        if not records:
            return []
        eid = records[0].event_id
        for r in records:
            if r.event_id != eid:
                break
        else:
            # The common call (track()): one event, any number of platforms. One statement,
            # committed on its own (autocommit), is the whole cost in the request path.
            with _LOCK:
                conn = self._conn()
                try:
                    flags, seen = self._add_event(conn, eid, records, now)
                except sqlite3.Error as exc:
                    raise OutboxError(f"outbox write failed: {exc}") from exc
                if seen is not None:
                    self._remember(eid, seen, now)
                return flags
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(r.event_id, []).append(i)
        added = [False] * len(records)
        # Remembered only once the transaction committed: an event rolled back must not
        # look queued to the next add().
        remember: list[tuple[str, frozenset[str]]] = []
        with self._tx() as conn:
            for event_id, indexes in groups.items():
                flags, seen = self._add_event(conn, event_id, [records[i] for i in indexes], now)
                if seen is not None:
                    remember.append((event_id, seen))
                for i, flag in zip(indexes, flags, strict=True):
                    added[i] = flag
        for event_id, seen in remember:
            self._remember(event_id, seen, now)
        return added

    def _remember(self, eid: str, platforms: frozenset[str], now: float) -> None:
        """Note that ``eid`` is queued for ``platforms`` (call after the commit)."""
        recent = self._recent
        recent[eid] = (platforms, now)
        if len(recent) >= _RECENT_IDS:
            self._recent_old, self._recent = recent, {}

    def _add_event(
        self, conn: sqlite3.Connection, eid: str, records: Sequence[NewRecord], now: float
    ) -> tuple[list[bool], frozenset[str] | None]:
        """Write one event's new records as one ``events`` row. Per record, True if new;
        and the platforms the event is now known to be queued for, for the caller to
        remember once the write is committed (None: nothing new to remember)."""
        seen: frozenset[str] = _NONE
        fresh = records
        known = self._recent.get(eid) or self._recent_old.get(eid)
        # Older than the retention, its records may have been pruned: ask the store.
        if known is not None and now - known[1] <= self.options.retention:
            seen = known[0]
            fresh = [r for r in records if r.platform not in seen]
            if not fresh:
                return [False] * len(records), None
        first = fresh[0]
        key, name = eid, first.event_name
        if not (key.isascii() and name.isascii()):
            # Bound as they are, text UTF-8 cannot encode (a lone surrogate) would fail the
            # write. The items are cleaned by dumps() (see _json).
            key, name = clean_text(key), clean_text(name)
        heads, items = _pack(fresh)
        if (
            conn.execute(
                _EVENT_INSERT, (key, name, first.event_time, now, heads, items, key)
            ).rowcount
            != 1
        ):
            # Some platform already has a delivery of this event: queue the others only.
            queued = frozenset(
                p
                for (p,) in conn.execute(
                    "SELECT platform FROM deliveries WHERE event_id = ?", (key,)
                )
            )
            seen = seen | queued
            fresh = [r for r in fresh if r.platform not in queued]
            if fresh:
                conn.execute(_EVENT_INSERT_ANY, (key, name, first.event_time, now, *_pack(fresh)))
        seen = seen.union([r.platform for r in fresh])
        if len(fresh) == len(records):
            return [True] * len(records), seen
        kept = {id(r) for r in fresh}
        return [id(r) in kept for r in records], seen

    def _move(
        self,
        conn: sqlite3.Connection,
        limit: int = _MOVE_BATCH,
        lease: tuple[str, float, str] | None = None,
    ) -> tuple[int, list[Claimed] | None]:
        """Make the deliveries of up to ``limit`` new events (inside the caller's write
        transaction). Returns how many events were done and, with ``lease`` = (platform,
        until, token), that platform's new deliveries, made already leased: a claim needs
        no second write and no read-back for them. ``None`` instead of that list means
        some deliveries were copies (dropped): the caller reads its leased ones back."""
        upto = conn.execute("SELECT upto FROM moved").fetchone()[0]
        mine, until, token = lease or ("", 0.0, "")
        rows = conn.execute(
            _NEW_EVENTS_WITH_ITEMS if mine else _NEW_EVENTS, (upto, limit)
        ).fetchall()
        if not rows:
            return 0, []
        out: list[tuple[Any, ...]] = []
        claimed: list[Claimed] = []
        # Explicit ids, so the leased ones are known without reading them back.
        next_id = (conn.execute("SELECT max(id) FROM deliveries").fetchone()[0] or 0) + 1
        for row in rows:
            ref, eid, created, heads = row[:4]
            start = 1  # SQL's substr() counts from 1
            for platform, key, length in loads(heads):
                # Leased to this claim at once, or due now for another platform's claim.
                due, held = (until, token) if platform == mine else (created, None)
                out.append(
                    (next_id, ref, start, length, platform, eid, key, created, created, due, held)
                )
                if platform == mine:
                    # Cut by length, not split by RS: exact whatever the item holds.
                    text = row[6][start - 1 : start - 1 + length]
                    claimed.append(
                        Claimed(
                            str(next_id),
                            platform,
                            eid,
                            row[4],
                            key,
                            row[5],
                            None,
                            0,
                            created,
                            token,
                            item_json=text,
                        )
                    )
                next_id += 1
                start += length + 1
        made = conn.executemany(_DELIVERY_INSERT, out).rowcount
        last = rows[-1][0]
        conn.execute("UPDATE moved SET upto = ?", (last,))
        if made == len(out):
            return len(rows), claimed
        # Copies of events already queued: their rows hold nothing else to send.
        conn.execute(
            "DELETE FROM events WHERE id BETWEEN ? AND ?"
            " AND id < (SELECT max(id) FROM events)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_ref = events.id)",
            (rows[0][0], last),
        )
        return len(rows), None

    def _move_all(self) -> None:
        """Make every new event's deliveries (reads that count or list them need it), one
        bounded transaction at a time."""
        while True:
            with self._tx(immediate=True) as conn:
                if self._move(conn)[0] < _MOVE_BATCH:
                    return

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        token = new_token()
        if not getattr(self._local, "claims", False):
            # A claiming connection (a dispatcher's) touches hundreds of pages per call:
            # a bigger page cache than SQLite's 2 MB default halves the cost of a claim.
            # Only these connections get it; track()'s connections write a few pages.
            with _LOCK:
                self._conn().execute(f"PRAGMA cache_size=-{_CLAIM_CACHE_KB}")
            self._local.claims = True
        idle: set[str] = self._local.__dict__.setdefault("idle", set())
        if platform in idle:
            # This thread's last claim of the platform found nothing: ask with a read first.
            # (A busy lane claims straight away: the read would only add to its claims.)
            try:
                with _LOCK:
                    due = self._conn().execute(_ANYTHING_DUE, (platform, now)).fetchone()[0]
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox read failed: {exc}") from exc
            if not due:
                return []
        until = now + lease_seconds
        with self._tx(immediate=True) as conn:
            # Due deliveries first (retries, expired leases, ones made by another claim),
            # then new events, whose deliveries of this platform are made leased.
            marked = max(
                conn.execute(_CLAIM_MARK, (until, token, platform, now, limit)).rowcount, 0
            )
            # None: read the leased records back at the end instead of building them here.
            claimed: list[Claimed] | None = None if marked else []
            budget = limit - marked
            moved = 0
            while budget > 0 and moved < _MOVE_BATCH:
                # One event holds at most one delivery per platform: ``budget`` events
                # cannot lease more than the budget.
                n, fresh = self._move(
                    conn, min(budget, _MOVE_BATCH - moved), (platform, until, token)
                )
                if not n:
                    break
                moved += n
                if fresh is None:
                    claimed = None
                    budget -= n  # at most n were leased
                else:
                    budget -= len(fresh)
                    if claimed is not None:
                        claimed.extend(fresh)
            if claimed is None:
                claimed = self._read_claimed(conn, platform, until, token)
        if claimed:
            idle.discard(platform)
        else:
            idle.add(platform)
        return claimed

    def _read_claimed(
        self, conn: sqlite3.Connection, platform: str, until: float, token: str
    ) -> list[Claimed]:
        """The records leased by this claim, read back (one row, see _CLAIMED_ONE_ROW)."""
        count, metas_json, items_text = conn.execute(
            _CLAIMED_ONE_ROW, (platform, until, token)
        ).fetchone()
        metas: list[list[Any]] = loads(metas_json) if count else []
        items = items_text.split(_RS) if count else []
        if len(items) != count or len(metas) != count:
            # An item holding RS (not written by this library): read row by row.
            rows = conn.execute(_CLAIMED_ROWS, (platform, until, token)).fetchall()
            metas = [list(r[:7]) for r in rows]
            items = [r[7] for r in rows]
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
        checkpoint automatically once the WAL is very large) never pays for it. It runs
        outside the process-wide lock (see _CHECKPOINT_LOCK): a ``track()`` in another
        thread of this process commits meanwhile.
        """
        try:
            with _LOCK:
                # _conn() notices a fork and opens connections: under _LOCK, as always.
                conn = self._conn()
            with _CHECKPOINT_LOCK, _LOCK if _SINGLE_THREADED else nullcontext():
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
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
                    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
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
                "UPDATE deliveries SET status = 'retrying', attempts = attempts + 1,"
                " updated_at = ?, next_attempt_at = ?, lease = NULL, last_status = ?,"
                " last_response = ?, last_error = ? WHERE id = ? AND lease = ?"
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
                "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, updated_at = ?,"
                " lease = NULL, last_status = ?, last_response = ?, last_error = ?"
                " WHERE id = ? AND lease = ? AND status IN ('pending', 'retrying')",
                [(now, status, text, reason, int(c.record_id), c.lease) for c in records],
            )

    def release(self, records: Sequence[Claimed], now: float) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE deliveries SET next_attempt_at = ?, lease = NULL WHERE id = ?"
                " AND lease = ? AND status IN ('pending', 'retrying')",
                [(now, int(c.record_id), c.lease) for c in records],
            )

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with _LOCK:
                return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox read failed: {exc}") from exc

    def recent(self, limit: int = 100) -> list[DeliveryView]:
        self._move_all()
        rows = self._select(f"{_VIEW} ORDER BY d.id DESC LIMIT ?", (limit,))
        return [_view(r) for r in rows]

    def dead_letters(self, limit: int = 100) -> list[DeliveryView]:
        rows = self._select(f"{_VIEW} WHERE d.status = 'dead' ORDER BY d.id DESC LIMIT ?", (limit,))
        return [_view(r) for r in rows]

    def retry_dead(self, record_ids: Sequence[str] | None, now: float) -> int:
        sql = (
            "UPDATE deliveries SET status = 'retrying', attempts = 0, next_attempt_at = ?,"
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
        self._move_all()
        rows = self._select(
            "SELECT platform, status, count(*), min(created_at) FROM deliveries"
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
        # "status IN (...)" lets SQLite use the partial index deliveries_done.
        old = (
            "SELECT id, event_ref FROM deliveries WHERE status IN ('delivered', 'dead')"
            " AND status = ? AND updated_at < ? LIMIT ?"
        )
        cuts = (
            (DELIVERED, now - self.options.retention),
            (DEAD, now - self.options.dead_retention),
        )
        n = 0
        try:
            # One bounded transaction per batch (see _PRUNE_BATCH), and _LOCK released
            # between them (see _make_way). IMMEDIATE: a transaction that reads first
            # cannot take the write lock once another connection has committed meanwhile
            # (SQLITE_BUSY at once, without waiting).
            for status, cut in cuts:
                while True:
                    started = time.monotonic()
                    with self._tx(immediate=True) as conn:
                        found = conn.execute(old, (status, cut, _PRUNE_BATCH)).fetchall()
                        _delete_in(
                            conn, "DELETE FROM deliveries WHERE id IN ({})", [r[0] for r in found]
                        )
                        # Then the events none of whose deliveries is left.
                        _delete_in(conn, _DELETE_BARE_EVENTS, sorted({r[1] for r in found}))
                    n += len(found)
                    if len(found) < _PRUNE_BATCH:
                        break
                    self._make_way(started)
            # Expired links, the same way. No index on expires_at: walk the rowids once.
            last = 0
            while True:
                started = time.monotonic()
                with self._tx(immediate=True) as conn:
                    found = conn.execute(
                        "SELECT rowid FROM links WHERE rowid > ? AND expires_at <= ?"
                        " ORDER BY rowid LIMIT ?",
                        (last, now, _PRUNE_BATCH),
                    ).fetchall()
                    _delete_in(conn, "DELETE FROM links WHERE rowid IN ({})", [r[0] for r in found])
                n += len(found)
                if len(found) < _PRUNE_BATCH:
                    break
                last = found[-1][0]
                self._make_way(started)
        finally:
            # Pruned event ids may be queued again: forget what this process saw.
            self._recent, self._recent_old = {}, {}
        return n

    def _make_way(self, started: float) -> None:
        """Between two batches of a long write (see prune): checkpoint, then pause.

        The checkpoint (off _LOCK) keeps the WAL small, so that no commit, a track()'s
        least of all, crosses the automatic checkpoint's threshold and copies the pages
        of many batches at once. The pause lasts as long as the batch did (at most 50
        ms), so that writers waiting for it get their turn: a thread of this process
        waiting for _LOCK (a lock released and at once taken again by the same thread
        rarely goes to a waiter), or another process in SQLite's busy handler, which
        sleeps a few milliseconds between tries and would otherwise wake up to the lock
        held again.
        """
        took = time.monotonic() - started
        with suppress(OutboxError):
            self.checkpoint()
        time.sleep(min(took, 0.05))

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end, or when the
        outbox is dropped)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and os.getpid() == self._pid:
            conn.close()
            self._local.conn = None

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.path!r})"


def _close_own(opened: list[tuple[sqlite3.Connection, int]]) -> None:
    """Close the connections this process opened; a parent's, inherited by fork, stay."""
    pid = os.getpid()
    for conn, owner in opened:
        if owner == pid:
            with suppress(sqlite3.Error):
                conn.close()


def _thread_ended(
    opened: list[tuple[sqlite3.Connection, int]], entry: tuple[sqlite3.Connection, int]
) -> None:
    """A thread's connection, when the thread is gone: closed (if this process opened it)
    and dropped from the outbox's list."""
    _close_own([entry])
    with suppress(ValueError):
        opened.remove(entry)


def _delete_in(conn: sqlite3.Connection, sql: str, ids: Sequence[int]) -> None:
    """Run ``sql`` (an ``IN ({})`` statement) over ``ids``, 500 parameters at a time
    (older SQLite builds allow at most 999 in one statement)."""
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        conn.execute(sql.format(",".join("?" * len(part))), part)


def _pack(records: Sequence[NewRecord]) -> tuple[str, str]:
    """``heads`` and ``items`` of an ``events`` row (see _EVENT_INSERT)."""
    texts = [dumps(r.item) for r in records]
    heads = dumps([[r.platform, r.batch_key, len(t)] for r, t in zip(records, texts, strict=True)])
    return heads, _RS.join(texts)
