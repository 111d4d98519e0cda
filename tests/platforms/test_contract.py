"""The contract every adapter keeps: prepare -> build -> accepted by the fake -> ok."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tracking_mw.config import Settings
from tracking_mw.platforms import (
    ADAPTER_CLASSES,
    Adapter,
    PlatformRequest,
    build_adapters,
    validate_event,
)
from tracking_mw.testing import FakePlatforms

from .._servers import serve_in_thread
from ._helpers import FAKE_BASE, SECRET, fake_settings, full_attribution, purchase

PLATFORMS = list(ADAPTER_CLASSES)


@pytest.fixture
def fake() -> FakePlatforms:
    return FakePlatforms()


@pytest.fixture
def adapters(fake: FakePlatforms) -> dict[str, Adapter]:
    return build_adapters(fake_settings(fake))


def send(fake: FakePlatforms, req: PlatformRequest) -> httpx.Response:
    return asyncio.run(asend(fake, req))


async def asend(fake: FakePlatforms, req: PlatformRequest) -> httpx.Response:
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(
            req.method, req.url, headers=dict(req.headers), content=req.body
        )


def test_build_adapters_covers_every_configured_platform(adapters: dict[str, Adapter]) -> None:
    assert sorted(adapters) == sorted(PLATFORMS)
    for name, adapter in adapters.items():
        assert adapter.name == name
        assert isinstance(adapter, ADAPTER_CLASSES[name])
        assert 1 <= adapter.max_batch <= 1000


def test_build_adapters_skips_unconfigured(fake: FakePlatforms) -> None:
    settings = fake_settings(fake, meta=None, kwai=None, rokt=None, tiktok=None, roibest=None)
    assert list(build_adapters(settings)) == ["bigo"]
    assert (
        build_adapters(
            fake_settings(
                fake, bigo=None, meta=None, kwai=None, rokt=None, tiktok=None, roibest=None
            )
        )
        == {}
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_adapter_round_trip_through_fake(
    platform: str, fake: FakePlatforms, adapters: dict[str, Adapter]
) -> None:
    adapter = adapters[platform]
    event = purchase()
    validate_event(event)
    item = adapter.prepare(event, full_attribution())
    # The item is JSON-ready (it is stored in the outbox) and carries no credential.
    assert json.loads(json.dumps(item)) == item
    req = adapter.build([item])
    assert req.method == "POST"
    assert req.url.startswith(f"{FAKE_BASE}/{platform}/")
    for secret in req.secrets:
        assert secret and secret not in json.dumps(item)
    masked = req.masked_body()
    for secret in req.secrets:
        assert secret not in masked
    resp = send(fake, req)
    outcome = adapter.classify(resp.status_code, dict(resp.headers), resp.content, 1)
    assert outcome.kind == "ok", (resp.status_code, resp.text, outcome)
    assert len(fake.events(platform)) == 1
    assert fake.received(platform)[0].accepted


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_credential_in_the_request_is_listed(
    platform: str, adapters: dict[str, Adapter], fake: FakePlatforms
) -> None:
    settings = fake_settings(fake)
    creds: list[str] = []
    cfg: Any = getattr(settings, platform)
    for attr in ("access_token", "api_key", "api_secret"):
        if getattr(cfg, attr, None) is not None:
            creds.append(getattr(cfg, attr).reveal())
    if platform == "kwai":
        creds.extend(s.reveal() for s in cfg.access_tokens.values())
    req = adapters[platform].build([adapters[platform].prepare(purchase(), full_attribution())])
    seen = req.body.decode() + json.dumps(dict(req.headers))
    for c in creds:
        if c in seen:
            assert c in req.secrets
    if platform in ("meta", "kwai", "rokt", "tiktok"):
        assert req.secrets
    if platform == "rokt":
        auth = req.headers["Authorization"].split(" ", 1)[1]
        assert auth in req.secrets


@pytest.mark.parametrize("platform", [p for p in PLATFORMS if ADAPTER_CLASSES[p].max_batch > 1])
def test_batching_platforms_take_a_full_batch(
    platform: str, fake: FakePlatforms, adapters: dict[str, Adapter]
) -> None:
    adapter = adapters[platform]
    n = min(adapter.max_batch, 150)
    items = [adapter.prepare(purchase(event_id=f"evt-{i}"), full_attribution()) for i in range(n)]
    keys = {adapter.batch_key(i) for i in items}
    assert len(keys) == 1
    resp = send(fake, adapter.build(items))
    outcome = adapter.classify(resp.status_code, dict(resp.headers), resp.content, n)
    assert outcome.kind == "ok", resp.text
    assert len(fake.events(platform)) == n


@pytest.mark.parametrize("platform", PLATFORMS)
def test_adapters_do_no_io(
    platform: str, adapters: dict[str, Adapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def forbidden(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise AssertionError("adapter opened a socket")

    monkeypatch.setattr(socket, "socket", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    adapter = adapters[platform]
    req = adapter.build([adapter.prepare(purchase(), full_attribution())])
    assert req.body
    assert adapter.classify(503, {}, b"", 1).kind == "retry"


def test_every_adapter_over_real_http() -> None:
    """The same round trip through a real uvicorn server on loopback."""
    fake = FakePlatforms()
    with serve_in_thread(fake.app) as base:
        settings = Settings(secret_key=SECRET, outbox="memory://", **fake.settings_overrides(base))
        adapters = build_adapters(settings)
        with httpx.Client(timeout=10) as client:
            for name, adapter in adapters.items():
                req = adapter.build([adapter.prepare(purchase(), full_attribution())])
                resp = client.request(
                    req.method, req.url, headers=dict(req.headers), content=req.body
                )
                outcome = adapter.classify(resp.status_code, resp.headers, resp.content, 1)
                assert outcome.kind == "ok", (name, resp.text)
    assert {r.platform for r in fake.received() if r.accepted} == set(PLATFORMS)
