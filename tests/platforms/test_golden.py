"""Golden payloads: each platform's request for inputs taken from its own document.

``golden/<name>.json`` holds the exact body this project sends; each test also checks
that the document's own example is reproduced field for field. Regenerate the files with
``TRACKING_MW_REGEN_GOLDEN=1 pytest tests/platforms/test_golden.py`` after a deliberate change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from tracking_mw.attribution import Attribution, ClientContext, Touch
from tracking_mw.config import KwaiConfig, RoktConfig, Secret, Settings
from tracking_mw.events import Event
from tracking_mw.platforms import Adapter, PlatformRequest, build_adapters
from tracking_mw.testing import FakePlatforms

from ._helpers import BBG, FAKE_BASE, SECRET

GOLDEN = Path(__file__).parent / "golden"
DOC_TIME = 1778607673  # the event_time of Meta's own example


def check_golden(name: str, payload: Any) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if os.environ.get("TRACKING_MW_REGEN_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8")) == payload, f"{name} payload changed"


def subset(expected: Any, actual: Any, where: str = "") -> None:
    """Every field of ``expected`` is in ``actual`` with an equal value."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing"
            subset(v, actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            subset(e, a, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> float:
    now = DOC_TIME + 60.0
    monkeypatch.setattr(time, "time", lambda: now)
    return now


def adapters_for(fake: FakePlatforms, **changes: Any) -> dict[str, Adapter]:
    kw: dict[str, Any] = {"secret_key": SECRET, **fake.settings_overrides(FAKE_BASE)}
    kw.update(changes)
    return build_adapters(Settings(**kw))


def accepted(fake: FakePlatforms, adapter: Adapter, req: PlatformRequest, count: int = 1) -> None:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as client:
            return await client.request(
                req.method, req.url, headers=dict(req.headers), content=req.body
            )

    resp = asyncio.run(go())
    assert (
        adapter.classify(resp.status_code, dict(resp.headers), resp.content, count).kind == "ok"
    ), resp.text


def test_bigo_post_example(frozen_time: float) -> None:
    """Bigo's "HTTP POST example", byte for byte in meaning."""
    doc = {
        "bbg": BBG,
        "pixel_id": "903702366051605504",
        "timestamp_ms": 1691069085365,
        "event": {"event_id": "ec_register"},
    }
    fake = FakePlatforms()
    bigo = adapters_for(fake)["bigo"]
    att = Attribution(visitor_id="v").with_touch(
        Touch(platform="bigo", click_id=doc["bbg"], pixel_id=doc["pixel_id"])  # type: ignore[arg-type]
    )
    event = Event(name="CompleteRegistration", event_time=1691069085.365)
    req = bigo.build([bigo.prepare(event, att)])
    assert req.headers["Content-Type"] == "application/json"
    assert req.url == f"{FAKE_BASE}/bigo/bigoad/trackingevent"
    assert json.loads(req.body) == doc
    accepted(fake, bigo, req)


def test_bigo_money_and_client(frozen_time: float) -> None:
    fake = FakePlatforms()
    bigo = adapters_for(fake)["bigo"]
    att = (
        Attribution(visitor_id="v")
        .with_touch(
            Touch(platform="bigo", click_id="EigyQTE1MEM1RTRF", extra={"cookie_id": "ci-1"})
        )
        .with_client(
            ClientContext(
                ip="8.8.4.4",
                user_agent="UA/1",
                url="https://s.example/p",
                referrer="https://r.example/",
            )
        )
    )
    usd = bigo.prepare(
        Event(
            name="Purchase",
            value="10",
            currency="USD",
            event_time=DOC_TIME,
            user={"external_id": "u-1", "email": "A@B.co"},
        ),
        att,
    )
    brl = bigo.prepare(
        Event(name="Purchase", value="52.5", currency="BRL", event_time=DOC_TIME), att
    )
    assert usd["event"] == {
        "event_id": "ec_purchase",
        "monetary": "10.00",
        "currency": "USD",
        "orig_monetary": "10.00",
    }
    assert brl["event"] == {"event_id": "ec_purchase", "currency": "BRL", "orig_monetary": "52.50"}
    assert usd["pixel_id"] == "903702366051605504"  # BigoConfig.pixel_id fallback
    check_golden("bigo_purchase_usd", usd)
    accepted(fake, bigo, bigo.build([usd]))
    accepted(fake, bigo, bigo.build([brl]))


def test_rokt_example_payload(frozen_time: float) -> None:
    """Rokt's example payload, with a real SHA-256 in ``other`` and Basic auth."""
    doc = {
        "environment": "development",
        "user_identities": {
            "email": "john.doe@example.com",
            "other": hashlib.sha256(b"john.doe@example.com").hexdigest(),
        },
        "user_attributes": {
            "firstname": "John",
            "lastname": "Doe",
            "mobile": "123-456-7890",
            "ipaddress": "172.3.51.182",
        },
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "conversion",
                    "custom_attributes": {
                        "amount": 100.00,
                        "currency": "USD",
                        "quantity": 1,
                        "conversiontype": "purchase",
                        "productname": "Maroon 5 t-shirt, Warriors vs. Raptors",
                        "sku": "230847",
                        "paymenttype": "VISA",
                        "margin": 10,
                        "transactionid": "ABC789",
                        "confirmationref": "XYZ123",
                    },
                },
            }
        ],
    }
    fake = FakePlatforms()
    rokt_cfg = RoktConfig(
        api_key=Secret("example-api-key"),
        api_secret=Secret("example-api-secret"),
        environment="development",
        base_url=f"{FAKE_BASE}/rokt",
    )
    fake = FakePlatforms(rokt_key="example-api-key", rokt_secret="example-api-secret")
    rokt = adapters_for(fake, rokt=rokt_cfg, phone_region="US")["rokt"]
    att = Attribution(visitor_id="v").with_client(ClientContext(ip="172.3.51.182"))
    event = Event(
        name="Purchase",
        value="100.00",
        currency="USD",
        event_id="XYZ123",
        event_time=DOC_TIME,
        user={
            "email": " John.Doe@example.com",
            "first_name": "John",
            "last_name": "Doe",
            "phone": "123-456-7890",
        },
        contents=[{"id": "230847", "quantity": 1}],
        properties={
            "productname": "Maroon 5 t-shirt, Warriors vs. Raptors",
            "paymenttype": "VISA",
            "margin": 10,
            "transactionid": "ABC789",
        },
    )
    req = rokt.build([rokt.prepare(event, att)])
    assert req.url == f"{FAKE_BASE}/rokt/v2/events"
    # The document's own Base64 of "example-api-key:example-api-secret".
    assert req.headers["Authorization"] == "Basic ZXhhbXBsZS1hcGkta2V5OmV4YW1wbGUtYXBpLXNlY3JldA=="
    body = json.loads(req.body)
    subset(doc, body)
    assert body["events"][0]["data"]["source_message_id"] == "XYZ123"
    assert body["events"][0]["data"]["custom_event_type"] == "transaction"
    check_golden("rokt_example", body)
    accepted(fake, rokt, req)


