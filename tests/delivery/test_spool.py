"""The local spool of a Redis outbox: track() keeps its events on this host while Redis is
down or hung, and they reach Redis when it is back. Real redis-server processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tracking_mw._errors import ConfigurationError
from tracking_mw._runtime import Runtime
from tracking_mw.attribution import Attribution, Touch
from tracking_mw.config import Settings
from tracking_mw.delivery import spool as spool_mod
from tracking_mw.delivery._base import NewRecord, Outbox
from tracking_mw.delivery.spool import Spool

from ._helpers import JsonAdapter, free_port

KEY = "k" * 32


class _Redis:
    """A redis-server on a fixed loopback port that a test can stop and start again."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is required (make system-deps)"
        self.proc = subprocess.Popen(
            # Persisted (appendonly), as the README asks: what it held before a stop is there.
            [
                *(exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--dir", self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _until(self._answers, "redis-server to answer")

    def _answers(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def redis_box() -> Iterator[_Redis]:
    with tempfile.TemporaryDirectory() as d:
        box = _Redis(d)
        box.start()
        try:
            yield box
        finally:
            box.stop()


@pytest.fixture(autouse=True)
def quick_forwarder(monkeypatch: pytest.MonkeyPatch) -> None:
    # The forwarder's first wait is a second in production; here the test waits for it.
    monkeypatch.setattr(spool_mod, "FIRST_WAIT", 0.05)
    monkeypatch.setattr(spool_mod, "MAX_WAIT", 0.2)


def _runtime(url: str, spool_path: Path | None, **kw: Any) -> Runtime:
    # A key prefix of its own: tests share redis-servers.
    prefix = f"prefix=t{os.getpid()}x{time.monotonic_ns()}"
    settings = Settings(
        secret_key=KEY,
        outbox=url + ("&" if "?" in url else "?") + prefix,
        outbox_spool=str(spool_path) if spool_path else None,
        start_dispatcher=False,
        bigo=None,
        roibest=None,
        **kw,
    )
    return Runtime(settings, adapters={"a": JsonAdapter(name="a"), "b": JsonAdapter(name="b")})


ATT = (
    Attribution(visitor_id="v1")
    .with_touch(Touch(platform="a", click_id="CLICK-A"))
    .with_touch(Touch(platform="b", click_id="CLICK-B"))
)


def _in_outbox(rt: Runtime) -> dict[str, int]:
    return {p: int(s.get("pending", 0)) for p, s in rt.outbox.stats(time.time()).items()}


class _Counting:
    """Counts the outbox add() calls made by the test's own thread, the request path (the
    real outbox does the work; the spool's forwarder thread is not counted)."""

    def __init__(self, outbox: Outbox) -> None:
        self.adds = 0
        self.real_add = outbox.add

    def __call__(self, records: Any, now: float) -> list[bool]:
        if threading.current_thread() is threading.main_thread():
            self.adds += 1
        return self.real_add(records, now)


def test_events_tracked_while_redis_is_down_reach_it_when_it_is_back(
    redis_box: _Redis, tmp_path: Path
) -> None:
    rt = _runtime(redis_box.url, tmp_path / "spool.sqlite3")
    try:
        first = rt.tracker.track("Lead", event_id="e-before", attribution=ATT)
        assert first.ok and first.queued == ("a", "b")
        assert _in_outbox(rt) == {"a": 1, "b": 1}

        redis_box.stop()
        down = [rt.tracker.track("Lead", event_id=f"e-down-{i}", attribution=ATT) for i in range(5)]
        # Queued all the same: committed to the spool file on this host.
        assert all(r.ok and r.queued == ("a", "b") and r.error is None for r in down)
        assert rt.spool is not None and rt.spool.engaged
        assert rt.spool.pending() == 10
        assert rt.metrics.snapshot()["a"]["accepted"] == 6

        redis_box.start()
        _until(lambda: rt.spool is not None and not rt.spool.engaged, "the spool to be moved")
        assert rt.spool.pending() == 0
        assert _in_outbox(rt) == {"a": 6, "b": 6}
        claimed = rt.outbox.claim("a", 100, 60.0, time.time())
        assert sorted(c.event_id for c in claimed) == ["e-before"] + [
            f"e-down-{i}" for i in range(5)
        ]
        # track() writes to Redis again.
        after = rt.tracker.track("Lead", event_id="e-after", attribution=ATT)
        assert after.queued == ("a", "b")
        assert rt.spool.pending() == 0 and _in_outbox(rt)["b"] == 7
    finally:
        rt.close()


def test_a_hung_redis_holds_one_track_not_every_one(tmp_path: Path) -> None:
    # A server that accepts connections and never answers: the client's socket timeout.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        hung.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(hung.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
    rt = _runtime(url + "?socket_timeout=0.3&socket_connect_timeout=0.3", tmp_path / "s.db")
    counting = _Counting(rt.outbox)
    rt.outbox.add = counting  # type: ignore[method-assign]
    try:
        receipts = [rt.tracker.track("Lead", event_id=f"h-{i}", attribution=ATT) for i in range(20)]
        assert all(r.queued == ("a", "b") for r in receipts)
        # The request path tried Redis once; the other 19 went straight to the spool.
        assert counting.adds == 1
        assert rt.spool is not None and rt.spool.pending() == 40
    finally:
        stop.set()
        rt.close()
        t.join(5)
        for s in accepted:
            s.close()
        hung.close()


def test_a_new_process_forwards_what_an_earlier_one_left(redis_box: _Redis, tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    rt = _runtime(redis_box.url, path)
    prefix_url = rt.settings.outbox
    redis_box.stop()
    try:
        r = rt.tracker.track("Lead", event_id="left-behind", attribution=ATT)
        assert r.queued == ("a", "b")
    finally:
        rt.close()  # exits during the outage: the records stay in the file
    redis_box.start()
    later = Runtime(
        Settings(
            secret_key=KEY,
            outbox=prefix_url,
            outbox_spool=str(path),
            start_dispatcher=False,
            bigo=None,
            roibest=None,
        ),
        adapters={"a": JsonAdapter(name="a"), "b": JsonAdapter(name="b")},
    )
    try:
        assert later.spool is not None
        _until(lambda: later.spool is not None and later.spool.pending() == 0, "the forward")
        assert _in_outbox(later) == {"a": 1, "b": 1}
    finally:
        later.close()


def test_forwarding_twice_delivers_once(redis_box: _Redis, tmp_path: Path) -> None:
    # A crash between the outbox add and the spool's delete forwards the same records again;
    # two processes sharing the file may both forward them. The outbox's uniqueness of
    # (platform, event_id) keeps one.
    rt = _runtime(redis_box.url, None)
    try:
        one = Spool(str(tmp_path / "s.db"), rt.outbox, "box")
        two = Spool(str(tmp_path / "s.db"), rt.outbox, "box")
        record = NewRecord("a", "dup-1", "Lead", "a", time.time(), {"n": 1})
        one.put([record])
        two.put([record])
        one.close()
        two.close()
        again = Spool(str(tmp_path / "s.db"), rt.outbox, "box")
        assert again.pending() == 2
        assert again.forward() == 2
        assert again.pending() == 0
        assert _in_outbox(rt) == {"a": 1}
        again.close()
    finally:
        rt.close()


def test_a_spool_that_cannot_be_written_is_reported(redis_box: _Redis, tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    rt = _runtime(redis_box.url, directory / "s.db")
    redis_box.stop()
    try:
        assert rt.spool is not None
        rt.spool.close()
        shutil.rmtree(directory)
        r = rt.tracker.track("Lead", event_id="nowhere", attribution=ATT)
        assert not r.ok and r.queued == ()
        assert r.error == "outbox error: OutboxError"  # the outbox's failure, not the spool's
        assert r.skipped == {"a": r.error, "b": r.error}
    finally:
        rt.close()


def test_spool_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKING_SECRET_KEY", KEY)
    assert Settings.from_env().outbox_spool == "tracking_outbox_spool.sqlite3"
    for off in ("off", "false", "none", "OFF"):
        monkeypatch.setenv("TRACKING_OUTBOX_SPOOL", off)
        assert Settings.from_env().outbox_spool is None
    monkeypatch.setenv("TRACKING_OUTBOX_SPOOL", str(tmp_path / "x.db"))
    assert Settings.from_env().outbox_spool == str(tmp_path / "x.db")
    # Only a Redis outbox gets one.
    rt = Runtime(
        Settings(secret_key=KEY, outbox="memory://", outbox_spool=str(tmp_path / "m.db")),
        adapters={},
    )
    assert rt.spool is None
    rt.close()
    # A spool in a directory that does not exist fails at startup, naming the variable.
    with pytest.raises(ConfigurationError, match="TRACKING_OUTBOX_SPOOL"):
        _runtime("redis://127.0.0.1:1/0", tmp_path / "missing" / "s.db")


def test_a_row_spooled_while_another_forwarder_works_is_never_deleted(
    redis_box: _Redis, tmp_path: Path
) -> None:
    # Forwarder A reads rows 1-3 and waits on Redis; forwarder B (another process) moves
    # them and deletes them; track() spools a new event. When A deletes "its" rows, the new
    # one must survive: row ids are never reused.
    rt = _runtime(redis_box.url, None)
    path = str(tmp_path / "s.db")
    try:
        a_box = _Interleaved(rt.outbox)
        a = Spool(path, a_box, "box")  # type: ignore[arg-type]
        b = Spool(path, rt.outbox, "box")
        for i in range(3):
            a.put([NewRecord("a", f"old-{i}", "Lead", "a", time.time(), {"n": i})])
        a.close()  # no forwarder thread: this test moves the rows itself
        a = Spool(path, a_box, "box")  # type: ignore[arg-type]

        def meanwhile() -> None:
            assert b.forward() == 3
            b.put([NewRecord("a", "NEW", "Lead", "a", time.time(), {"n": 9})])

        a_box.meanwhile = meanwhile
        assert a.forward() == 4  # its three, then the new one in a second batch
        assert b.pending() == 0
        claimed = rt.outbox.claim("a", 100, 60.0, time.time())
        assert sorted(c.event_id for c in claimed) == ["NEW", "old-0", "old-1", "old-2"]
        a.close()
        b.close()
    finally:
        rt.close()


class _Interleaved:
    """An outbox whose first add() lets ``meanwhile`` run before it writes."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.meanwhile: Callable[[], None] | None = None

    def add(self, records: Any, now: float) -> list[bool]:
        step, self.meanwhile = self.meanwhile, None
        if step is not None:
            step()
        return self.outbox.add(records, now)


def test_outboxes_sharing_a_spool_file_move_only_their_own(
    redis_box: _Redis, tmp_path: Path
) -> None:
    shop = _runtime(redis_box.url, None)
    blog = _runtime(redis_box.url, None)
    path = str(tmp_path / "shared.db")
    try:
        shop_spool = Spool(path, shop.outbox, "redis://shop")
        blog_spool = Spool(path, blog.outbox, "redis://blog")
        shop_spool.put([NewRecord("a", "shop-1", "Lead", "a", time.time(), {})])
        blog_spool.put([NewRecord("a", "blog-1", "Lead", "a", time.time(), {})])
        shop_spool.close()
        blog_spool.close()
        blog_spool = Spool(path, blog.outbox, "redis://blog")
        assert blog_spool.pending() == 1 and blog_spool.forward() == 1
        assert [c.event_id for c in blog.outbox.claim("a", 10, 60.0, time.time())] == ["blog-1"]
        assert shop.outbox.claim("a", 10, 60.0, time.time()) == []
        shop_spool = Spool(path, shop.outbox, "redis://shop")
        assert shop_spool.pending() == 1
        blog_spool.close()
        shop_spool.close()
    finally:
        shop.close()
        blog.close()


def test_a_worker_forked_later_forwards_what_a_dead_worker_left(
    redis_box: _Redis, tmp_path: Path
) -> None:
    # gunicorn --preload: the master makes the runtime, workers are forked from it. A worker
    # that spooled during an outage and died leaves rows no running worker knows about.
    import signal
    import warnings

    path = tmp_path / "spool.sqlite3"
    rt = _runtime(redis_box.url, path)  # no file yet: nothing to resume in the "master"
    left = Spool(str(path), rt.outbox, rt.spool.name if rt.spool else "")
    left.put([NewRecord("a", "left-by-a-dead-worker", "Lead", "a", time.time(), {})])
    left.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: by design
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the new worker
        code = 1
        signal.alarm(30)
        try:
            rt.ensure_thread_dispatcher()  # its first request (WSGI), or startup() (ASGI)
            assert rt.spool is not None
            deadline = time.monotonic() + 20
            while rt.spool.pending() and time.monotonic() < deadline:
                time.sleep(0.02)
            code = 0 if rt.spool.pending() == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        claimed = rt.outbox.claim("a", 10, 60.0, time.time())
        assert [c.event_id for c in claimed] == ["left-by-a-dead-worker"]
    finally:
        rt.close()


def test_only_an_outage_is_spooled(redis_box: _Redis, tmp_path: Path) -> None:
    # An error that is the event's own (not the outbox's) would fail again at every forward
    # and hold every later event in the spool: it is reported on the receipt instead.
    rt = _runtime(redis_box.url, tmp_path / "s.db")

    def broken(records: Any, now: float) -> list[bool]:
        raise TypeError("not JSON")

    rt.outbox.add = broken  # type: ignore[method-assign]
    try:
        r = rt.tracker.track("Lead", event_id="own-problem", attribution=ATT)
        assert not r.ok and r.error == "outbox error: TypeError" and r.queued == ()
        assert rt.spool is not None and not rt.spool.engaged
        assert not (tmp_path / "s.db").exists()
    finally:
        rt.close()


def test_a_closed_spool_stops_and_stays_closed(redis_box: _Redis, tmp_path: Path) -> None:
    rt = _runtime(redis_box.url, None)
    try:
        s = Spool("relative-spool.sqlite3", rt.outbox, "box")
        assert os.path.isabs(s.path)  # fixed at startup: a later chdir changes nothing
        s = Spool(str(tmp_path / "s.db"), rt.outbox, "box")
        s.put([NewRecord("a", "kept", "Lead", "a", time.time(), {})])
        s.close()
        assert s.forward() == 0  # stopped: moves nothing more
        with pytest.raises(Exception, match="closed"):
            s.put([NewRecord("a", "late", "Lead", "a", time.time(), {})])
        again = Spool(str(tmp_path / "s.db"), rt.outbox, "box")
        assert again.pending() == 1
        again.close()
    finally:
        rt.close()


def test_spools_share_one_fork_hook_and_are_held_weakly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At-fork hooks cannot be removed: a process (a test suite) making many spools must not
    # pile up hooks per spool (nor per lock). Spools are resumed through a weak registry.
    import gc

    from tracking_mw.delivery.memory import MemoryOutbox

    hooks: list[Any] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **kw: hooks.append(kw))
    outbox = MemoryOutbox()
    kept = Spool(str(tmp_path / "a.db"), outbox, "a")
    closed = Spool(str(tmp_path / "b.db"), outbox, "b")
    dropped = Spool(str(tmp_path / "c.db"), outbox, "c")
    closed.close()
    del dropped
    gc.collect()
    assert hooks == []
    assert set(spool_mod._SPOOLS) == {kept}
    kept.put([NewRecord("a", "e1", "Lead", "a", time.time(), {})])
    kept.close()
    assert set(spool_mod._SPOOLS) == set()
    # In a child, the hook resumes every live spool: here, one reopened on the same file.
    again = Spool(str(tmp_path / "a.db"), outbox, "a")
    spool_mod._resume_all()
    try:
        _until(lambda: again.pending() == 0, "the resumed spool forwarded its row")
        assert [c.event_id for c in outbox.claim("a", 10, 60.0, time.time())] == ["e1"]
    finally:
        again.close()
