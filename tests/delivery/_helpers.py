"""Helpers for delivery tests: a small JSON adapter, a redis-server, polling."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from tests._servers import free_port
from tracking_mw.attribution import Attribution
from tracking_mw.events import Event
from tracking_mw.platforms._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    default_classification,
)


class JsonAdapter(Adapter):
    """Posts ``{"events": [...]}`` to ``{base}/{name}``; answers: 2xx ok, else default rules,
    other 4xx permanent with the body as reason. Batches by the item's ``key``."""

    name = "test"

    def __init__(
        self, base_url: str = "http://platform.test", name: str = "test", max_batch: int = 1
    ):
        self.base_url = base_url
        self.name = name  # type: ignore[misc]
        self.max_batch = max_batch  # type: ignore[misc]

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        if event.properties.get("skip") == self.name:
            raise Skip(f"{self.name} was told to skip")
        if event.properties.get("boom") == self.name:
            raise RuntimeError("adapter bug")
        return {
            "id": event.event_id,
            "name": event.name,
            "key": str(event.properties.get("key", "")),
            "visitor": attribution.visitor_id,
            "click": attribution.click_id(self.name),
            "bad": bool(event.properties.get("bad")),
        }

    def batch_key(self, item: Mapping[str, Any]) -> str:
        return str(item.get("key", ""))

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        body = json.dumps({"events": list(items)}).encode()
        return PlatformRequest(
            "POST",
            f"{self.base_url}/{self.name}",
            {"content-type": "application/json", "authorization": "Bearer s3cret"},
            body,
            ("s3cret",),
        )

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        if 200 <= status < 300:
            return Outcome.ok()
        default = default_classification(status, headers)
        if default is not None:
            return default
        return Outcome.permanent(f"HTTP {status}: {body.decode(errors='replace')[:100]}")


class Recorder:
    """An httpx MockTransport handler recording requests; ``answer`` decides each reply."""

    def __init__(
        self, answer: Callable[[httpx.Request, list[dict[str, Any]]], httpx.Response] | None = None
    ):
        self.requests: list[tuple[float, str, list[dict[str, Any]]]] = []
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        self.requests.append((time.time(), request.url.path, events))
        if self.answer is not None:
            return self.answer(request, events)
        return httpx.Response(200, json={"ok": True})

    def ids(self) -> list[str]:
        return [e["id"] for _, _, evs in self.requests for e in evs]


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> None:
    """Poll ``cond`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required (make system-deps)"
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                d,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def full_attribution(n: int = 0) -> Attribution:
    """A visitor who came through every platform's ad (so every adapter applies)."""
    from tracking_mw.attribution import ClientContext, Touch
    from tracking_mw.testing import DEMO_BIGO_PIXEL_ID, DEMO_KWAI_PIXEL_ID

    now = int(time.time())
    touches = [
        Touch(platform="meta", click_id=f"IwAR{n:06d}fbclid", first_seen=now, last_seen=now),
        Touch(platform="kwai", click_id=f"kwai-click-{n}", pixel_id=DEMO_KWAI_PIXEL_ID),
        Touch(platform="bigo", click_id=f"bbg{n:08d}" + "x" * 20, pixel_id=DEMO_BIGO_PIXEL_ID),
        Touch(platform="rokt", click_id=f"{n:032d}"),
        Touch(platform="roibest", click_id=f"link{n}"),
        Touch(platform="tiktok", click_id=f"ttclid{n}"),
    ]
    attr = Attribution(visitor_id=f"visitor{n}")
    for t in touches:
        attr = attr.with_touch(t)
    return attr.with_client(
        ClientContext(
            ip="203.0.113.7",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
            url="https://shop.example/checkout/done",
        )
    )
