"""One contract, three stores: memory, SQLite and a real redis-server."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracking_mw import ConfigurationError, OutboxError
from tracking_mw.delivery import NewRecord, Outbox, OutboxOptions, open_outbox
from tracking_mw.delivery.memory import MemoryOutbox
from tracking_mw.delivery.redis import RedisOutbox
from tracking_mw.delivery.sqlite import SQLiteOutbox

T0 = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite", "redis"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    opts = OutboxOptions(retention=100.0, dead_retention=1000.0, link_ttl=50.0)
    box: Outbox
    if request.param == "memory":
        box = MemoryOutbox(opts)
    elif request.param == "sqlite":
        box = SQLiteOutbox(str(tmp_path / "o.sqlite3"), opts)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = "{t" + secrets.token_hex(4) + "}"
        box = RedisOutbox.from_url(
            f"{url}?prefix={prefix}&retention=100&dead_retention=1000&link_ttl=50"
        )
    yield box
    box.close()


def rec(eid: str, platform: str = "meta", key: str = "", n: int = 0) -> NewRecord:
    return NewRecord(platform, eid, "Purchase", key, T0, {"id": eid, "n": n, "text": "é"})


def test_add_is_idempotent_per_event_and_platform(outbox: Outbox) -> None:
    assert outbox.add([rec("e1"), rec("e1", "kwai")], T0) == [True, True]
    assert outbox.add([rec("e1"), rec("e2")], T0) == [False, True]
    stats = outbox.stats(T0 + 10)
    assert stats["meta"]["pending"] == 2
    assert stats["kwai"]["pending"] == 1
    assert stats["meta"]["oldest_pending_age"] == pytest.approx(10.0)


def test_claim_leases_and_the_lease_expires(outbox: Outbox) -> None:
    outbox.add([rec(f"e{i}") for i in range(5)], T0)
    first = outbox.claim("meta", 3, 30.0, T0)
    assert [c.event_id for c in first] == ["e0", "e1", "e2"]
    assert first[0].item == {"id": "e0", "n": 0, "text": "é"}
    assert first[0].attempts == 0 and first[0].created_at == T0
    second = outbox.claim("meta", 10, 30.0, T0 + 1)
    assert [c.event_id for c in second] == ["e3", "e4"]
    assert outbox.claim("meta", 10, 30.0, T0 + 2) == []
    assert outbox.claim("kwai", 10, 30.0, T0 + 2) == []
    # A dispatcher that died: its records come back once the lease is over.
    again = outbox.claim("meta", 10, 30.0, T0 + 30.5)
    assert sorted(c.event_id for c in again) == ["e0", "e1", "e2"]
    # The old lease holder may no longer reschedule or bury them.
    outbox.bury(first, T0 + 30.6, "stale", None, None)
    assert outbox.stats(T0 + 30.6)["meta"]["dead"] == 0


def test_ack_reschedule_bury_and_views(outbox: Outbox) -> None:
    outbox.add([rec("a"), rec("b"), rec("c")], T0)
    a, b, c = outbox.claim("meta", 3, 30.0, T0)
    outbox.ack([a], T0 + 1, 200, '{"events_received":1}')
    outbox.reschedule([(b, T0 + 100)], T0 + 1, "HTTP 503", 503, "x" * 5000)
    outbox.bury([c], T0 + 2, "invalid parameter", 400, '{"error":1}')
    views = {v.event_id: v for v in outbox.recent()}
    assert [v.event_id for v in outbox.recent()] == ["c", "b", "a"]
    assert views["a"].status == "delivered" and views["a"].attempts == 1
    assert views["a"].last_status == 200 and views["a"].next_attempt_at is None
    assert views["b"].status == "retrying" and views["b"].next_attempt_at == T0 + 100
    assert views["b"].last_error == "HTTP 503" and len(views["b"].last_response or "") == 2048
    assert views["c"].status == "dead" and views["c"].last_error == "invalid parameter"
    assert views["c"].item["text"] == "é"
    assert outbox.claim("meta", 10, 30.0, T0 + 50) == []
    (b2,) = outbox.claim("meta", 10, 30.0, T0 + 100)
    assert b2.event_id == "b" and b2.attempts == 1
    stats = outbox.stats(T0 + 100)["meta"]
    assert (stats["pending"], stats["retrying"], stats["delivered"], stats["dead"]) == (1, 1, 1, 1)
    assert [v.event_id for v in outbox.dead_letters()] == ["c"]


def test_release_makes_records_due_at_once(outbox: Outbox) -> None:
    outbox.add([rec("a")], T0)
    claimed = outbox.claim("meta", 1, 60.0, T0)
    outbox.release(claimed, T0 + 1)
    (again,) = outbox.claim("meta", 1, 60.0, T0 + 1)
    assert again.event_id == "a" and again.attempts == 0


def test_retry_dead_by_id_and_all(outbox: Outbox) -> None:
    outbox.add([rec("a"), rec("b"), rec("c", "kwai")], T0)
    outbox.bury(outbox.claim("meta", 5, 30.0, T0), T0, "bad", 400, None)
    outbox.bury(outbox.claim("kwai", 5, 30.0, T0), T0, "bad", 400, None)
    dead = outbox.dead_letters()
    assert len(dead) == 3
    first = next(v for v in dead if v.event_id == "a")
    assert outbox.retry_dead([first.record_id, "nope"], T0 + 1) == 1
    assert outbox.retry_dead(None, T0 + 1) == 2
    assert outbox.dead_letters() == []
    claimed = outbox.claim("meta", 5, 30.0, T0 + 1)
    assert sorted(c.event_id for c in claimed) == ["a", "b"]
    assert all(c.attempts == 0 for c in claimed)


def test_links_expire(outbox: Outbox) -> None:
    snap = {"visitor_id": "v1", "touches": {}, "client": {}}
    outbox.link("k", snap, T0)
    assert outbox.linked("k", T0 + 1) == snap
    assert outbox.linked("other", T0 + 1) is None
    if not isinstance(outbox, RedisOutbox):  # Redis expires by its own clock (TTL)
        assert outbox.linked("k", T0 + 51) is None


def test_prune_removes_old_delivered_and_dead_only(outbox: Outbox) -> None:
    outbox.add([rec("a"), rec("b"), rec("c"), rec("d")], T0)
    a, b, c, _ = outbox.claim("meta", 4, 30.0, T0)
    outbox.ack([a], T0, 200, None)
    outbox.bury([b], T0, "bad", 400, None)
    outbox.reschedule([(c, T0 + 5)], T0, "HTTP 500", 500, None)
    assert outbox.prune(T0 + 50) == 0
    assert outbox.prune(T0 + 101) == 1  # the delivered one
    assert outbox.prune(T0 + 1001) == 1  # the dead one
    assert sorted(v.event_id for v in outbox.recent()) == ["c", "d"]
    # A pruned event id may be queued again (it is a new record).
    assert outbox.add([rec("a")], T0 + 2000) == [True]


# What bytes.decode("utf-8", "surrogateescape") makes of a latin-1 "é" (a header, a file
# name): text UTF-8 cannot encode.
LONE = b"caf\xe9".decode("utf-8", "surrogateescape")


def test_text_utf8_cannot_encode_is_stored_with_replacement_characters(outbox: Outbox) -> None:
    # It used to fail the whole add() (UnicodeEncodeError): the event was lost for every
    # platform, and track() reported the outbox itself as failing.
    odd = NewRecord("meta", "e-" + LONE, "Buy " + LONE, LONE, T0, {"product": LONE})
    assert outbox.add([odd, rec("e-" + LONE, "kwai")], T0) == [True, True]
    assert outbox.add([odd], T0) == [False]  # the same event: still one record
    (c,) = outbox.claim("meta", 10, 30.0, T0)
    assert c.item_json == '{"product":"caf\ufffd"}'
    assert c.item["product"] in ("caf\ufffd", LONE)  # the memory store keeps the object
    if not isinstance(outbox, MemoryOutbox):
        assert (c.event_id, c.event_name, c.batch_key) == (
            "e-caf\ufffd",
            "Buy caf\ufffd",
            "caf\ufffd",
        )
    assert len(outbox.recent()) == 2
    outbox.link("k", {"visitor_id": LONE}, T0)
    assert outbox.linked("k", T0 + 1) in ({"visitor_id": "caf\ufffd"}, {"visitor_id": LONE})


class Unstorable:
    """An item value no store accepts: not JSON, and not copyable."""

    def __deepcopy__(self, memo: object) -> None:
        raise TypeError("cannot copy this")


def test_an_add_that_fails_leaves_nothing_behind(outbox: Outbox) -> None:
    bad = NewRecord("meta", "e2", "Purchase", "", T0, {"x": Unstorable()})
    with pytest.raises(TypeError):
        outbox.add([rec("e1"), bad], T0)
    # Nothing of that add() was kept, not even in a cache of recent ids: e1 is new.
    assert outbox.add([rec("e1")], T0) == [True]
    assert [c.event_id for c in outbox.claim("meta", 10, 30.0, T0)] == ["e1"]


def test_outbox_options_must_be_finite_seconds(tmp_path: Path) -> None:
    for value in ("nan", "inf", "0", "-1"):
        with pytest.raises(ConfigurationError, match="retention"):
            open_outbox(f"memory://?retention={value}")
        with pytest.raises(ConfigurationError, match="link_ttl"):
            open_outbox(f"sqlite:///{tmp_path}/x.sqlite3?link_ttl={value}")
        with pytest.raises(ConfigurationError, match="dead_retention"):
            open_outbox(f"redis://127.0.0.1:1/0?dead_retention={value}")
        with pytest.raises(ConfigurationError, match="socket_timeout"):
            open_outbox(f"redis://127.0.0.1:1/0?socket_timeout={value}")
    with pytest.raises(ConfigurationError, match="link_ttl"):
        OutboxOptions(link_ttl=float("nan"))
    # A value that is not a number is shown as given.
    with pytest.raises(ConfigurationError, match=r"retention.*not 'soon'"):
        open_outbox("memory://?retention=soon")


def test_open_outbox_urls(tmp_path: Path) -> None:
    box = open_outbox(f"sqlite:///{tmp_path}/x.sqlite3?retention=10&synchronous=full")
    assert isinstance(box, SQLiteOutbox) and box.options.retention == 10
    box.close()
    assert isinstance(open_outbox("memory://"), MemoryOutbox)
    with pytest.raises(ConfigurationError):
        open_outbox("memory://?retention=-1")
    with pytest.raises(ConfigurationError):
        open_outbox("memory://?colour=red")
    with pytest.raises(ConfigurationError):
        open_outbox(f"sqlite:///{tmp_path}/missing/dir/x.sqlite3")
    with pytest.raises(ConfigurationError):
        open_outbox("sqlite:///x?synchronous=off")
    with pytest.raises(ConfigurationError):
        open_outbox("mongodb://x")


def test_sqlite_is_wal_and_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "o.sqlite3")
    box = SQLiteOutbox(path)
    box.add([rec("a")], T0)
    mode = box._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()
    again = SQLiteOutbox(path)
    assert [c.event_id for c in again.claim("meta", 5, 30.0, T0)] == ["a"]
    again.close()


def test_sqlite_child_process_after_fork_uses_its_own_connection(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    box.add([rec("parent")], T0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.alarm(30)  # never hang the test run
        try:
            box.add([rec("child")], T0)
            code = 0 if len(box.claim("meta", 5, 30.0, T0)) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection still works and sees the child's record, leased by the child.
    assert box.stats(T0)["meta"]["pending"] == 2
    assert box.claim("meta", 5, 30.0, T0) == []
    box.close()


def test_fork_waits_for_fork_safe_locks_and_forgets_dropped_ones() -> None:
    import gc
    import threading
    import warnings

    from tracking_mw import _fork

    lock = _fork.fork_safe_rlock()
    dropped = _fork.fork_safe_rlock()
    registered = len(_fork._locks)
    del dropped
    gc.collect()
    assert len(_fork._locks) == registered - 1  # an object's lock goes with it
    # Another thread holds the lock when this one forks: fork waits until it is released,
    # so the child does not inherit it held by a thread that does not exist there.
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert taken.wait(10)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: by design
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.alarm(30)
        try:
            code = 0 if lock.acquire(timeout=5) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    thread.join()
    timer.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.acquire(timeout=5)  # and the parent released it after the fork
    lock.release()


def test_a_relative_sqlite_path_is_fixed_at_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that changes directory later (or a thread started after it did) must keep
    # using the file the outbox was made with, not create another one.
    monkeypatch.chdir(tmp_path)
    box = open_outbox("sqlite:///rel.sqlite3")
    assert isinstance(box, SQLiteOutbox) and box.path == str(tmp_path / "rel.sqlite3")
    box.add([rec("before")], T0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    import threading

    later = threading.Thread(target=lambda: box.add([rec("after")], T0))
    later.start()
    later.join()
    box.close()
    reopened = SQLiteOutbox(str(tmp_path / "rel.sqlite3"))
    assert sorted(c.event_id for c in reopened.claim("meta", 10, 30.0, T0)) == ["after", "before"]
    assert not (elsewhere / "rel.sqlite3").exists()
    reopened.close()


def test_an_idle_claim_reads_instead_of_taking_the_write_lock(tmp_path: Path) -> None:
    import sqlite3

    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    assert box.claim("meta", 10, 30.0, T0) == []  # nothing: this lane is idle now
    # Another process holds SQLite's write lock. An idle claim only reads: it answers at
    # once instead of waiting for the lock (10 s, then an error).
    other = sqlite3.connect(box.path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert box.claim("meta", 10, 30.0, T0) == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    # A new event is seen by the read, and claimed.
    box.add([rec("e1")], T0)
    assert [c.event_id for c in box.claim("meta", 10, 30.0, T0)] == ["e1"]
    assert box.claim("meta", 10, 30.0, T0 + 1) == []  # leased: idle again
    # A lease that ran out is due again: the read sees it.
    assert [c.event_id for c in box.claim("meta", 10, 30.0, T0 + 31)] == ["e1"]
    box.close()


def test_sqlite_errors_become_outbox_errors(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = SQLiteOutbox(str(path))
    box._conn().execute("DROP TABLE deliveries")
    with pytest.raises(OutboxError):
        box.add([rec("a")], T0)
    with pytest.raises(OutboxError):
        box.recent()
    box.close()


def test_redis_down_is_an_outbox_error() -> None:
    from tests._servers import free_port

    box = RedisOutbox.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(OutboxError):
        box.add([rec("a")], T0)
    with pytest.raises(OutboxError):
        box.stats(T0)
    box.close()


def _redis(url: str) -> RedisOutbox:
    return RedisOutbox.from_url(f"{url}?prefix={{t{secrets.token_hex(4)}}}&retention=100")


def _count_calls(box: RedisOutbox, name: str) -> list[Any]:
    """Record what each call of one of ``box``'s scripts returns."""
    results: list[Any] = []
    script = box._scripts[name]

    def counted(**kw: Any) -> Any:
        results.append(script(**kw))
        return results[-1]

    box._scripts[name] = counted
    return results


