"""Delivery with real processes, real HTTP and real crashes (kill -9).

The fake platforms run in this process on loopback; apps and dispatchers run as children.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._servers import Child, free_port, serve_in_thread, uvicorn_argv, wait_http
from tracking_mw import DeliveryConfig, Settings
from tracking_mw._runtime import Runtime
from tracking_mw.testing import (
    DEMO_KWAI_TOKEN,
    DEMO_META_PIXEL_ID,
    DEMO_META_TOKEN,
    DEMO_ROKT_KEY,
    DEMO_ROKT_SECRET,
    FakePlatforms,
)

from ._helpers import full_attribution, wait_until

ROOT = str(Path(__file__).resolve().parents[2])
DISPATCHER = ["-m", "tests.delivery.dispatcher_main"]


def platform_env(
    base: str, outbox: str, *, kwai: bool = True, rokt: bool = False
) -> dict[str, str]:
    env = {
        "TRACKING_SECRET_KEY": "s" * 32,
        "TRACKING_OUTBOX": outbox,
        "TRACKING_META_PIXEL_ID": DEMO_META_PIXEL_ID,
        "TRACKING_META_ACCESS_TOKEN": DEMO_META_TOKEN,
        "TRACKING_META_BASE_URL": f"{base}/meta",
        "TRACKING_BIGO_ENABLED": "false",
        "TRACKING_ROIBEST_ENABLED": "false",
    }
    if kwai:
        env["TRACKING_KWAI_ACCESS_TOKENS"] = DEMO_KWAI_TOKEN
        env["TRACKING_KWAI_BASE_URL"] = f"{base}/kwai"
    if rokt:
        env["TRACKING_ROKT_API_KEY"] = DEMO_ROKT_KEY
        env["TRACKING_ROKT_API_SECRET"] = DEMO_ROKT_SECRET
        env["TRACKING_ROKT_BASE_URL"] = f"{base}/rokt"
    return env


def dispatcher_argv() -> list[str]:
    import sys

    return [sys.executable, *DISPATCHER]


def seed(env: dict[str, str], n: int, start: int = 0) -> set[str]:
    """Track ``n`` purchases into the outbox described by ``env`` (no dispatcher here)."""
    rt = Runtime(Settings.from_env(environ=env, start_dispatcher=False))
    ids = set()
    try:
        for i in range(start, start + n):
            r = rt.tracker.track(
                "Purchase",
                value="10.00",
                currency="BRL",
                user={"email": f"buyer{i}@example.com"},
                attribution=full_attribution(i),
                event_id=f"order-{i}",
            )
            assert r.queued and r.ok, r
            ids.add(r.event_id)
    finally:
        rt.close()
    return ids


def meta_ids(fake: FakePlatforms) -> list[str]:
    return [e["event_id"] for e in fake.events("meta")]


def test_app_killed_right_after_track_loses_nothing(tmp_path: Path) -> None:
    platform_port = free_port()
    base = f"http://127.0.0.1:{platform_port}"  # nothing listens yet: the platform is down
    env = platform_env(base, f"sqlite:///{tmp_path}/outbox.sqlite3")
    app_port = free_port()
    argv = uvicorn_argv("tests.delivery.app_track:app", app_port)
    app = Child(argv, env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{app_port}/health", proc=app.proc)
        for n in range(25):
            answer = httpx.post(f"http://127.0.0.1:{app_port}/buy?n={n}", timeout=10).json()
            assert answer == {"queued": ["meta", "kwai"], "error": None}
    finally:
        app.kill9()  # no shutdown, no flush: a crash
        app.stop()
    fake = FakePlatforms()
    with serve_in_thread(fake.app, port=platform_port):
        app = Child(argv, env=env, cwd=ROOT)
        try:
            wait_until(
                lambda: len(set(meta_ids(fake))) == 25 and len(fake.events("kwai")) >= 25,
                timeout=30,
            )
        finally:
            app.stop()
    assert set(meta_ids(fake)) == {f"order-{n}" for n in range(25)}
    assert {e["clickid"] for e in fake.events("kwai")} == {f"kwai-click-{n}" for n in range(25)}


def test_dispatcher_killed_mid_batch_delivers_everything_once_or_identically(
    tmp_path: Path,
) -> None:
    fake = FakePlatforms()
    db = tmp_path / "outbox.sqlite3"
    with serve_in_thread(fake.app) as base:
        env = {**platform_env(base, f"sqlite:///{db}", kwai=False), "TEST_LEASE_SECONDS": "2"}
        expected = seed(env, 1500)
        # Every request of the first dispatcher hangs at the platform for a while.
        fake.inject("meta", status=None, delay=1.5, count=2)
        first = Child(dispatcher_argv(), env=env, cwd=ROOT)
        try:

            def leased() -> bool:
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    return bool(
                        conn.execute(
                            "SELECT count(*) FROM deliveries WHERE lease IS NOT NULL"
                        ).fetchone()[0]
                    )

            wait_until(leased, timeout=20)
            time.sleep(0.3)  # the batch is on the wire now
        finally:
            first.kill9()
            first.stop()
        second = Child(dispatcher_argv(), env=env, cwd=ROOT)
        try:

            def settled() -> bool:
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    # Every event turned into deliveries, and all of them delivered.
                    return not conn.execute(
                        "SELECT (SELECT count(*) FROM deliveries WHERE status != 'delivered')"
                        " + (SELECT count(*) FROM events WHERE id > (SELECT upto FROM moved))"
                    ).fetchone()[0]

            wait_until(settled, timeout=30)
        finally:
            assert second.stop() == 0
    ids = meta_ids(fake)
    assert set(ids) == expected
    # At-least-once: a batch sent before the crash may arrive twice, always identical.
    by_id: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in fake.events("meta"):
        by_id[e["event_id"]].append(e)
    for copies in by_id.values():
        assert all(c == copies[0] for c in copies)
    box = Runtime(Settings.from_env(environ=env, start_dispatcher=False))
    stats = box.outbox.stats(time.time())["meta"]
    box.close()
    assert stats["pending"] == 0 and stats["delivered"] == 1500


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[tuple[FakePlatforms, str]]:
    fake = FakePlatforms()
    with serve_in_thread(fake.app) as base:
        yield fake, base


@pytest.fixture
def thread_runtime(
    shared_fake: tuple[FakePlatforms, str], tmp_path: Path
) -> Iterator[tuple[Runtime, FakePlatforms]]:
    fake, base = shared_fake
    fake.reset()
    env = platform_env(base, f"sqlite:///{tmp_path}/outbox.sqlite3", rokt=True)
    delivery = DeliveryConfig(
        backoff_base=0.05, backoff_cap=2.0, poll_interval=0.02, shutdown_grace=1.0
    )
    rt = Runtime(Settings.from_env(environ=env, delivery=delivery))
    rt.ensure_thread_dispatcher()
    yield rt, fake
    rt.close()
    fake.reset()


def kwai_view(rt: Runtime, event_id: str) -> Any:
    return next(v for v in rt.outbox.recent() if v.platform == "kwai" and v.event_id == event_id)


def test_platform_503_for_a_while_then_200(thread_runtime: tuple[Runtime, FakePlatforms]) -> None:
    rt, fake = thread_runtime
    fake.inject("kwai", status=503, count=4)
    rt.tracker.track(
        "Purchase", value=1, currency="BRL", attribution=full_attribution(1), event_id="e503"
    )
    wait_until(lambda: kwai_view(rt, "e503").status == "delivered")
    view = kwai_view(rt, "e503")
    assert view.attempts == 5 and view.last_status == 200
    statuses = [r.status for r in fake.received("kwai")]
    assert statuses == [503, 503, 503, 503, 200]


def test_429_retry_after_is_waited(thread_runtime: tuple[Runtime, FakePlatforms]) -> None:
    rt, fake = thread_runtime
    fake.inject("kwai", status=429, retry_after=1, count=1)
    rt.tracker.track(
        "Purchase", value=1, currency="BRL", attribution=full_attribution(2), event_id="e429"
    )
    wait_until(lambda: kwai_view(rt, "e429").status == "delivered")
    first, second = fake.received("kwai")
    assert (first.status, second.status) == (429, 200)
    # The second attempt came at least Retry-After seconds after the 429 was answered.
    assert second.at - first.at >= 1.0


def test_permanent_4xx_is_a_dead_letter_without_retry(
    thread_runtime: tuple[Runtime, FakePlatforms],
) -> None:
    rt, fake = thread_runtime
    fake.inject("kwai", status=200, body={"result": 10006, "error_msg": "token invalid"}, count=1)
    fake.inject("rokt", status=401, body={"errors": [{"message": "bad credentials"}]}, count=1)
    rt.tracker.track(
        "Purchase",
        value=1,
        currency="BRL",
        user={"email": "x@example.com"},
        attribution=full_attribution(3),
        event_id="edead",
    )
    wait_until(lambda: len(rt.outbox.dead_letters()) == 2)
    time.sleep(0.3)  # room for a wrong retry to show up
    dead = {v.platform: v for v in rt.outbox.dead_letters()}
    assert "10006" in (dead["kwai"].last_error or "")
    assert dead["rokt"].last_status == 401 and dead["rokt"].attempts == 1
    assert len(fake.received("kwai")) == 1 and len(fake.received("rokt")) == 1
    assert rt.counters()["kwai"]["dead"] == 1


def test_redis_outbox_two_dispatchers_deliver_exactly_once(redis_url: str, tmp_path: Path) -> None:
    fake = FakePlatforms()
    outbox = f"{redis_url}?prefix=" + "{two}"
    with serve_in_thread(fake.app) as base:
        env = platform_env(base, outbox)
        children = []
        for i in range(2):
            ready = tmp_path / f"ready{i}"
            child_env = {**env, "TEST_READY": str(ready), "TEST_RESULT": str(tmp_path / f"r{i}")}
            children.append(Child(dispatcher_argv(), env=child_env, cwd=ROOT))
        try:
            wait_until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)))
            # Slow the platform a little so both dispatchers take part.
            fake.inject("kwai", status=None, delay=0.02, count=150)
            expected = seed(env, 150)
            wait_until(
                lambda: len(fake.events("kwai")) >= 150 and len(fake.events("meta")) >= 150,
                timeout=30,
            )
        finally:
            codes = [c.stop() for c in children]
    assert codes == [0, 0]
    kwai = [e["clickid"] for e in fake.events("kwai")]
    assert sorted(kwai) == sorted(f"kwai-click-{n}" for n in range(150))  # no duplicates
    assert sorted(meta_ids(fake)) == sorted(expected)
    results = [json.loads((tmp_path / f"r{i}").read_text()) for i in range(2)]
    assert sum(r["kwai"]["delivered"] for r in results) == 150
    assert all(r["kwai"]["delivered"] > 0 for r in results)


def test_chaos_accepted_equals_delivered_dead_pending(tmp_path: Path) -> None:
    fake = FakePlatforms()
    with serve_in_thread(fake.app) as base:
        env = platform_env(base, f"sqlite:///{tmp_path}/outbox.sqlite3", rokt=True)
        delivery = DeliveryConfig(
            backoff_base=0.02,
            backoff_cap=0.2,
            poll_interval=0.02,
            timeout=0.5,
            max_attempts=4,
            shutdown_grace=1.0,
        )
        rt = Runtime(Settings.from_env(environ=env, delivery=delivery))
        fake.inject("meta", status=503, count=2)
        fake.inject("meta", status=400, body={"error": {"message": "bad", "code": 100}}, count=1)
        fake.inject("kwai", status=429, retry_after=0.1, count=5)
        fake.inject("kwai", status=None, delay=1.0, count=3)  # timeouts: network errors
        fake.inject("kwai", status=200, body={"result": 10005, "error_msg": "clickid"}, count=4)
        fake.inject("kwai", status=500, count=40)  # some records run out of attempts
        fake.inject("rokt", status=502, count=3)
        rt.ensure_thread_dispatcher()
        for i in range(120):
            rt.tracker.track(
                "Purchase",
                value="5",
                currency="BRL",
                user={"email": f"c{i}@example.com"},
                attribution=full_attribution(i),
                event_id=f"chaos-{i}",
            )
        wait_until(lambda: len(fake.received()) > 60)
        rt.stop_thread_dispatcher()  # mid-run: some records are still pending
        mid = rt.counters()
        rt.ensure_thread_dispatcher()
        wait_until(lambda: all(c["pending"] == 0 for c in rt.counters().values()), timeout=30)
        rt.stop_thread_dispatcher()
        end = rt.counters()
        rt.close()
    for counters in (mid, end):
        for platform, c in counters.items():
            assert c["accepted"] == c["delivered"] + c["dead"] + c["pending"], (platform, c)
    assert end["kwai"]["dead"] >= 4 and end["meta"]["delivered"] >= 119
    assert sum(c["accepted"] for c in end.values()) == 360
