"""The fake platform servers: validation like the real ones, recording, faults, control."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
import urllib.parse
from typing import Any

import httpx
import pytest

from tracking_mw.testing import (
    DEMO_KWAI_TOKEN,
    DEMO_META_PIXEL_ID,
    DEMO_META_TOKEN,
    DEMO_ROKT_KEY,
    DEMO_ROKT_SECRET,
    DEMO_TIKTOK_PIXEL_ID,
    DEMO_TIKTOK_TOKEN,
    FakePlatforms,
)

from ._servers import Child, free_port, serve_in_thread, wait_http

JSON = {"Content-Type": "application/json"}


def call(fake: FakePlatforms, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=fake.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def kwai_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clickid": "r70jeGg9vCtw3zMcjsKEPQ==",
        "event_name": "EVENT_PURCHASE",
        "pixelId": "245481936753688",
        "access_token": DEMO_KWAI_TOKEN,
        "testFlag": False,
        "trackFlag": True,
        "is_attributed": 1,
        "mmpcode": "PL",
        "pixelSdkVersion": "9.9.9",
        "currency": "BRL",
        "value": 10.28,
        "properties": json.dumps({"content_id": "1"}),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.fixture
def fake() -> FakePlatforms:
    return FakePlatforms()


# ---------------------------------------------------------------- Kwai


@pytest.mark.parametrize(
    ("changes", "result", "fragment"),
    [
        ({}, 1, ""),
        ({"clickid": ...}, 10001, "clickid"),
        ({"pixelId": ..., "pixelid": "245481936753688"}, 10001, "pixelId"),
        ({"pixelSdkVersion": ..., "pixelsdkVersion": "9.9.9"}, 10001, "pixelSdkVersion"),
        ({"mmpcode": ..., "impcode": "PL"}, 10001, "mmpcode"),
        ({"value": "10.28"}, 10002, "value"),
        ({"testFlag": "false"}, 10002, "testFlag"),
        ({"testFlag": True}, 10002, "testFlag"),
        ({"is_attributed": 2}, 10002, "is_attributed"),
        ({"pixelSdkVersion": "1.0"}, 10002, "pixelSdkVersion"),
        ({"properties": {"content_id": "1"}}, 10002, "properties"),
        ({"currency": "EUR"}, 10002, "currency"),
        ({"currency": ...}, 10001, "currency"),
        ({"access_token": "wrong"}, 10006, "token"),
        ({"clickid": "has space"}, 10005, "callback"),
        ({"event_name": "Purchase"}, 10007, "eventName"),
    ],
)
def test_kwai_validation(
    fake: FakePlatforms, changes: dict[str, Any], result: int, fragment: str
) -> None:
    resp = call(fake, "POST", "/kwai/log/common/api", json=kwai_body(**changes))
    assert resp.status_code == 200
    data = resp.json()
    assert data["result"] == result
    assert fragment in data["error_msg"]
    assert len(fake.events("kwai")) == (1 if result == 1 else 0)
    assert fake.received("kwai")[0].accepted is (result == 1)


def test_kwai_needs_json_content_type(fake: FakePlatforms) -> None:
    resp = call(
        fake,
        "POST",
        "/kwai/log/common/api",
        content=json.dumps(kwai_body()),
        headers={"Content-Type": "text/plain"},
    )
    assert resp.json()["result"] == 10002


def test_kwai_tokens_per_pixel() -> None:
    fake = FakePlatforms(kwai_tokens={"p1": "t1", "p2": "t2"})
    ok = call(fake, "POST", "/kwai/log/common/api", json=kwai_body(pixelId="p1", access_token="t1"))
    wrong = call(
        fake, "POST", "/kwai/log/common/api", json=kwai_body(pixelId="p2", access_token="t1")
    )
    assert ok.json()["result"] == 1
    assert wrong.json()["result"] == 10006


# ---------------------------------------------------------------- Bigo


def bigo_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "bbg": "EigyQTE1MEM1RTRFQzQxODZBMEEyOEZC",
        "pixel_id": "903702366051605504",
        "timestamp_ms": 1691069085365,
        "event": {"event_id": "ec_register"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    ("changes", "code", "msg"),
    [
        ({}, 1, "success"),
        ({"pixel_id": ...}, -4, "need pixel_id"),
        ({"bbg": "short"}, -4, "invalid bbg"),
        ({"event": {"event_id": "Purchase"}}, -4, "invalid event_id"),
        ({"event": {"event_id": "ec_purchase", "monetary": "$10"}}, -4, "invalid monetary"),
        ({"event": {"event_id": "ec_purchase", "monetary": 10.0}}, -4, "invalid monetary"),
        (
            {"event": {"event_id": "ec_purchase", "orig_monetary": "1,000.00"}},
            -4,
            "invalid orig_monetary",
        ),
        ({"timestamp_ms": 1691069085}, -4, "invalid timestamp_ms"),
    ],
)
def test_bigo_validation(fake: FakePlatforms, changes: dict[str, Any], code: int, msg: str) -> None:
    resp = call(fake, "POST", "/bigo/bigoad/trackingevent", json=bigo_body(**changes))
    data = resp.json()
    assert data["code"] == code and data["msg"] == msg
    assert isinstance(data["logid"], int) and isinstance(data["timestamp"], int)


def test_bigo_known_pixels_and_content_type() -> None:
    fake = FakePlatforms(bigo_pixel_ids={"1"})
    assert (
        call(fake, "POST", "/bigo/bigoad/trackingevent", json=bigo_body()).json()["msg"]
        == "notfound pixel"
    )
    resp = call(
        fake, "POST", "/bigo/bigoad/trackingevent", content=json.dumps(bigo_body(pixel_id="1"))
    )
    assert resp.json()["code"] == -4  # no Content-Type: application/json


# ---------------------------------------------------------------- Rokt


def rokt_batch(**changes: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "environment": "development",
        "user_identities": {"email": "john.doe@example.com"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "conversion",
                    "custom_attributes": {"conversiontype": "purchase"},
                },
            }
        ],
    }
    batch.update(changes)
    return batch


def basic(key: str = DEMO_ROKT_KEY, secret: str = DEMO_ROKT_SECRET) -> dict[str, str]:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", **JSON}


def test_rokt_auth_and_answers(fake: FakePlatforms) -> None:
    body = json.dumps(rokt_batch())
    assert call(fake, "POST", "/rokt/v2/events", content=body, headers=JSON).status_code == 401
    assert (
        call(
            fake,
            "POST",
            "/rokt/v2/events",
            content=body,
            headers={"Authorization": "key-secret", **JSON},
        ).status_code
        == 403
    )
    assert (
        call(fake, "POST", "/rokt/v2/events", content=body, headers=basic(secret="x")).status_code
        == 403
    )
    ok = call(fake, "POST", "/rokt/v2/events", content=body, headers=basic())
    assert ok.status_code == 202 and ok.content == b""
    assert fake.events("rokt") == [rokt_batch()]


@pytest.mark.parametrize(
    "batch",
    [
        rokt_batch(environment="staging"),
        rokt_batch(user_identities={"customerid": "1"}),
        rokt_batch(events=[]),
        rokt_batch(events=[{"event_type": "commerce_event", "data": {"event_name": "conversion"}}]),
        rokt_batch(events=[{"event_type": "custom_event", "data": {"event_name": "purchase"}}]),
        rokt_batch(user_attributes={f"a{i}": "x" for i in range(101)}),
        rokt_batch(
            events=[
                {
                    "event_type": "custom_event",
                    "data": {"event_name": "conversion", "custom_attributes": {"x": "y" * 4097}},
                }
            ]
        ),
    ],
)
def test_rokt_rejects_bad_batches(fake: FakePlatforms, batch: dict[str, Any]) -> None:
    resp = call(fake, "POST", "/rokt/v2/events", content=json.dumps(batch), headers=basic())
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["message"]


def test_rokt_bulk(fake: FakePlatforms) -> None:
    ok = call(
        fake,
        "POST",
        "/rokt/v2/bulkevents",
        content=json.dumps([rokt_batch()] * 100),
        headers=basic(),
    )
    assert ok.status_code == 202
    assert len(fake.events("rokt")) == 100
    too_many = call(
        fake,
        "POST",
        "/rokt/v2/bulkevents",
        content=json.dumps([rokt_batch()] * 101),
        headers=basic(),
    )
    assert too_many.status_code == 400
    single_as_bulk = call(
        fake, "POST", "/rokt/v2/bulkevents", content=json.dumps(rokt_batch()), headers=basic()
    )
    assert single_as_bulk.status_code == 400
    big = rokt_batch(user_attributes={"note": "x" * 4000})
    too_big = call(
        fake, "POST", "/rokt/v2/bulkevents", content=json.dumps([big] * 70), headers=basic()
    )
    assert too_big.status_code == 400 and "256" in too_big.json()["errors"][0]["message"]


# ---------------------------------------------------------------- ROIBest


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {
                "link_id": "4740128923061846",
                "event_name": "Purchase",
                "extra": {"currency": "USD", "value": 19.99},
            },
            0,
        ),
        ({"link_id": "4740128923061846", "event_name": "Lead"}, 0),
        ({"event_name": "Lead"}, 1001),
        ({"link_id": "1"}, 1002),
        ({"link_id": "1", "event_name": "Lead", "extra": [1]}, 1003),
        ({"link_id": "1", "event_name": "Purchase", "extra": {"currency": "USD"}}, 1004),
    ],
)
def test_roibest_validation(fake: FakePlatforms, body: dict[str, Any], code: int) -> None:
    data = call(fake, "POST", "/roibest/report/fb/event", json=body).json()
    assert data["code"] == code
    assert set(data) == {"code", "msg", "data"}


# ---------------------------------------------------------------- Meta


def meta_event(**changes: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 10,
        "event_id": "e1",
        "action_source": "website",
        "event_source_url": "https://s.example/p",
        "user_data": {
            "client_user_agent": "UA",
            "client_ip_address": "203.0.113.1",
            "fbp": "fb.1.1558571054389.1098115397",
        },
        "custom_data": {"value": 10.5, "currency": "USD"},
    }
    ev.update(changes)
    return ev


def meta_post(
    fake: FakePlatforms,
    events: list[Any],
    *,
    token: str = DEMO_META_TOKEN,
    pixel: str = DEMO_META_PIXEL_ID,
    **extra: str,
) -> httpx.Response:
    form = {"data": json.dumps(events), "access_token": token, **extra}
    return call(
        fake,
        "POST",
        f"/meta/v25.0/{pixel}/events",
        content=urllib.parse.urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_meta_accepts_and_counts(fake: FakePlatforms) -> None:
    resp = meta_post(fake, [meta_event(event_id=str(i)) for i in range(3)], test_event_code="TEST1")
    data = resp.json()
    assert resp.status_code == 200
    assert data["events_received"] == 3 and data["messages"] == [] and data["fbtrace_id"]
    assert [e["event_id"] for e in fake.events("meta")] == ["0", "1", "2"]
    assert fake.received("meta")[0].json["test_event_code"] == "TEST1"


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        (meta_event(event_time=int(time.time()) - 8 * 86400), "7 days"),
        (meta_event(event_time=int(time.time() * 1000)), "future"),
        (meta_event(event_time="1"), "event_time"),
        (meta_event(action_source="web"), "action_source"),
        (meta_event(event_source_url=None), "event_source_url"),
        (meta_event(user_data={"client_ip_address": "1.2.3.4"}), "client_user_agent"),
        (meta_event(user_data={"client_user_agent": "UA"}), "customer information"),
        (meta_event(user_data={"client_user_agent": "UA", "em": "john@example.com"}), "SHA-256"),
        (meta_event(user_data={"client_user_agent": "UA", "client_ip_address": "nope"}), "IP"),
        (meta_event(user_data={"client_user_agent": "UA", "fbc": "IwAR123"}), "fbc"),
        (meta_event(custom_data={"value": "10", "currency": "USD"}), "value"),
        (meta_event(custom_data={"currency": "USD"}), "Purchase"),
    ],
)
def test_meta_rejects_the_whole_request(
    fake: FakePlatforms, event: dict[str, Any], fragment: str
) -> None:
    resp = meta_post(fake, [meta_event(), event])
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == 100 and err["type"] and err["fbtrace_id"]
    assert fragment in err["message"]
    assert fake.events("meta") == []


def test_meta_credentials_and_limits(fake: FakePlatforms) -> None:
    assert meta_post(fake, [meta_event()], token="bad").json()["error"]["code"] == 190
    assert meta_post(fake, [meta_event()], token="").json()["error"]["code"] == 104
    assert meta_post(fake, [meta_event()], pixel="999").json()["error"]["code"] == 100
    assert meta_post(fake, []).json()["error"]["code"] == 100
    big = meta_post(fake, [meta_event(event_id=str(i)) for i in range(1001)])
    assert big.status_code == 400
    resp = call(
        fake,
        "POST",
        f"/meta/v25.0/{DEMO_META_PIXEL_ID}/events",
        content=b"x",
        headers={"Content-Type": "text/plain"},
    )
    assert resp.status_code == 400


def test_meta_json_body_also_accepted(fake: FakePlatforms) -> None:
    resp = call(
        fake,
        "POST",
        f"/meta/v25.0/{DEMO_META_PIXEL_ID}/events",
        json={"data": [meta_event()], "access_token": DEMO_META_TOKEN},
    )
    assert resp.json()["events_received"] == 1


# ---------------------------------------------------------------- TikTok


def tiktok_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_source": "web",
        "event_source_id": DEMO_TIKTOK_PIXEL_ID,
        "data": [
            {
                "event": "CompletePayment",
                "event_time": int(time.time()),
                "event_id": "1",
                "user": {"ttclid": "E.C.P.x"},
            }
        ],
    }
    body.update(changes)
    return body


def test_tiktok(fake: FakePlatforms) -> None:
    hdr = {"Access-Token": DEMO_TIKTOK_TOKEN}
    url = "/tiktok/open_api/v1.3/event/track/"
    assert call(fake, "POST", url, json=tiktok_body(), headers=hdr).json()["code"] == 0
    assert (
        call(fake, "POST", url, json=tiktok_body(), headers={"Access-Token": "x"}).json()["code"]
        == 40105
    )
    assert (
        call(fake, "POST", url, json=tiktok_body(event_source="app"), headers=hdr).json()["code"]
        == 40002
    )
    bad_user = tiktok_body(
        data=[{"event": "X", "event_time": int(time.time()), "user": {"email": "a@b.c"}}]
    )
    assert call(fake, "POST", url, json=bad_user, headers=hdr).json()["code"] == 40002
    assert len(fake.events("tiktok")) == 1


# ---------------------------------------------------------------- faults and control


def test_inject_status_body_retry_after_for_n_requests(fake: FakePlatforms) -> None:
    fake.inject("roibest", status=503, retry_after=7, count=2)
    fake.inject("roibest", status=200, body={"code": 5, "msg": "link disabled"})
    body = {"link_id": "1", "event_name": "Lead"}
    first = call(fake, "POST", "/roibest/report/fb/event", json=body)
    second = call(fake, "POST", "/roibest/report/fb/event", json=body)
    third = call(fake, "POST", "/roibest/report/fb/event", json=body)
    fourth = call(fake, "POST", "/roibest/report/fb/event", json=body)
    assert (first.status_code, first.headers["retry-after"]) == (503, "7")
    assert second.status_code == 503
    assert third.json() == {"code": 5, "msg": "link disabled"}
    assert fourth.json()["code"] == 0
    assert [r.status for r in fake.received("roibest")] == [503, 503, 200, 200]
    assert len(fake.events("roibest")) == 1
    # Other platforms are not affected.
    assert call(fake, "POST", "/bigo/bigoad/trackingevent", json=bigo_body()).json()["code"] == 1


def test_inject_delay_only_then_validates(fake: FakePlatforms) -> None:
    fake.inject("bigo", status=None, delay=0.05)
    started = time.monotonic()
    resp = call(fake, "POST", "/bigo/bigoad/trackingevent", json=bigo_body())
    assert time.monotonic() - started >= 0.05
    assert resp.json()["code"] == 1


def test_inject_rejects_nonsense(fake: FakePlatforms) -> None:
    with pytest.raises(ValueError):
        fake.inject("myspace")
    with pytest.raises(ValueError):
        fake.inject("meta", count=0)


def test_http_control_routes(fake: FakePlatforms) -> None:
    assert call(
        fake, "POST", "/_fake/faults", json={"platform": "kwai", "status": 500, "count": 1}
    ).json() == {"ok": True}
    assert call(fake, "POST", "/_fake/faults", json={"platform": "nope"}).status_code == 400
    assert call(fake, "POST", "/_fake/faults", content=b"[]").status_code == 400
    assert call(fake, "POST", "/kwai/log/common/api", json=kwai_body()).status_code == 500
    assert call(fake, "POST", "/kwai/log/common/api", json=kwai_body()).json()["result"] == 1
    received = call(fake, "GET", "/_fake/received", params={"platform": "kwai"}).json()
    assert [r["status"] for r in received] == [500, 200]
    assert received[1]["json"]["clickid"] == "r70jeGg9vCtw3zMcjsKEPQ=="
    events = call(fake, "GET", "/_fake/events", params={"platform": "kwai"}).json()
    assert len(events) == 1
    assert call(fake, "GET", "/_fake/events", params={"platform": "x"}).status_code == 400
    assert call(fake, "POST", "/_fake/reset").json() == {"ok": True}
    assert fake.received() == [] and fake.events("kwai") == []


def test_settings_overrides_point_at_the_fake(fake: FakePlatforms) -> None:
    o = fake.settings_overrides("http://127.0.0.1:9/")
    assert o["meta"].base_url == "http://127.0.0.1:9/meta"
    assert o["meta"].access_token.reveal() == DEMO_META_TOKEN
    assert o["kwai"].token_for("any") is not None
    assert o["rokt"].base_url == "http://127.0.0.1:9/rokt"
    assert o["bigo"].base_url.endswith("/bigo") and o["roibest"].base_url.endswith("/roibest")
    assert o["tiktok"].base_url.endswith("/tiktok")


def test_concurrent_requests_on_a_real_server(fake: FakePlatforms) -> None:
    with serve_in_thread(fake.app) as base:
        fake.inject("bigo", status=503, count=5)

        def worker() -> None:
            with httpx.Client(base_url=base) as client:
                for _ in range(10):
                    client.post("/bigo/bigoad/trackingevent", json=bigo_body())

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    statuses = [r.status for r in fake.received("bigo")]
    assert len(statuses) == 40
    assert statuses.count(503) == 5
    assert len(fake.events("bigo")) == 35
    assert len(fake.wait_for_events("bigo", 35, timeout=1)) == 35
    with pytest.raises(TimeoutError):
        fake.wait_for_events("bigo", 36, timeout=0.05)


def test_await_events(fake: FakePlatforms) -> None:
    async def go() -> int:
        transport = httpx.ASGITransport(app=fake.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
            await client.post("/bigo/bigoad/trackingevent", json=bigo_body())
        return len(await fake.await_events("bigo", 1, timeout=1))

    assert asyncio.run(go()) == 1


def test_standalone_command() -> None:
    port = free_port()
    child = Child([sys.executable, "-m", "tracking_mw.testing", "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/_fake/received", proc=child.proc)
        resp = httpx.post(f"{base}/bigo/bigoad/trackingevent", json=bigo_body(), timeout=5)
        assert resp.json()["code"] == 1
        assert (
            len(httpx.get(f"{base}/_fake/events", params={"platform": "bigo"}, timeout=5).json())
            == 1
        )
    finally:
        assert child.stop() in (0, -15)


# -- the fast form parser of the fake Meta ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "a=1&b=2&a=3",
        "data=%5B%7B%22k%22%3A%22v%20w%2Bx%22%7D%5D&access_token=EAA%2B%2F%3D",
        "x=%2541&y=%25&z=%%41",
        "bad=%G1%4&ok=%41",
        "plus=a+b%2Bc&blank=&noeq&=&&",
        "utf=%C3%A3%E6%9D%B1&raw=ação&bs=a\\x41\\\\",
        "broken=%C3%28",
    ],
)
def test_parse_form_matches_parse_qs(body: str) -> None:
    from tracking_mw.testing import _parse_form

    want = {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
    assert _parse_form(body.encode("utf-8")) == want


def test_parse_form_random_bodies() -> None:
    import random

    from tracking_mw.testing import _parse_form

    rng = random.Random(3)
    alphabet = "ab%+=&2F5C41gGx\\ ;é東\x00"
    for _ in range(3000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        want = {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        assert _parse_form(body.encode("utf-8")) == want, body
