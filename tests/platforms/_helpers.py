"""Shared builders for the platform tests: settings against the fake, a rich attribution."""

from __future__ import annotations

import time
from typing import Any

from tracking_mw.attribution import Attribution, ClientContext, Touch
from tracking_mw.config import Settings
from tracking_mw.events import Event
from tracking_mw.testing import DEMO_BIGO_PIXEL_ID, DEMO_KWAI_PIXEL_ID, FakePlatforms

FAKE_BASE = "http://fake.test"
SECRET = "s" * 32
BBG = (
    "EigyQTE1MEM1RTRFQzQxODZBMEEyOEZCMzA4QTExQkM5RjhCRUZEMTY0GL76naYGIh05MDM3MDIzNjYwNTE2"
    "MDU1MDRfdGVzdF8wsi9aWQqEjkwMzcwMjM2NjA1MTYwNTUwNDgB"
)
KWAI_CLICK = (
    "CCpgibAfpRkSW9zgDuFHX71q5u_vMxm-vRCIE6enEvnSNeQaSvb3CcxOgXaPwbYpThJBW5n6-"
    "62kmmECY5He3KFgOJB9YErJ9clUk="
)
RTID = "0123456789abcdef0123456789abcdef"
FBCLID = "IwAR2xYz_AbC-123"


def fake_settings(fake: FakePlatforms, **changes: Any) -> Settings:
    """Settings with every platform pointed at ``fake`` (served at FAKE_BASE)."""
    kw: dict[str, Any] = {
        "secret_key": SECRET,
        "outbox": "memory://",
        **fake.settings_overrides(FAKE_BASE),
    }
    kw.update(changes)
    return Settings(**kw)


def full_attribution(now: float | None = None) -> Attribution:
    """A visitor that came through every platform (as after several ad clicks)."""
    t = int(now or time.time())
    landing = "https://shop.example/landing"
    touches = [
        Touch(
            platform="meta",
            click_id=FBCLID,
            first_seen=t - 60,
            last_seen=t - 60,
            extra={
                "fbc": f"fb.1.{(t - 60) * 1000}.{FBCLID}",
                "fbp": f"fb.1.{(t - 60) * 1000}.1098115397",
            },
        ),
        Touch(
            platform="kwai",
            click_id=KWAI_CLICK,
            pixel_id=DEMO_KWAI_PIXEL_ID,
            first_seen=t,
            last_seen=t,
        ),
        Touch(
            platform="bigo",
            click_id=BBG,
            pixel_id=DEMO_BIGO_PIXEL_ID,
            first_seen=t,
            last_seen=t,
            extra={"cookie_id": "ci-123"},
        ),
        Touch(platform="rokt", click_id=RTID, first_seen=t, last_seen=t),
        Touch(
            platform="roibest",
            click_id="4740128923061846",
            first_seen=t,
            last_seen=t,
            landing_url=landing,
        ),
        Touch(
            platform="tiktok",
            click_id="E.C.P.ttclid123",
            first_seen=t,
            last_seen=t,
            extra={"ttp": "2Xttp_cookie"},
        ),
    ]
    att = Attribution(visitor_id="v1")
    for touch in touches:
        att = att.with_touch(touch)
    return att.with_client(
        ClientContext(
            ip="8.8.8.8",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
            url="https://shop.example/checkout/done",
            referrer="https://shop.example/cart",
        )
    )


def purchase(**changes: Any) -> Event:
    """A Purchase in USD with full user data."""
    kw: dict[str, Any] = {
        "name": "Purchase",
        "value": "19.99",
        "currency": "USD",
        "user": {
            "email": " John.Doe@Example.com ",
            "phone": "+1 (650) 555-1212",
            "first_name": "John",
            "last_name": "Doe",
            "city": "Menlo Park",
            "state": "CA",
            "zip": "94025-1234",
            "country": "US",
            "external_id": "user-42",
        },
        "contents": [{"id": "sku-1", "quantity": 2, "price": 9.99}],
        "event_id": "evt-0001",
    }
    kw.update(changes)
    return Event(**kw)