def test_rokt_rtid_and_bulk(frozen_time: float) -> None:
    fake = FakePlatforms()
    rokt = adapters_for(fake)["rokt"]
    rtid = "a" * 32
    att = Attribution(visitor_id="v").with_touch(Touch(platform="rokt", click_id=rtid))
    items = [
        rokt.prepare(
            Event(name="Lead", event_id=f"e{i}", event_time=DOC_TIME, user={"email": f"u{i}@x.io"}),
            att,
        )
        for i in range(3)
    ]
    assert items[0]["user_identities"]["other2"] == rtid
    assert items[0]["integration_attributes"] == {"1277": {"passbackconversiontrackingid": rtid}}
    assert items[0]["events"][0]["data"]["custom_attributes"]["conversiontype"] == "lead"
    req = rokt.build(items)
    assert req.url == f"{FAKE_BASE}/rokt/v2/bulkevents"
    body = json.loads(req.body)
    assert isinstance(body, list) and len(body) == 3
    assert all(b["environment"] == "production" for b in body)
    accepted(fake, rokt, req, 3)
    assert len(fake.events("rokt")) == 3


def test_roibest_example(frozen_time: float) -> None:
    doc = {
        "link_id": "4740128923061846",
        "event_name": "Purchase",
        "extra": {"currency": "USD", "value": 19.99, "is_upgrade_version": 1},
    }
    fake = FakePlatforms()
    rb = adapters_for(fake)["roibest"]
    att = Attribution(visitor_id="v").with_touch(
        Touch(platform="roibest", click_id="4740128923061846")
    )
    event = Event(
        name="Purchase",
        value="19.99",
        currency="USD",
        event_time=DOC_TIME,
        properties={"is_upgrade_version": 1},
    )
    req = rb.build([rb.prepare(event, att)])
    assert req.url == f"{FAKE_BASE}/roibest/report/fb/event"
    assert json.loads(req.body) == doc
    accepted(fake, rb, req)


