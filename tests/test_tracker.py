"""track() and link_visitor(): receipts, dedupe, consent, offline attribution, failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.delivery._helpers import JsonAdapter
from tracking_mw import (
    Attribution,
    ConfigurationError,
    Event,
    InvalidEvent,
    OutboxError,
    Settings,
    Touch,
)
from tracking_mw._context import RequestState, _state
from tracking_mw._runtime import Runtime
from tracking_mw.delivery.memory import MemoryOutbox
from tracking_mw.tracker import Receipt, link_visitor, track

KEY = "k" * 32


def settings(**kw: Any) -> Settings:
    return Settings(secret_key=KEY, outbox="memory://", bigo=None, roibest=None, **kw)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(
        settings(),
        adapters={"a": JsonAdapter(name="a"), "b": JsonAdapter(name="b")},
        outbox=MemoryOutbox(),
    )
    Runtime.set_default(rt)
    yield rt
    Runtime.set_default(None)
    rt.close()


@pytest.fixture
def request_state(runtime: Runtime) -> Iterator[RequestState]:
    attr = Attribution(visitor_id="v1").with_touch(Touch(platform="a", click_id="CLICK-A"))
    st = RequestState(attr, runtime, True)
    token = _state.set(st)
    yield st
    _state.reset(token)


def items(rt: Runtime) -> dict[str, dict[str, Any]]:
    return {v.platform: v.item for v in rt.outbox.recent()}


def test_track_queues_one_record_per_platform(request_state: RequestState) -> None:
    receipt = track("Purchase", value="10.5", currency="brl", event_id="ev-1")
    assert receipt == Receipt("ev-1", ("a", "b"), {}, False, None)
    assert receipt.ok
    rt = request_state.runtime
    assert rt is not None
    got = items(rt)
    assert got["a"]["click"] == "CLICK-A" and got["a"]["visitor"] == "v1"
    assert got["b"]["click"] is None
    assert {v.event_name for v in rt.outbox.recent()} == {"Purchase"}
    assert rt.counters()["a"]["accepted"] == 1
    assert rt.counters()["a"]["pending"] == 1


def test_same_event_id_is_queued_once(request_state: RequestState) -> None:
    first = track("Lead", event_id="same")
    second = track("Lead", event_id="same")
    assert first.queued == ("a", "b") and not first.duplicate
    assert second.queued == () and second.duplicate
    assert set(second.skipped) == {"a", "b"}
    rt = request_state.runtime
    assert rt is not None and len(rt.outbox.recent()) == 2


def test_skips_carry_reasons_and_adapter_bugs_do_not_raise(
    request_state: RequestState, caplog: pytest.LogCaptureFixture
) -> None:
    r = track("Lead", properties={"skip": "a", "boom": "b"})
    assert r.queued == ()
    assert r.skipped == {"a": "a was told to skip", "b": "adapter error: RuntimeError"}
    assert "CLICK" not in caplog.text


def test_invalid_event_raises_before_anything_is_queued(request_state: RequestState) -> None:
    with pytest.raises(InvalidEvent) as info:
        track("Purchase", value=-1, currency="BRL")
    assert info.value.field == "value"
    with pytest.raises(InvalidEvent):
        track("Purchase", value=10)  # no currency: Purchase needs both
    rt = request_state.runtime
    assert rt is not None and rt.outbox.recent() == []


def test_no_consent_queues_nothing(request_state: RequestState) -> None:
    request_state.consent = False
    request_state.attribution = None
    r = track("Lead")
    assert r.queued == () and r.skipped == {"a": "no consent", "b": "no consent"}
    # An explicit snapshot (stored with an order when consent was given) still counts.
    snap = Attribution(visitor_id="v9").to_dict()
    assert track("Lead", attribution=snap).queued == ("a", "b")


def test_offline_conversion_with_a_snapshot(runtime: Runtime) -> None:
    snap = Attribution(visitor_id="v2").with_touch(Touch(platform="b", click_id="CB")).to_dict()
    r = track("Purchase", value=5, currency="USD", attribution=snap)
    assert r.queued == ("a", "b")
    assert items(runtime)["b"]["click"] == "CB"
    with pytest.raises(InvalidEvent) as info:
        track("Lead", attribution={"touches": "nope"})
    assert info.value.field == "attribution"


def test_link_visitor_then_track_by_external_id(request_state: RequestState) -> None:
    assert link_visitor("user-42") is True
    token = _state.set(None)
    try:
        r = track("Purchase", value=1, currency="BRL", external_id="user-42")
        unknown = track("Lead", external_id="nobody")
    finally:
        _state.reset(token)
    assert r.queued == ("a", "b") and unknown.queued == ("a", "b")
    rt = request_state.runtime
    assert rt is not None
    by_event = {(v.event_id, v.platform): v.item for v in rt.outbox.recent()}
    assert by_event[(r.event_id, "a")]["click"] == "CLICK-A"
    assert by_event[(unknown.event_id, "a")]["click"] is None
    # The store keeps a hash of the id, never the id itself.
    assert isinstance(rt.outbox, MemoryOutbox)
    assert all("user-42" not in k for k in rt.outbox._links)
    with pytest.raises(InvalidEvent):
        link_visitor("")


def test_an_integer_external_id_is_its_digits(request_state: RequestState) -> None:
    # A database primary key, as Django and SQLAlchemy give it: 42 and "42" are one visitor.
    assert link_visitor(42) is True
    rt = request_state.runtime
    assert rt is not None
    got = rt.tracker.linked("42")
    assert got is not None and got.visitor_id == "v1"
    token = _state.set(None)
    try:
        r = track("Lead", external_id=42)
    finally:
        _state.reset(token)
    by_event = {(v.event_id, v.platform): v.item for v in rt.outbox.recent()}
    assert by_event[(r.event_id, "a")]["click"] == "CLICK-A"
    for bad in (True, 4.2, None, "  ", b"42"):
        with pytest.raises(InvalidEvent) as info:
            link_visitor(bad)  # type: ignore[arg-type]
        assert info.value.field == "external_id"


def test_link_visitor_needs_a_visitor(runtime: Runtime) -> None:
    assert link_visitor("u1") is False  # outside a request
    token = _state.set(RequestState(None, runtime, False))
    try:
        assert link_visitor("u1") is False  # no consent
    finally:
        _state.reset(token)
    assert link_visitor("u1", Attribution(visitor_id="x")) is True
    got = runtime.tracker.linked("u1")
    assert got is not None and got.visitor_id == "x"


def test_event_objects_and_mixing(runtime: Runtime) -> None:
    ev = Event(name="Lead", event_id="obj-1")
    assert track(ev).event_id == "obj-1"
    with pytest.raises(TypeError):
        track(ev, value=3)


def test_runtime_resolution(runtime: Runtime) -> None:
    other = Runtime(settings(), adapters={"c": JsonAdapter(name="c")}, outbox=MemoryOutbox())
    token = _state.set(RequestState(Attribution(), other, True))
    try:
        assert track("Lead").queued == ("c",)
    finally:
        _state.reset(token)
        other.close()
    assert track("Lead").queued == ("a", "b")
    Runtime.set_default(None)
    with pytest.raises(ConfigurationError, match="TrackingMiddleware"):
        track("Lead")


class _Broken(MemoryOutbox):
    def add(self, records: Any, now: float) -> list[bool]:
        raise OutboxError("disk full at /secret/path")


def test_outbox_failure_never_raises_into_the_view(caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(settings(), adapters={"a": JsonAdapter(name="a")}, outbox=_Broken())
    Runtime.set_default(rt)
    try:
        with caplog.at_level(logging.WARNING, logger="tracking_mw"):
            r1 = track("Lead")
            r2 = track("Lead")
        assert not r1.ok and r1.queued == ()
        assert r1.error == "outbox error: OutboxError" == r2.error
        assert r1.skipped == {"a": "outbox error: OutboxError"}
        assert rt.counters()["a"]["failed"] == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1  # once per failure streak
        assert "/secret/path" not in caplog.text
    finally:
        Runtime.set_default(None)
        rt.close()


def test_track_from_an_async_view_needs_no_await(request_state: RequestState) -> None:
    async def view() -> Receipt:
        return track("Lead")

    assert asyncio.run(view()).queued == ("a", "b")


def test_with_real_adapters(tmp_path: Any) -> None:
    from tracking_mw.testing import FakePlatforms

    fake = FakePlatforms()
    s = Settings(
        secret_key=KEY,
        outbox=f"sqlite:///{tmp_path}/o.sqlite3",
        **fake.settings_overrides("http://127.0.0.1:9"),
    )
    rt = Runtime.for_settings(s)
    assert Runtime.for_settings(s) is rt and Runtime.default() is rt
    try:
        attr = Attribution(visitor_id="v").with_client(
            __import__("tracking_mw").ClientContext(
                ip="203.0.113.9", user_agent="Mozilla/5.0", url="https://shop.example/done"
            )
        )
        r = track(
            "Purchase",
            value=10,
            currency="EUR",
            user={"email": "a@b.example"},
            attribution=attr,
            event_time=time.time(),
        )
        assert "meta" in r.queued and "rokt" in r.queued
        assert "kwai" in r.skipped  # no click id
    finally:
        rt.close()
