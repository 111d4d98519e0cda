"""Runtime: registry, asyncio and thread dispatchers over real HTTP, fork, counters."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._servers import serve_in_thread
from tests.delivery._helpers import JsonAdapter, full_attribution
from tracking_mw import Attribution, DeliveryConfig, KwaiConfig, Settings
from tracking_mw._context import RequestState, _state
from tracking_mw._runtime import Runtime
from tracking_mw.delivery.memory import MemoryOutbox
from tracking_mw.testing import FakePlatforms

KEY = "k" * 32
FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.05, poll_interval=0.02, shutdown_grace=2.0)
ALL = ("meta", "kwai", "bigo", "rokt", "roibest", "tiktok")


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakePlatforms, str]]:
    f = FakePlatforms()
    with serve_in_thread(f.app) as base:
        yield f, base


@pytest.fixture
def platforms(fake: tuple[FakePlatforms, str]) -> Iterator[tuple[FakePlatforms, str]]:
    fake[0].reset()
    yield fake
    fake[0].reset()


def real_settings(base: str, fake: FakePlatforms, tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("delivery", FAST)
    kw.setdefault("outbox", f"sqlite:///{tmp_path}/outbox.sqlite3")
    return Settings(secret_key=KEY, **{**fake.settings_overrides(base), **kw})


def purchase(n: int) -> dict[str, Any]:
    return {
        "value": "19.90",
        "currency": "BRL",
        "user": {"email": f"buyer{n}@example.com", "phone": "+55 11 91234-5678"},
        "attribution": full_attribution(n),
        "event_id": f"order-{n}",
    }


def test_for_settings_caches_per_settings_object(tmp_path: Path) -> None:
    s1 = Settings(secret_key=KEY, outbox="memory://")
    s2 = Settings(secret_key=KEY, outbox="memory://")
    r1 = Runtime.for_settings(s1)
    try:
        assert Runtime.for_settings(s1) is r1 and Runtime.default() is r1
        r2 = Runtime.for_settings(s2)
        assert r2 is not r1 and Runtime.default() is r2
        assert set(r1.adapters) == {"bigo", "roibest"}
        r2.close()
    finally:
        r1.close()
    assert Runtime.default() is None


def test_for_settings_racing_threads_get_one_runtime(tmp_path: Path) -> None:
    # The runtime is built outside the registry's lock (opening a SQLite outbox takes the
    # store's lock, which fork() takes in the other order): racing threads still share one.
    import threading

    settings = Settings(secret_key=KEY, outbox=f"sqlite:///{tmp_path}/o.sqlite3")
    barrier = threading.Barrier(8)
    got: list[Runtime] = []

    def first_request() -> None:
        barrier.wait()
        got.append(Runtime.for_settings(settings))

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(got) == 8 and all(rt is got[0] for rt in got)
        assert Runtime.for_settings(settings) is got[0]
    finally:
        got[0].close()


def test_asgi_style_startup_delivers_to_every_platform(
    platforms: tuple[FakePlatforms, str], tmp_path: Path
) -> None:
    fake, base = platforms
    rt = Runtime(real_settings(base, fake, tmp_path))

    async def main() -> None:
        await rt.startup()
        await rt.startup()  # idempotent
        assert rt.started
        for n in range(3):
            r = rt.tracker.track("Purchase", **purchase(n))
            assert set(r.queued) == set(ALL), r.skipped
        for platform in ALL:
            await fake.await_events(platform, 3)
        await rt.shutdown()
        assert not rt.started

    asyncio.run(main())
    counters = rt.counters()
    for platform in ALL:
        assert counters[platform]["accepted"] == 3
        assert counters[platform]["delivered"] == 3
        assert counters[platform]["pending"] == 0
    meta = fake.events("meta")
    assert sorted(e["event_id"] for e in meta) == ["order-0", "order-1", "order-2"]
    # Meta batches: fewer requests than events is possible, never more.
    assert len(fake.received("meta")) <= 3
    views = rt.outbox.recent()
    assert {v.status for v in views} == {"delivered"} and len(views) == 18
    rt.close()


def test_dispatcher_task_does_not_see_request_state(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Spy(JsonAdapter):
        def build(self, items: Any) -> Any:
            from tracking_mw._context import current_state

            seen.append(current_state())
            return super().build(items)

    rt = Runtime(
        Settings(secret_key=KEY, outbox="memory://", delivery=FAST),
        adapters={"test": Spy()},
        outbox=MemoryOutbox(),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )

    async def main() -> None:
        token = _state.set(RequestState(Attribution(), rt, True))
        try:
            await rt.startup()  # lazily, inside a "request"
            rt.tracker.track("Lead")
        finally:
            _state.reset(token)
        while not seen:
            await asyncio.sleep(0.01)
        await rt.shutdown()

    asyncio.run(main())
    assert seen == [None]
    rt.close()


def test_start_dispatcher_false_only_marks_started() -> None:
    rt = Runtime(
        Settings(secret_key=KEY, outbox="memory://", start_dispatcher=False),
        adapters={"test": JsonAdapter()},
        outbox=MemoryOutbox(),
    )

    async def main() -> None:
        await rt.startup()
        assert rt.started and rt._task is None
        await rt.shutdown()

    asyncio.run(main())
    rt.ensure_thread_dispatcher()
    assert rt._thread is None
    rt.close()


def test_thread_dispatcher_delivers_and_survives_fork(
    platforms: tuple[FakePlatforms, str], tmp_path: Path
) -> None:
    fake, base = platforms
    rt = Runtime(real_settings(base, fake, tmp_path, bigo=None, roibest=None, tiktok=None))
    rt.ensure_thread_dispatcher()
    first = rt._thread
    rt.ensure_thread_dispatcher()
    assert rt._thread is first and first is not None and first.alive
    rt.tracker.track("Purchase", **purchase(1))
    fake.wait_for_events("kwai", 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, like a gunicorn worker after --preload
        code = 1
        signal.alarm(30)  # never hang the test run
        try:
            assert rt._thread is not None and not rt._thread.alive
            rt.ensure_thread_dispatcher()
            rt.tracker.track("Purchase", **purchase(2))
            fake_kwai = f"{base}/_fake/events?platform=kwai"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if len(httpx.get(fake_kwai).json()) >= 2:
                    code = 0
                    break
                time.sleep(0.05)
            rt.stop_thread_dispatcher()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rt.stop_thread_dispatcher()
    assert sorted(e["clickid"] for e in fake.events("kwai")) == ["kwai-click-1", "kwai-click-2"]
    rt.close()


def test_requests_racing_in_a_forked_child_start_one_dispatcher_thread(tmp_path: Path) -> None:
    # gunicorn --preload with threaded workers: the first requests of a fresh child race to
    # start the dispatcher thread. One must win; two would double the rate limits.
    import sys
    import threading

    settings = Settings(
        secret_key=KEY,
        outbox=f"sqlite:///{tmp_path}/o.sqlite3",
        kwai=KwaiConfig(access_tokens={"*": "t"}, base_url="http://127.0.0.1:9"),
    )
    rt = Runtime(settings)
    rt.ensure_thread_dispatcher()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows
    started: list[int] = []
    try:
        for _ in range(60):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                signal.alarm(30)
                n = 99
                try:
                    barrier = threading.Barrier(8)

                    def first_request(barrier: threading.Barrier) -> None:
                        barrier.wait()
                        rt.ensure_thread_dispatcher()

                    threads = [
                        threading.Thread(target=first_request, args=(barrier,)) for _ in range(8)
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    n = sum(
                        1
                        for t in threading.enumerate()
                        if t.name == "tracking_mw-dispatcher" and t.is_alive()
                    )
                finally:
                    os._exit(n)
            _, status = os.waitpid(pid, 0)
            started.append(os.waitstatus_to_exitcode(status))
    finally:
        sys.setswitchinterval(interval)
        rt.stop_thread_dispatcher()
        rt.close()
    assert started == [1] * 60


def test_counters_and_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    rt = Runtime(
        Settings(secret_key=KEY, outbox="memory://"),
        adapters={"test": JsonAdapter()},
        outbox=MemoryOutbox(),
    )
    rt.tracker.track("Lead")
    rt.tracker.track("Lead")
    c = rt.counters()["test"]
    assert c["accepted"] == 2 and c["pending"] == 2 and c["oldest_pending_age"] >= 0
    registry = CollectorRegistry()
    from tracking_mw.delivery.metrics import register_prometheus

    assert register_prometheus(rt, registry)
    text = generate_latest(registry).decode()
    assert 'tracking_mw_events_accepted_total{platform="test"} 2.0' in text
    assert 'tracking_mw_events_pending{platform="test"} 2.0' in text
    # The default registry reports every live runtime.
    from prometheus_client import REGISTRY

    assert (REGISTRY.get_sample_value("tracking_mw_events_pending", {"platform": "test"}) or 0) >= 2
    rt.close()


def test_two_runtimes_over_one_outbox_report_its_backlog_once(tmp_path: Path) -> None:
    # configure() in a process that also has a middleware: two runtimes, one outbox file.
    from tracking_mw.delivery.metrics import _collect

    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    one = Runtime(Settings(secret_key=KEY, outbox=url), adapters={"test": JsonAdapter()})
    two = Runtime(Settings(secret_key=KEY, outbox=url), adapters={"test": JsonAdapter()})
    other = Runtime(
        Settings(secret_key=KEY, outbox="memory://"),
        adapters={"test": JsonAdapter()},
        outbox=MemoryOutbox(),
    )
    try:
        one.tracker.track("Lead")
        two.tracker.track("Lead")
        other.tracker.track("Lead")
        got = _collect([one, two, other])["test"]
        # Three events accepted by three runtimes; two in the shared file, one in memory.
        assert got["accepted"] == 3
        assert got["pending"] == 3
        assert _collect([one, two])["test"]["pending"] == 2
    finally:
        for rt in (one, two, other):
            rt.close()


def test_task_context_is_fresh() -> None:
    # Guard for the reason startup() passes a new Context: create_task copies the caller's.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="none")

    async def read() -> str:
        return var.get()

    async def main() -> tuple[str, str]:
        var.set("request")
        copied = await asyncio.get_running_loop().create_task(read())
        fresh = await asyncio.get_running_loop().create_task(read(), context=contextvars.Context())
        return copied, fresh

    assert asyncio.run(main()) == ("request", "none")


def test_a_worker_forked_without_python_fork_hooks_catches_up(tmp_path: Path) -> None:
    """uWSGI forks its workers with the C library's fork() and, by default, skips Python's
    fork hooks. The first WSGI request of such a worker (ensure_thread_dispatcher) redoes
    them: it opens its own SQLite connection and draws visitor ids of its own."""
    import ctypes

    from tracking_mw.attribution import new_visitor_id
    from tracking_mw.delivery import sqlite as sqlite_mod

    settings = real_settings("http://127.0.0.1:9", FakePlatforms(), tmp_path)
    rt = Runtime(settings.replace(start_dispatcher=False))
    rt.tracker.track("Lead", attribution=full_attribution(1), event_id="in-master")
    master_conn = rt.outbox._conn()  # type: ignore[attr-defined]
    new_visitor_id()  # the master's pool of ids is filled
    read_end, write_end = os.pipe()
    # PyDLL: the call keeps the GIL, as a server's C code forking the interpreter does. The
    # SQLite lock is held over the fork, as a master without other threads has it free.
    with sqlite_mod._LOCK:
        pid = ctypes.PyDLL(None).fork()
    if pid == 0:  # pragma: no cover - the worker, forked without Python's hooks
        code = 1
        signal.alarm(30)
        try:
            rt.ensure_thread_dispatcher()  # its first request
            own = rt.outbox._conn() is not master_conn  # type: ignore[attr-defined]
            receipt = rt.tracker.track(
                "Lead", attribution=full_attribution(2), event_id="in-worker"
            )
            os.write(write_end, new_visitor_id().encode())
            code = 0 if own and receipt.error is None and receipt.queued else 2
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as r:
        worker_id = r.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert worker_id and worker_id != new_visitor_id()  # not the master's next id
    pending = rt.outbox.claim("kwai", 10, 60.0, time.time())
    assert sorted(c.event_id for c in pending) == ["in-master", "in-worker"]
    rt.close()