def test_roibest_mgskyads_names(frozen_time: float) -> None:
    """ROIBest's MgskyAds example: Purchase becomes EVENT_PURCHASE on a Kwai-vocabulary link."""
    fake = FakePlatforms()
    rb = adapters_for(fake)["roibest"]
    att = (
        Attribution(visitor_id="v")
        .with_touch(Touch(platform="roibest", click_id="4740128923061846", last_seen=5))
        .with_touch(Touch(platform="kwai", click_id="k", last_seen=5))
    )
    item = rb.prepare(
        Event(name="Purchase", value="19.99", currency="USD", event_time=DOC_TIME), att
    )
    assert item == {
        "link_id": "4740128923061846",
        "event_name": "EVENT_PURCHASE",
        "extra": {"currency": "USD", "value": 19.99},
    }


def test_kwai_post_with_parameter_table_spellings(frozen_time: float) -> None:
    """Kwai's POST example, with the parameter table's names and types."""
    token = "YUr9IVpjhC2iDtwF/Pws2A=="
    pixel = "Zp6x5j5sUuaSdnCgsJl7hA"
    fake = FakePlatforms(kwai_tokens={pixel: token})
    kwai_cfg = KwaiConfig(
        access_tokens={pixel: Secret(token)}, test=True, base_url=f"{FAKE_BASE}/kwai"
    )
    kwai = adapters_for(fake, kwai=kwai_cfg)["kwai"]
    att = Attribution(visitor_id="v").with_touch(
        Touch(platform="kwai", click_id="r70jeGg9vCtw3zMcjsKEPQ==", pixel_id=pixel)
    )
    event = Event(
        name="InitiateCheckout",
        value="10.28",
        currency="BRL",
        event_time=DOC_TIME,
        contents=[{"id": "18711551"}],
        properties={"content_name": "Pacote de Presente de Eletrodomésticos"},
    )
    req = kwai.build([kwai.prepare(event, att)])
    body = json.loads(req.body)
    doc_fixed = {
        "access_token": token,
        "clickid": "r70jeGg9vCtw3zMcjsKEPQ==",
        "event_name": "EVENT_INITIATED_CHECKOUT",
        "is_attributed": 1,
        "mmpcode": "PL",
        "pixelId": pixel,
        "pixelSdkVersion": "9.9.9",
        "currency": "BRL",
        "value": 10.28,
        "testFlag": False,
        "trackFlag": True,
    }
    assert {k: v for k, v in body.items() if k != "properties"} == doc_fixed
    for wrong in ("pixelid", "impcode", "pixelsdkVersion"):
        assert wrong not in body
    props = json.loads(body["properties"])
    assert props["content_id"] == "18711551"
    assert props["content_type"] == "product"
    assert props["content_name"] == "Pacote de Presente de Eletrodomésticos"
    assert props["event_timestamp"] == DOC_TIME * 1000
    assert req.secrets == (token,)
    check_golden("kwai_example", body)
    accepted(fake, kwai, req)


def test_kwai_production_flags(frozen_time: float) -> None:
    fake = FakePlatforms()
    kwai = adapters_for(fake)["kwai"]
    att = Attribution(visitor_id="v").with_touch(
        Touch(platform="kwai", click_id="abc%2Fdef", pixel_id="p1")
    )
    body = json.loads(kwai.build([kwai.prepare(Event(name="Lead", event_time=DOC_TIME), att)]).body)
    assert body["trackFlag"] is False and body["testFlag"] is False
    assert body["clickid"] == "abc%2Fdef"  # byte-identical to what was captured
    assert "value" not in body and "currency" not in body


