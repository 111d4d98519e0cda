"""The dispatcher and its leases, on the real SQLite outbox: nothing is sent once its lease
may have run out, each outcome is written as soon as it is known, a write that fails is
made later, and an answer about the whole request is not split.

A fake clock makes lease time deterministic: the platform's "latency" advances it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._servers import serve_in_thread
from tests.platforms._helpers import fake_settings, full_attribution, purchase
from tracking_mw._errors import OutboxError
from tracking_mw.config import DeliveryConfig, Settings
from tracking_mw.delivery import Claimed, Dispatcher, Metrics, NewRecord, Outbox
from tracking_mw.delivery.sqlite import SQLiteOutbox
from tracking_mw.platforms import Adapter, Outcome, build_adapters
from tracking_mw.testing import FakePlatforms

from ._helpers import JsonAdapter

LEASE = 10.0


class Clock:
    """Wall-clock time that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Box(SQLiteOutbox):
    """The SQLite outbox, noting when each record's latest lease ends; ``fail`` makes the
    next calls of the named methods raise, as a store that is briefly unreachable does."""

    def __init__(self, path: Path, clock: Clock, claim_takes: float = 0.0) -> None:
        super().__init__(str(path))
        self.clock = clock
        self.claim_takes = claim_takes
        self.lease_ends: dict[str, float] = {}
        self.fail: collections.Counter[str] = collections.Counter()
        self.acks: list[list[str]] = []

    def _maybe_fail(self, method: str) -> None:
        if self.fail[method]:
            self.fail[method] -= 1
            raise OutboxError(f"sqlite outbox {method} failed: OperationalError")

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        out = super().claim(platform, limit, lease_seconds, now)
        for c in out:
            self.lease_ends[c.event_id] = now + lease_seconds
        # A claim that waits for the database lock: the lease started when it was asked for.
        self.clock.advance(self.claim_takes)
        return out

    def ack(self, records: Sequence[Claimed], *args: Any) -> None:
        self._maybe_fail("ack")
        self.acks.append([c.event_id for c in records])
        super().ack(records, *args)

    def bury(self, records: Sequence[Claimed], *args: Any) -> None:
        self._maybe_fail("bury")
        super().bury(records, *args)

    def statuses(self) -> dict[str, str]:
        return {v.event_id: v.status for v in self.recent(10_000)}


class Platform:
    """A MockTransport handler: each request takes ``latency`` seconds of the fake clock,
    a request holding a "bad" event is refused with 400. Notes every request, and every
    event answered after its lease had run out. ``check`` sees each request first."""

    def __init__(self, box: Box, clock: Clock, latency: float) -> None:
        self.box = box
        self.clock = clock
        self.latency = latency
        self.requests: list[tuple[list[str], int]] = []
        self.late: list[str] = []
        self.check: Callable[[list[str]], None] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        ids = [e["id"] for e in events]
        if self.check is not None:
            self.check(ids)
        self.clock.advance(self.latency)
        # The answer must come back while the records are still leased to the sender.
        self.late += [i for i in ids if self.clock() >= self.box.lease_ends[i]]
        status = 400 if any(e.get("bad") for e in events) else 200
        self.requests.append((ids, status))
        return httpx.Response(status, text="bad event in batch" if status == 400 else "")

    def accepted(self) -> collections.Counter[str]:
        return collections.Counter(i for ids, status in self.requests if status == 200 for i in ids)


def config(**changes: Any) -> DeliveryConfig:
    kw: dict[str, Any] = {
        "lease_seconds": LEASE,
        "poll_interval": 0.01,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "shutdown_grace": 2.0,
        "concurrency": {"test": 1},
    }
    kw.update(changes)
    return DeliveryConfig(**kw)


def fill(box: Box, n: int, bad: Sequence[int] = ()) -> list[str]:
    now = time.time()
    ids = [f"e{i:02d}" for i in range(n)]
    box.add(
        [
            NewRecord("test", eid, "Lead", "", now, {"id": eid, "bad": i in bad})
            for i, eid in enumerate(ids)
        ],
        now,
    )
    return ids


def lane(
    box: Outbox,
    handler: Callable[[httpx.Request], Any],
    *,
    clock: Callable[[], float] | None = None,
    adapter: Adapter | None = None,
    **changes: Any,
) -> Dispatcher:
    """A dispatcher of the test lane over ``box``, sending to ``handler`` (a MockTransport
    handler), with ``config(**changes)`` and ``clock`` (the real one by default)."""
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Dispatcher(
        box,
        {"test": adapter or JsonAdapter()},
        config(**changes),
        Metrics(),
        transport=httpx.MockTransport(handler),
        **kw,
    )