def _delivered(box: RedisOutbox, n: int, platform: str = "meta") -> None:
    box.add([rec(f"{platform}{i}", platform) for i in range(n)], T0)
    while claimed := box.claim(platform, 1000, 30.0, T0):
        box.ack(claimed, T0, 200, None)


def test_redis_prune_removes_every_old_record_a_bounded_call_at_a_time(redis_url: str) -> None:
    # One call used to remove at most 1,000 records per platform: with the dispatcher
    # pruning once a minute, a busier outbox than ~17 deliveries/s grew without bound.
    box = _redis(redis_url)
    _delivered(box, 2500)
    _delivered(box, 700, "kwai")
    calls = _count_calls(box, "prune")
    assert box.prune(T0 + 101) == 3200
    assert all(n <= 1000 for n in calls) and len(calls) == 4  # 1,000 x 3, then 200
    stats = box.stats(T0 + 101)
    assert stats["meta"]["delivered"] == 0 and stats["kwai"]["delivered"] == 0
    # Their dedupe keys went too: the same event ids may be queued again.
    assert box.add([rec("meta1"), rec("kwai1", "kwai")], T0 + 102) == [True, True]
    box.close()


def test_redis_retry_all_dead_letters_a_bounded_call_at_a_time(redis_url: str) -> None:
    # One script used to retry every dead letter: with 200,000 of them it held Redis
    # for seconds, and every track() meanwhile failed.
    box = _redis(redis_url)
    box.add([rec(f"e{i}") for i in range(2500)], T0)
    while claimed := box.claim("meta", 1000, 30.0, T0):
        box.bury(claimed, T0, "bad", 400, None)
    calls = _count_calls(box, "retry_dead")
    assert box.retry_dead(None, T0 + 1) == 2500
    assert len(calls) == 3
    assert [read for _, read in calls] == [1000, 1000, 500]
    assert box.stats(T0 + 1)["meta"]["dead"] == 0
    assert len(box.claim("meta", 5000, 30.0, T0 + 1)) == 2500
    box.close()


def test_redis_retry_dead_by_id_in_bounded_calls(redis_url: str) -> None:
    box = _redis(redis_url)
    box.add([rec(f"e{i}") for i in range(1500)], T0)
    claimed = box.claim("meta", 1500, 30.0, T0)
    box.bury(claimed, T0, "bad", 400, None)
    calls = _count_calls(box, "retry_dead")
    assert box.retry_dead([c.record_id for c in claimed], T0 + 1) == 1500
    assert len(calls) == 2
    assert box.stats(T0 + 1)["meta"]["dead"] == 0
    box.close()


def test_redis_retry_all_ends_on_a_dead_letter_whose_record_is_gone(redis_url: str) -> None:
    box = _redis(redis_url)
    box.add([rec("a")], T0)
    box.bury(box.claim("meta", 1, 30.0, T0), T0, "bad", 400, None)
    box.client.zadd(f"{box.prefix}:dead:meta", {"999999": T0})  # no such record
    assert box.retry_dead(None, T0 + 1) == 1
    assert box.client.zcard(f"{box.prefix}:dead:meta") == 0
    box.close()
