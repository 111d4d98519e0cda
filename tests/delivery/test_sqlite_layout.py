"""The SQLite outbox's two tables: events written by add(), deliveries made by claims."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tracking_mw.delivery import NewRecord, OutboxOptions
from tracking_mw.delivery import sqlite as sqlite_mod
from tracking_mw.delivery.sqlite import SQLiteOutbox

T0 = 1_700_000_000.0


def rec(eid: str, platform: str = "meta", key: str = "px") -> NewRecord:
    return NewRecord(platform, eid, "Purchase", key, T0, {"id": eid, "p": platform})


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "o.sqlite3")


@pytest.fixture
def box(path: str) -> Iterator[SQLiteOutbox]:
    b = SQLiteOutbox(path, OutboxOptions(retention=100.0, dead_retention=1000.0))
    yield b
    b.close()


def count(path: str, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_add_writes_one_event_row_and_no_delivery(box: SQLiteOutbox, path: str) -> None:
    assert box.add([rec("e1"), rec("e1", "kwai", "")], T0) == [True, True]
    assert count(path, "SELECT count(*) FROM events") == 1
    assert count(path, "SELECT count(*) FROM deliveries") == 0
    # Reads that count deliveries make them first: nothing is ever invisible.
    stats = box.stats(T0)
    assert stats["meta"]["pending"] == 1 and stats["kwai"]["pending"] == 1
    assert count(path, "SELECT count(*) FROM deliveries") == 2


def test_a_claim_makes_its_platforms_deliveries_leased(box: SQLiteOutbox, path: str) -> None:
    box.add([rec("e1"), rec("e1", "kwai", "")], T0)
    box.add([rec("e2", "kwai", "")], T0)
    [c] = box.claim("meta", 10, 30.0, T0)
    assert (c.event_id, c.batch_key, c.item) == ("e1", "px", {"id": "e1", "p": "meta"})
    assert (c.event_time, c.created_at, c.attempts) == (T0, T0, 0)
    # The other platform's deliveries were made too, due now, and not leased.
    claimed = box.claim("kwai", 10, 30.0, T0)
    assert [(k.event_id, k.item["p"]) for k in claimed] == [("e1", "kwai"), ("e2", "kwai")]
    assert box.claim("meta", 10, 30.0, T0 + 1) == []  # leased until T0 + 30
    assert [k.event_id for k in box.claim("meta", 10, 30.0, T0 + 31)] == ["e1"]
    # A lease made with the delivery is an ordinary one: ack works on it.
    box.ack([c], T0 + 2, 200, "ok")
    assert box.stats(T0 + 2)["meta"]["delivered"] == 1


def test_a_claim_respects_its_limit_and_leaves_the_rest_due(box: SQLiteOutbox) -> None:
    for i in range(7):
        box.add([rec(f"e{i}")], T0)
    first = box.claim("meta", 3, 30.0, T0)
    second = box.claim("meta", 3, 30.0, T0)
    third = box.claim("meta", 3, 30.0, T0)
    assert [c.event_id for c in first + second + third] == [f"e{i}" for i in range(7)]
    assert len({c.record_id for c in first + second + third}) == 7


def test_due_records_go_before_new_events(box: SQLiteOutbox) -> None:
    box.add([rec("old")], T0)
    [old] = box.claim("meta", 5, 30.0, T0)
    box.release([old], T0)
    box.add([rec("new")], T0)
    assert [c.event_id for c in box.claim("meta", 1, 30.0, T0)] == ["old"]
    assert [c.event_id for c in box.claim("meta", 1, 30.0, T0)] == ["new"]


def test_a_copy_from_another_process_is_dropped_when_moved(path: str) -> None:
    # Two outbox objects on one file are two processes' views: neither knows the other's
    # recent ids, so the second add() of the same event before any claim says "new".
    a = SQLiteOutbox(path)
    b = SQLiteOutbox(path)
    try:
        assert a.add([rec("e1")], T0) == [True]
        assert b.add([rec("e1"), rec("e1", "kwai", "")], T0) == [True, True]
        assert len(a.claim("meta", 10, 30.0, T0)) == 1  # queued once
        assert [c.event_id for c in b.claim("kwai", 10, 30.0, T0)] == ["e1"]
        # The copy's event row stays for kwai; a row left with nothing is deleted.
        assert b.add([rec("e1")], T0) == [False]  # now in deliveries: reported
        c = SQLiteOutbox(path)
        try:
            assert c.add([rec("e1", "kwai", "")], T0) == [False]
            assert c.add([rec("e1", "kwai", ""), rec("e1", "tiktok", "")], T0) == [False, True]
        finally:
            c.close()
        stats = a.stats(T0)
        assert (stats["meta"]["pending"], stats["kwai"]["pending"]) == (1, 1)
        assert stats["tiktok"]["pending"] == 1
    finally:
        a.close()
        b.close()


def test_duplicate_events_left_with_nothing_are_deleted(path: str) -> None:
    a = SQLiteOutbox(path)
    b = SQLiteOutbox(path)
    try:
        a.add([rec("e1")], T0)
        b.add([rec("e1")], T0)  # a copy: its whole row will hold nothing to send
        b.add([rec("e2")], T0)  # the newest row, kept whatever happens
        assert count(path, "SELECT count(*) FROM events") == 3
        assert len(a.claim("meta", 10, 30.0, T0)) == 2
        assert count(path, "SELECT count(*) FROM events") == 2
    finally:
        a.close()
        b.close()


def test_prune_deletes_events_with_no_delivery_left(box: SQLiteOutbox, path: str) -> None:
    box.add([rec("a"), rec("a", "kwai", "")], T0)
    box.add([rec("b")], T0)
    box.add([rec("c")], T0)
    meta = box.claim("meta", 10, 30.0, T0)
    box.ack(meta, T0, 200, "ok")
    assert box.prune(T0 + 101) == 3  # a, b and c for meta
    # "a" still has its kwai delivery, "b" has nothing left, "c" is the newest row.
    conn = sqlite3.connect(path)
    try:
        left = [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY id")]
    finally:
        conn.close()
    assert left == ["a", "c"]
    [k] = box.claim("kwai", 10, 30.0, T0 + 101)
    assert k.item == {"id": "a", "p": "kwai"}
    # New events after a prune are still moved (their ids stay above the moved mark).
    box.add([rec("d")], T0 + 102)
    assert [c.event_id for c in box.claim("meta", 10, 30.0, T0 + 102)] == ["d"]


def test_pruned_ids_may_be_queued_again(box: SQLiteOutbox) -> None:
    box.add([rec("a")], T0)
    box.add([rec("z")], T0)
    box.ack(box.claim("meta", 10, 30.0, T0), T0, 200, "ok")
    box.prune(T0 + 101)
    assert box.add([rec("a")], T0 + 102) == [True]


def test_recent_ids_are_bounded(box: SQLiteOutbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_mod, "_RECENT_IDS", 4)
    for i in range(10):
        box.add([rec(f"e{i}")], T0)
    assert len(box._recent) + len(box._recent_old) <= 8
    # Forgotten ids are still refused once moved (the unique key), and reported as such.
    box.stats(T0)
    assert box.add([rec("e0")], T0) == [False]
    assert box.stats(T0)["meta"]["pending"] == 10


def lock_is_free() -> bool:
    """True if another thread can take the process-wide SQLite lock right now."""
    got: list[bool] = []

    def take() -> None:
        got.append(sqlite_mod._LOCK.acquire(blocking=False))
        if got[0]:
            sqlite_mod._LOCK.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return got[0]


def delivered(box: SQLiteOutbox, n: int) -> None:
    box.add([rec(f"e{i}") for i in range(n)], T0)
    while claimed := box.claim("meta", 1000, 30.0, T0):
        box.ack(claimed, T0, 200, "ok")


def test_prune_deletes_in_bounded_transactions(
    box: SQLiteOutbox, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction used to delete everything, holding the process-wide lock that every
    # track() takes: 200,000 old records stalled track() for most of a second.
    monkeypatch.setattr(sqlite_mod, "_PRUNE_BATCH", 1000, raising=False)
    delivered(box, 2500)
    box.link("old", {"v": 1}, T0 - 31 * 86400)  # expired
    real = box._tx
    txs: list[tuple[bool, int]] = []  # (lock free before it, rows it changed)

    @contextmanager
    def spy(immediate: bool = False) -> Iterator[sqlite3.Connection]:
        free = lock_is_free()
        with real(immediate) as conn:
            before = conn.total_changes
            yield conn
            txs.append((free, conn.total_changes - before))

    monkeypatch.setattr(box, "_tx", spy)
    assert box.prune(T0 + 101) == 2501  # 2,500 deliveries and a link
    assert len(txs) >= 3
    # Each transaction: at most 1,000 deliveries and their 1,000 events; the lock is free
    # between two of them.
    assert all(free and changes <= 2000 for free, changes in txs)
    assert count(path, "SELECT count(*) FROM deliveries") == 0
    assert count(path, "SELECT count(*) FROM events") == 1  # the newest row stays
    assert count(path, "SELECT count(*) FROM links") == 0


def test_prune_holds_the_write_lock_from_its_first_read(box: SQLiteOutbox, path: str) -> None:
    # A deferred transaction that reads, then writes, fails at once ("database is locked")
    # if another connection committed in between: another process's track() during a
    # prune used to make the prune fail.
    delivered(box, 3)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    outcome: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("DELETE") and not outcome:
            try:
                other.execute("INSERT INTO links VALUES ('k', '{}', 0)")
                outcome.append("written")
            except sqlite3.OperationalError as exc:
                outcome.append(str(exc))

    conn = box._conn()
    conn.set_trace_callback(trace)
    try:
        assert box.prune(T0 + 101) == 3
    finally:
        conn.set_trace_callback(None)
        other.close()
    assert outcome == ["database is locked"]  # the prune held the lock: the writer waits


def test_checkpoint_runs_outside_the_process_lock(box: SQLiteOutbox, path: str) -> None:
    # The checkpoint copies pages and fsyncs: a track() of this process (the app's own
    # dispatcher) used to wait for it under the process-wide lock.
    for i in range(50):
        box.add([rec(f"w{i}")], T0)
    seen: list[object] = []
    added: list[list[bool]] = []

    def add_elsewhere() -> None:
        added.append(box.add([rec("during")], T0))

    def trace(sql: str) -> None:
        if "wal_checkpoint" in sql and not seen:
            seen.append(lock_is_free())
            if seen[0]:  # then a commit of another thread goes through meanwhile
                t = threading.Thread(target=add_elsewhere)
                t.start()
                t.join(30)
                seen.append(t.is_alive())

    conn = box._conn()
    conn.set_trace_callback(trace)
    try:
        box.checkpoint()
    finally:
        conn.set_trace_callback(None)
    assert seen == [True, False] and added == [[True]]
    assert box.stats(T0)["meta"]["pending"] == 51


def test_items_with_any_characters_survive_both_claim_paths(box: SQLiteOutbox) -> None:
    odd = {"id": "x", "v": "a\x1eb\x1dc ü 日本 \U0001f600"}
    box.add([NewRecord("meta", "x", "Purchase", "px", T0, odd), rec("x", "kwai", "")], T0)
    [c] = box.claim("meta", 10, 30.0, T0)  # made leased, cut out by length
    assert c.item == odd
    box.release([c], T0)
    [again] = box.claim("meta", 10, 30.0, T0)  # marked, then read back in one row
    assert again.item == odd and again.record_id == c.record_id


def closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _open_into(outbox: SQLiteOutbox, out: list[sqlite3.Connection]) -> None:
    out.append(outbox._conn())


def test_connections_close_with_their_thread_or_the_outbox(path: str) -> None:
    # Python 3.13 warns about a connection collected open: each one is closed explicitly.
    outbox = SQLiteOutbox(path)
    in_thread: list[sqlite3.Connection] = []
    worker = threading.Thread(target=_open_into, args=(outbox, in_thread))
    worker.start()
    worker.join()
    assert not closed(in_thread[0])  # the thread object is still referenced here
    del worker
    gc.collect()
    assert closed(in_thread[0])
    assert all(conn is not in_thread[0] for conn, _ in outbox._opened)  # forgotten too
    main = outbox._conn()
    assert not closed(main)  # this thread lives on
    del outbox
    gc.collect()
    assert closed(main)


def test_a_parents_connection_is_not_closed_in_a_child(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        sqlite_mod._close_own([(conn, os.getpid() + 1)])  # opened by another process
        assert not closed(conn)
        sqlite_mod._close_own([(conn, os.getpid())])
        assert closed(conn)
    finally:
        conn.close()