def run_until_idle(d: Dispatcher) -> None:
    asyncio.run(asyncio.wait_for(d.run(until_idle=True), 30))


def test_a_split_never_outlives_the_lease_and_the_unsent_part_is_claimed_again(
    tmp_path: Path,
) -> None:
    # 16 events, one bad, in one request: splitting it takes 9 requests of 2 s each, longer
    # than the 10 s lease. What the lease cannot cover is given back and claimed again.
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    ids = fill(box, 16, bad=[5])
    platform = Platform(box, clock, latency=2.0)
    d = lane(box, platform, clock=clock, adapter=JsonAdapter(max_batch=16))
    run_until_idle(d)
    assert platform.late == []
    good = [i for i in ids if i != "e05"]
    assert platform.accepted() == dict.fromkeys(good, 1)
    assert box.statuses() == {**dict.fromkeys(good, "delivered"), "e05": "dead"}
    counts = d.metrics.snapshot()["test"]
    assert (counts["delivered"], counts["dead"]) == (15, 1)
    # More than one claim was needed: the split stopped at the lease's safe end.
    assert len(set(box.lease_ends.values())) > 1


def test_each_outcome_is_in_the_outbox_before_the_next_request(tmp_path: Path) -> None:
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    ids = fill(box, 6, bad=[2])
    platform = Platform(box, clock, latency=0.1)
    seen: list[str] = []
    unsettled: list[str] = []

    def check(request_ids: list[str]) -> None:
        # Everything answered before this request must be settled in the outbox already,
        # so a lease running out now could not make it claimable again.
        statuses = box.statuses()
        unsettled.extend(i for i in seen if statuses[i] not in ("delivered", "dead"))
        seen.extend(request_ids)

    platform.check = check
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert unsettled == []
    assert [sent for sent, _ in platform.requests] == [[i] for i in ids]
    assert box.statuses() == {**dict.fromkeys(ids, "delivered"), "e02": "dead"}


def test_a_fast_platforms_outcomes_share_a_write_made_before_the_next_claim(
    tmp_path: Path,
) -> None:
    # One event per request, answered in 1 ms each: a write per request would cost a
    # transaction each. They are written together, and before the next claim.
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    ids = fill(box, 40)
    platform = Platform(box, clock, latency=0.001)
    at_second_claim: dict[str, str] = {}

    def check(request_ids: list[str]) -> None:
        if request_ids == ["e32"]:  # the first request of the second claim (32 per claim)
            at_second_claim.update(box.statuses())

    platform.check = check
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert box.statuses() == dict.fromkeys(ids, "delivered")
    assert sorted(i for group in box.acks for i in group) == ids
    # 40 answers within 50 ms of the last write: one write per claim, not 40.
    assert [len(group) for group in box.acks] == [32, 8]
    assert [at_second_claim[i] for i in ids[:32]] == ["delivered"] * 32


def test_the_lease_is_reckoned_from_before_a_slow_claim(tmp_path: Path) -> None:
    # The claim waits 5 s for the database: its lease ends 10 s after it was asked for,
    # only 5 s after it returned. Requests of 1 s each must stop in time.
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock, claim_takes=5.0)
    ids = fill(box, 10)
    platform = Platform(box, clock, latency=1.0)
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert platform.late == []
    assert platform.accepted() == dict.fromkeys(ids, 1)


def test_a_failed_ack_is_kept_and_written_later(tmp_path: Path) -> None:
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    ids = fill(box, 5)
    box.fail["ack"] = 1
    platform = Platform(box, clock, latency=0.1)
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert box.fail["ack"] == 0  # the failure did happen
    assert platform.accepted() == dict.fromkeys(ids, 1)
    assert box.statuses() == dict.fromkeys(ids, "delivered")
    assert d.metrics.snapshot()["test"]["delivered"] == 5


def test_a_record_is_counted_once_even_when_its_write_fails_first(tmp_path: Path) -> None:
    # The dead letter's first write fails, and the lease runs out right after the answer
    # (an 11 s request): the record is buried once, sent once, and counted once.
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    fill(box, 1, bad=[0])
    box.fail["bury"] = 1
    platform = Platform(box, clock, latency=LEASE + 1)
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert len(platform.requests) == 1
    assert box.statuses() == {"e00": "dead"}
    assert d.metrics.snapshot()["test"]["dead"] == 1


