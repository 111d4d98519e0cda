"""The dispatcher against httpx.MockTransport: batching, retries, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tracking_mw.config import DeliveryConfig
from tracking_mw.delivery import Dispatcher, Metrics, NewRecord
from tracking_mw.delivery.memory import MemoryOutbox
from tracking_mw.platforms._base import Adapter

from ._helpers import JsonAdapter, Recorder

FAST = DeliveryConfig(
    backoff_base=0.01,
    backoff_cap=0.05,
    poll_interval=0.01,
    lease_seconds=30.0,
    shutdown_grace=2.0,
    max_attempts=5,
)


def fill(box: MemoryOutbox, n: int, platform: str = "test", **item: Any) -> list[str]:
    ids = [f"{platform}-{i}" for i in range(n)]
    now = time.time()
    box.add(
        [
            NewRecord(platform, eid, "Purchase", str(item.get("key", "")), now, {"id": eid, **item})
            for eid in ids
        ],
        now,
    )
    return ids


def settled(box: MemoryOutbox) -> Callable[[], bool]:
    return lambda: all(s["pending"] == 0 for s in box.stats(time.time()).values())


async def run_until(d: Dispatcher, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    task = asyncio.create_task(d.run())
    deadline = time.monotonic() + timeout
    try:
        while not cond():
            assert time.monotonic() < deadline, "dispatcher did not settle in time"
            assert not task.done(), "dispatcher stopped early"
            await asyncio.sleep(0.01)
    finally:
        d.request_stop()
        await asyncio.wait_for(task, 10)


def make(
    box: MemoryOutbox,
    handler: Callable[[httpx.Request], httpx.Response],
    *adapters: Adapter,
    config: DeliveryConfig = FAST,
) -> Dispatcher:
    return Dispatcher(
        box,
        {a.name: a for a in adapters or (JsonAdapter(),)},
        config,
        Metrics(),
        transport=httpx.MockTransport(handler),
    )


def test_delivers_one_per_request_and_acks() -> None:
    box = MemoryOutbox()
    ids = fill(box, 5)
    rec = Recorder()
    d = make(box, rec)
    asyncio.run(run_until(d, settled(box)))
    assert sorted(rec.ids()) == sorted(ids)
    assert all(len(evs) == 1 for _, _, evs in rec.requests)
    assert {v.status for v in box.recent()} == {"delivered"}
    assert d.metrics.snapshot()["test"]["delivered"] == 5


def test_batches_by_key_up_to_max_batch() -> None:
    box = MemoryOutbox()
    fill(box, 7, key="p1")
    now = time.time()
    box.add([NewRecord("test", f"x{i}", "Lead", "p2", now, {"id": f"x{i}"}) for i in range(3)], now)
    rec = Recorder()
    d = make(
        box,
        rec,
        JsonAdapter(max_batch=4),
        config=FAST.__class__(**{**FAST.__dict__, "concurrency": {"test": 1}}),
    )
    asyncio.run(run_until(d, settled(box)))
    sizes = [len(evs) for _, _, evs in rec.requests]
    assert sum(sizes) == 10 and max(sizes) == 4 and sizes[0] == 4
    for _, _, evs in rec.requests:
        assert len({e["id"][0] for e in evs}) == 1  # never mixes batch keys


def test_503_then_200_is_retried_until_delivered() -> None:
    box = MemoryOutbox()
    fill(box, 1)
    calls = {"n": 0}

    def answer(req: httpx.Request, evs: list[dict[str, Any]]) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503 if calls["n"] <= 3 else 200)

    d = make(box, Recorder(answer))
    asyncio.run(run_until(d, settled(box)))
    (view,) = box.recent()
    assert view.status == "delivered" and view.attempts == 4
    assert d.metrics.snapshot()["test"]["retried"] == 3


def test_retry_after_is_a_minimum_clamped_to_the_cap() -> None:
    box = MemoryOutbox()
    fill(box, 1)
    rec = Recorder(
        lambda req, evs: (
            httpx.Response(429, headers={"Retry-After": "0.3"})
            if len(rec.requests) == 1
            else httpx.Response(200)
        )
    )
    cfg = DeliveryConfig(backoff_base=0.01, backoff_cap=1.0, poll_interval=0.01)
    d = make(box, rec, config=cfg)
    asyncio.run(run_until(d, settled(box)))
    assert len(rec.requests) == 2
    assert rec.requests[1][0] - rec.requests[0][0] >= 0.3
    # A Retry-After longer than the cap waits the cap only.
    box2 = MemoryOutbox()
    fill(box2, 1)
    d2 = make(box2, lambda r: httpx.Response(429, headers={"Retry-After": "3600"}), config=cfg)

    async def once() -> None:
        task = asyncio.create_task(d2.run())
        while not box2.recent()[0].attempts:
            await asyncio.sleep(0.01)
        d2.request_stop()
        await task

    before = time.time()
    asyncio.run(once())
    view = box2.recent()[0]
    assert view.status == "retrying" and view.last_status == 429
    assert view.next_attempt_at is not None
    assert before + 1.0 <= view.next_attempt_at <= time.time() + 1.0


def test_permanent_answer_is_a_dead_letter_without_retry() -> None:
    box = MemoryOutbox()
    fill(box, 1)
    rec = Recorder(lambda req, evs: httpx.Response(400, text="invalid pixel"))
    d = make(box, rec)
    asyncio.run(run_until(d, settled(box)))
    assert len(rec.requests) == 1
    (view,) = box.dead_letters()
    assert view.last_error == "HTTP 400: invalid pixel" and view.last_status == 400
    assert view.last_response == "invalid pixel"
    assert d.metrics.snapshot()["test"]["dead"] == 1


def test_rejected_batch_is_split_until_the_bad_event_is_alone() -> None:
    box = MemoryOutbox()
    now = time.time()
    box.add(
        [
            NewRecord("test", f"e{i}", "Lead", "", now, {"id": f"e{i}", "bad": i == 5})
            for i in range(8)
        ],
        now,
    )

    def answer(req: httpx.Request, evs: list[dict[str, Any]]) -> httpx.Response:
        if any(e["bad"] for e in evs):
            return httpx.Response(400, text="bad event in batch")
        return httpx.Response(200)

    rec = Recorder(answer)
    cfg = DeliveryConfig(**{**FAST.__dict__, "concurrency": {"test": 1}})
    d = make(box, rec, JsonAdapter(max_batch=8), config=cfg)
    asyncio.run(run_until(d, settled(box)))
    (dead,) = box.dead_letters()
    assert dead.event_id == "e5"
    delivered = sorted(v.event_id for v in box.recent() if v.status == "delivered")
    assert delivered == [f"e{i}" for i in range(8) if i != 5]
    # 8 -> 4+4 -> (4 ok) 2+2 -> (2 ok) 1+1: 1 + 2 + 2 + 2 = 7 requests
    assert len(rec.requests) == 7


def test_network_errors_retry_then_give_up_after_max_attempts() -> None:
    box = MemoryOutbox()
    fill(box, 1)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    cfg = DeliveryConfig(**{**FAST.__dict__, "max_attempts": 3})
    d = make(box, handler, config=cfg)
    asyncio.run(run_until(d, settled(box)))
    (view,) = box.dead_letters()
    assert view.attempts == 3
    assert view.last_error == "too many attempts: network error: ConnectError"
    assert d.metrics.snapshot()["test"] == {
        "accepted": 0,
        "delivered": 0,
        "retried": 2,
        "dead": 1,
        "failed": 0,
    }


def test_events_older_than_max_age_are_dead_before_sending() -> None:
    box = MemoryOutbox()
    old = time.time() - 8 * 86400
    box.add([NewRecord("test", "old", "Lead", "", old, {"id": "old"})], time.time())
    fill(box, 1)
    rec = Recorder()
    d = make(box, rec)
    asyncio.run(run_until(d, settled(box)))
    assert rec.ids() == ["test-0"]
    (dead,) = box.dead_letters()
    assert dead.event_id == "old" and dead.last_error == "event too old to send"


def test_adapter_build_failure_is_a_dead_letter() -> None:
    class Broken(JsonAdapter):
        def build(self, items: Any) -> Any:
            raise KeyError("x")

    box = MemoryOutbox()
    fill(box, 1)
    d = make(box, Recorder(), Broken())
    asyncio.run(run_until(d, settled(box)))
    assert box.dead_letters()[0].last_error == "could not build the request: KeyError"


def test_a_hanging_platform_does_not_slow_another() -> None:
    box = MemoryOutbox()
    fill(box, 3, platform="slow")
    fast_ids = fill(box, 20, platform="fast")
    gate = asyncio.Event()
    fast_seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            await gate.wait()
        else:
            fast_seen.append(request.url.path)
        return httpx.Response(200)

    d = Dispatcher(
        box,
        {"slow": JsonAdapter(name="slow"), "fast": JsonAdapter(name="fast")},
        FAST,
        transport=httpx.MockTransport(handler),
    )

    async def main() -> None:
        task = asyncio.create_task(d.run())
        while box.stats(time.time())["fast"]["pending"]:
            await asyncio.sleep(0.01)
        # Every fast event went out while the slow platform had not answered once.
        assert box.stats(time.time())["slow"]["pending"] == 3
        gate.set()
        while box.stats(time.time())["slow"]["pending"]:
            await asyncio.sleep(0.01)
        d.request_stop()
        await task

    asyncio.run(main())
    assert len(fast_seen) == len(fast_ids)


def test_shutdown_finishes_in_flight_and_releases_the_rest() -> None:
    box = MemoryOutbox()
    fill(box, 6)
    started = asyncio.Event()
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(0.2)
        sent.append(request.url.path)
        return httpx.Response(200)

    cfg = DeliveryConfig(**{**FAST.__dict__, "concurrency": {"test": 1}})
    d = make(box, handler, config=cfg)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.create_task(d.run())
        await started.wait()
        d.request_stop()
        await task

    asyncio.run(main())
    assert len(sent) == 1
    views = box.recent()
    assert sum(v.status == "delivered" for v in views) == 1
    # Released, not leased: a new dispatcher can claim them immediately.
    assert len(box.claim("test", 10, 30.0, time.time())) == 5


def test_shutdown_grace_cancels_a_stuck_request_and_releases_it() -> None:
    box = MemoryOutbox()
    fill(box, 1)

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        return httpx.Response(200)

    cfg = DeliveryConfig(**{**FAST.__dict__, "shutdown_grace": 0.1})
    d = make(box, handler, config=cfg)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.create_task(d.run())
        while not d._held:
            await asyncio.sleep(0.01)
        d.request_stop()
        await task

    asyncio.run(main())
    assert box.recent()[0].status == "pending"
    assert len(box.claim("test", 10, 30.0, time.time())) == 1


def test_rate_limit_spaces_requests() -> None:
    box = MemoryOutbox()
    fill(box, 8)
    rec = Recorder()
    cfg = DeliveryConfig(**{**FAST.__dict__, "rate_limits": {"test": 5.0}})
    d = make(box, rec, config=cfg)
    asyncio.run(run_until(d, settled(box)))
    times = sorted(t for t, _, _ in rec.requests)
    assert len(times) == 8
    # 5 requests/s with a burst of 5: the last three wait for new tokens (0.2 s each).
    assert times[-1] - times[0] >= 0.55


@pytest.mark.parametrize("answer", [200, 503, 400])
def test_until_idle_returns_when_nothing_is_due(answer: int) -> None:
    box = MemoryOutbox()
    fill(box, 2)
    d = make(box, lambda r: httpx.Response(answer))
    asyncio.run(asyncio.wait_for(d.run(until_idle=True), 10))
    status = {200: "delivered", 503: "retrying", 400: "dead"}[answer]
    assert {v.status for v in box.recent()} == {status}


def test_a_bug_in_sending_does_not_kill_the_worker() -> None:
    box = MemoryOutbox()
    fill(box, 3)
    rec = Recorder()
    cfg = DeliveryConfig(**{**FAST.__dict__, "concurrency": {"test": 1}})

    class Flaky(Dispatcher):
        failed = False

        async def _send(self, *args: Any) -> None:
            if not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("bug")
            await super()._send(*args)

    d = Flaky(box, {"test": JsonAdapter()}, cfg, transport=httpx.MockTransport(rec))
    asyncio.run(run_until(d, settled(box)))
    assert sorted(rec.ids()) == ["test-0", "test-1", "test-2"]


def test_the_dispatcher_client_keeps_no_cookies() -> None:
    from tracking_mw.delivery.dispatcher import _client

    def answer(request: httpx.Request) -> httpx.Response:
        assert "cookie" not in request.headers  # nothing kept from the previous answer
        return httpx.Response(200, headers={"set-cookie": "sid=abc; Path=/"}, json={})

    async def main() -> None:
        async with _client(transport=httpx.MockTransport(answer)) as client:
            for _ in range(2):
                r = await client.post("https://platform.example/events", content=b"{}")
                assert r.status_code == 200
            assert len(client.cookies) == 0

    asyncio.run(main())