def test_meta_example(frozen_time: float) -> None:
    """Meta's example event: fbc/fbp untouched and an already hashed ``em`` not hashed again."""
    fbc = "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890"
    fbp = "fb.1.1558571054389.1098115397"
    em = "309a0a5c3e211326ae75ca18196d301a9bdbd1a882a4d2569511033da23f0abd"
    doc_event = {
        "event_name": "PageView",
        "event_time": DOC_TIME,
        "user_data": {"fbc": fbc, "fbp": fbp, "em": em},
    }
    fake = FakePlatforms(clock=lambda: DOC_TIME + 60.0)
    meta = adapters_for(fake)["meta"]
    att = (
        Attribution(visitor_id="v")
        .with_touch(
            Touch(
                platform="meta",
                click_id="AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
                extra={"fbc": fbc, "fbp": fbp},
            )
        )
        .with_client(
            ClientContext(
                ip="168.212.226.204",
                user_agent="Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                url="http://jaspers-market.com/product/123",
            )
        )
    )
    event = Event(name="PageView", event_time=DOC_TIME, event_id="event.id.123", user={"email": em})
    item = meta.prepare(event, att)
    req = meta.build([item])
    assert req.url == f"{FAKE_BASE}/meta/v25.0/{fake.meta_pixel_id}/events"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = urllib.parse.parse_qs(req.body.decode())
    assert form["access_token"] == [fake.meta_token]
    assert "test_event_code" not in form
    data = json.loads(form["data"][0])
    subset([doc_event], data)
    assert data[0]["action_source"] == "website"
    assert data[0]["user_data"]["client_ip_address"] == "168.212.226.204"
    check_golden("meta_example", data)
    accepted(fake, meta, req)


def test_meta_purchase_full_user_data(frozen_time: float) -> None:
    fake = FakePlatforms(clock=lambda: DOC_TIME + 60.0)
    meta = adapters_for(
        fake,
        meta=fake.settings_overrides(FAKE_BASE)["meta"].__class__(
            pixel_id=fake.meta_pixel_id,
            access_token=Secret(fake.meta_token),
            test_event_code="TEST123",
            base_url=f"{FAKE_BASE}/meta",
        ),
        phone_region="US",
    )["meta"]
    att = (
        Attribution(visitor_id="v")
        .with_touch(Touch(platform="meta", click_id="IwAR-x_Y", first_seen=DOC_TIME - 100))
        .with_client(ClientContext(ip="2001:db8::1", user_agent="UA/2", url="https://s.example/p"))
    )
    event = Event(
        name="Purchase",
        value="49.9",
        currency="BRL",
        event_time=DOC_TIME,
        event_id="o-1",
        user={
            "email": "John_Smith@gmail.com",
            "phone": "(650)555-1212",
            "country": "US",
            "city": "Menlo Park",
            "zip": "94025-1234",
            "external_id": "u-1",
            "gender": "Male",
            "date_of_birth": "1997-02-16",
            "first_name": "Mary",
            "last_name": "Smith",
            "state": "CA",
        },
        contents=[{"id": "sku-1", "quantity": 2, "price": 24.95}],
    )
    req = meta.build([meta.prepare(event, att)])
    form = urllib.parse.parse_qs(req.body.decode())
    assert form["test_event_code"] == ["TEST123"]
    data = json.loads(form["data"][0])
    ud = data[0]["user_data"]
    assert ud["em"] == "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    assert ud["ph"] == "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert ud["fbc"] == f"fb.1.{(DOC_TIME - 100) * 1000}.IwAR-x_Y"  # built from fbclid
    assert data[0]["custom_data"]["value"] == 49.9
    assert data[0]["custom_data"]["contents"] == [
        {"id": "sku-1", "quantity": 2, "item_price": 24.95}
    ]
    check_golden("meta_purchase", data)
    accepted(fake, meta, req)


def test_tiktok_payload(frozen_time: float) -> None:
    fake = FakePlatforms(clock=lambda: DOC_TIME + 60.0)
    tt = adapters_for(fake)["tiktok"]
    att = (
        Attribution(visitor_id="v")
        .with_touch(Touch(platform="tiktok", click_id="E.C.P.abc", extra={"ttp": "ttp-1"}))
        .with_client(
            ClientContext(
                ip="203.0.113.1",
                user_agent="UA/3",
                url="https://s.example/p",
                referrer="https://r.example/",
            )
        )
    )
    event = Event(
        name="Purchase",
        value="5",
        currency="USD",
        event_time=DOC_TIME,
        event_id="t-1",
        user={"email": "John_Smith@gmail.com", "phone": "+1 (650) 555-1212", "external_id": "u-1"},
    )
    req = tt.build([tt.prepare(event, att)])
    assert req.headers["Access-Token"] == fake.tiktok_token
    body = json.loads(req.body)
    assert body["event_source"] == "web" and body["event_source_id"] == fake.tiktok_pixel_id
    user = body["data"][0]["user"]
    assert user["phone"] == hashlib.sha256(b"+16505551212").hexdigest()
    assert user["ttclid"] == "E.C.P.abc" and user["ttp"] == "ttp-1"
    check_golden("tiktok_purchase", body)
    accepted(fake, tt, req)