def test_while_an_outcome_cannot_be_written_nothing_more_is_sent(tmp_path: Path) -> None:
    # The outbox refuses five writes in a row: the worker sends nothing more until the
    # ack is in, then delivers the rest; each record is sent and counted once.
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    ids = fill(box, 3)
    box.fail["ack"] = 5
    platform = Platform(box, clock, latency=0.1)
    sent_while_failing: list[str] = []

    def check(request_ids: list[str]) -> None:
        if 0 < box.fail["ack"] < 5:  # an ack has failed, and the outbox still fails
            sent_while_failing.extend(request_ids)

    platform.check = check
    d = lane(box, platform, clock=clock)
    run_until_idle(d)
    assert box.fail["ack"] == 0
    assert sent_while_failing == []
    assert platform.accepted() == dict.fromkeys(ids, 1)
    assert box.statuses() == dict.fromkeys(ids, "delivered")
    assert d.metrics.snapshot()["test"]["delivered"] == 3


# -- an answer about the whole request --------------------------------------------------


def _items(adapter: Adapter, n: int) -> list[NewRecord]:
    now = time.time()
    out = []
    for i in range(n):
        event = purchase(event_id=f"evt-{i:04d}")
        item = adapter.prepare(event, full_attribution(now))
        out.append(
            NewRecord(adapter.name, event.event_id, "Purchase", adapter.batch_key(item), now, item)
        )
    return out


@pytest.mark.parametrize(
    ("platform", "wrong", "reason"),
    [
        ("meta", {"meta_token": "EAAwrong-token"}, "meta error 190"),
        ("rokt", {"rokt_secret": "wrong-secret"}, "rokt HTTP 403"),
    ],
)
def test_a_rejected_token_dead_letters_the_whole_request_without_splitting(
    tmp_path: Path, platform: str, wrong: dict[str, Any], reason: str
) -> None:
    fake = FakePlatforms()
    with serve_in_thread(fake.app, lifespan="off") as base:
        settings = Settings(
            secret_key="k" * 32,
            outbox="memory://",
            start_dispatcher=False,
            **FakePlatforms(**wrong).settings_overrides(base),
        )
        adapter = build_adapters(settings)[platform]
        box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
        box.add(_items(adapter, 8), time.time())
        d = Dispatcher(
            box,
            {platform: adapter},
            DeliveryConfig(poll_interval=0.01, concurrency={platform: 1}),
            Metrics(),
        )
        run_until_idle(d)
    # One request for the 8 events, not 15 (8 -> 4 + 4 -> ... -> 1 + 1).
    assert len(fake.received(platform)) == 1
    dead = box.dead_letters()
    assert len(dead) == 8
    assert all(v.last_error is not None and reason in v.last_error for v in dead)
    assert d.metrics.snapshot()[platform]["dead"] == 8


@pytest.mark.parametrize(
    ("code", "whole"),
    [(190, True), (102, True), (10, True), (200, True), (294, True), (100, False)],
)
def test_meta_token_and_permission_errors_are_about_the_whole_request(
    code: int, whole: bool
) -> None:
    meta = build_adapters(fake_settings(FakePlatforms()))["meta"]
    body = json.dumps({"error": {"message": "x", "type": "OAuthException", "code": code}})
    outcome = meta.classify(400, {}, body.encode(), 8)
    assert outcome.kind == "permanent"
    assert outcome.request_wide is whole


def test_http_401_and_403_are_not_split_on_any_platform(tmp_path: Path) -> None:
    clock = Clock()
    box = Box(tmp_path / "o.sqlite3", clock)
    fill(box, 8)
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(len(json.loads(request.content)["events"]))
        return httpx.Response(401 if len(requests) == 1 else 403, text="no")

    d = lane(box, handler, clock=clock, adapter=JsonAdapter(max_batch=4))
    run_until_idle(d)
    assert requests == [4, 4]
    assert set(box.statuses().values()) == {"dead"}


def test_a_request_unanswered_near_the_lease_end_is_cut_short(tmp_path: Path) -> None:
    # A platform that does not answer within the lease: the request is abandoned at 95% of
    # it and the record rescheduled, before another dispatcher could claim and send it.
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    now = time.time()
    box.add([NewRecord("test", "slow-1", "Lead", "", now, {"id": "slow-1"})], now)
    started: list[float] = []
    ended: list[float] = []

    async def never_answers(request: httpx.Request) -> httpx.Response:
        started.append(time.monotonic())
        try:
            await asyncio.sleep(30)
        finally:
            ended.append(time.monotonic())
        return httpx.Response(200)

    d = lane(
        box, never_answers, lease_seconds=1.0, timeout=20.0, backoff_base=30.0, backoff_cap=60.0
    )
    run_until_idle(d)
    assert len(started) == 1 and len(ended) == 1
    # Cut short (at 95% of the 1 s lease), not left for the platform's 30 s.
    assert ended[0] - started[0] < 10
    [view] = box.recent(10)
    assert view.status == "retrying" and view.last_error == "no answer before the lease's end"


def test_an_answer_trickling_in_is_cut_at_the_lease_end_however_early_it_began(
    tmp_path: Path,
) -> None:
    # httpx times each read: an answer whose bytes come slowly, each within the timeout,
    # outlasts it. Started at the beginning of a lease, it is still cut near its end, and
    # the record is sent again once, by whoever claims it next.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    answered: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        first = True
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            slow, first = first, False
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                    for _ in range(10):
                        if slow:
                            time.sleep(0.3)  # each byte well within the 0.4 s read timeout
                        conn.sendall(b"k")
                except OSError:  # the client gave up on it
                    continue
                answered.append("slow" if slow else "fast")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    now = time.time()
    box.add([NewRecord("test", "e00", "Lead", "", now, {"id": "e00"})], now)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    cfg = config(lease_seconds=2.0, timeout=0.4, backoff_base=0.01, backoff_cap=0.05)
    d = Dispatcher(box, {"test": JsonAdapter(base_url=base)}, cfg, Metrics())

    async def a_while() -> None:
        task = asyncio.create_task(d.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if answered:
                break
        d.request_stop()
        await task

    try:
        asyncio.run(a_while())
        # The slow answer never completed: it was cut, and the record sent again.
        assert answered == ["fast"]
        [view] = box.recent(10)
        assert view.status == "delivered" and view.attempts >= 2
        assert d.metrics.snapshot()["test"]["delivered"] == 1
    finally:
        stop.set()
        server.join(5)
        listener.close()


def test_a_rate_limited_lane_claims_what_it_may_send_within_its_lease(tmp_path: Path) -> None:
    # 31 events at 10 per second with a 2 s lease: a claim of all of them would wait 2.1 s
    # for its last request, past the lease, while another dispatcher could claim and send
    # the same records. Claims are sized to the rate instead: none waits past its lease.
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    now = time.time()
    records = [NewRecord("test", "a0", "Lead", "a", now, {"id": "a0", "key": "a"})]
    records += [
        NewRecord("test", f"b{i:02d}", "Lead", "b", now, {"id": f"b{i:02d}", "key": "b"})
        for i in range(30)
    ]
    box.add(records, now)
    leases: dict[str, float] = {}
    real_claim = box.claim

    def claim(platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        out = real_claim(platform, limit, lease_seconds, now)
        assert len(out) <= 10  # 10/s x 2 s / 2, one worker
        for c in out:
            leases[c.event_id] = now + lease_seconds
        return out

    box.claim = claim  # type: ignore[method-assign]
    late: list[str] = []
    sent: list[str] = []

    def platform(request: httpx.Request) -> httpx.Response:
        ids = [e["id"] for e in json.loads(request.content)["events"]]
        sent.extend(ids)
        late.extend(i for i in ids if time.time() >= leases[i])
        return httpx.Response(200)

    d = lane(
        box,
        platform,
        adapter=JsonAdapter(max_batch=50),
        lease_seconds=2.0,
        rate_limits={"test": 10.0},
    )
    run_until_idle(d)
    assert sorted(sent) == sorted(r.event_id for r in records)  # each once
    assert late == []
    assert {v.status for v in box.recent(100)} == {"delivered"}


def test_tokens_not_used_go_back_to_the_bucket() -> None:
    from tracking_mw.delivery.backoff import TokenBucket

    now = [0.0]
    bucket = TokenBucket(10.0, clock=lambda: now[0])
    assert bucket.take(10) == 0.0
    assert bucket.take(30) == pytest.approx(3.0)
    bucket.give_back(30)  # that chunk was not sent
    assert bucket.take(10) == pytest.approx(1.0)  # as if the 30 had never been taken
    bucket.give_back(100)
    now[0] = 5.0
    assert bucket.take(10) == 0.0 and bucket.take(1) == pytest.approx(0.1)  # burst capped


def test_a_reason_quoting_a_lone_surrogate_is_stored(tmp_path: Path) -> None:
    # A platform's JSON answer may escape half a surrogate pair ("\ud83d"): the reason is
    # stored with U+FFFD, instead of a write failing at every try while the record is
    # resent after each lease.
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    now = time.time()
    box.add([NewRecord("test", "e00", "Lead", "", now, {"id": "e00"})], now)
    calls: list[int] = []

    def platform(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, content=b"invalid link \\ud83d")

    class Quoting(JsonAdapter):
        def classify(
            self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
        ) -> Outcome:
            return Outcome.permanent(json.loads('"invalid link \\ud83d"'))

    d = lane(box, platform, adapter=Quoting())
    run_until_idle(d)
    [view] = box.recent(10)
    assert view.status == "dead" and view.last_error == "invalid link \ufffd"
    assert calls == [1]
