"""The demo's harder paths, in Chromium against a real server: a boleto paid later through a
webhook, a visitor from two platforms, consent refused, a tampered cookie, a platform down.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import DemoServer, Visitor, screenshot


def _kwai_events(demo: DemoServer, click_id: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in demo.app.fake.events("kwai")
        if e.get("clickid") == click_id and e.get("event_name") == name
    ]


def test_boleto_paid_later_is_attributed_to_the_click(demo: DemoServer, visitor: Visitor) -> None:
    ad = visitor.arrive_from_ad("kwai")
    visitor.browse_and_add_mug()
    order_id = visitor.checkout()
    visitor.page.click("#pay-boleto")
    expect(visitor.page.locator("h1")).to_have_text("Boleto issued")
    expect(visitor.page.locator('#receipts .receipt[data-event="PlaceOrder"]')).to_contain_text(
        f"order-{order_id}"
    )
    # The bank confirms the payment server to server: no cookie, another user agent.
    visitor.page.click("#simulate-bank")
    expect(visitor.page.locator("#boleto-paid")).to_be_visible()
    eid = f"purchase-{order_id}"
    visitor.expect_delivered("kwai", eid)

    assert len(_kwai_events(demo, ad["click_id"], "EVENT_PLACE_ORDER")) == 1
    (purchase,) = _kwai_events(demo, ad["click_id"], "EVENT_PURCHASE")
    assert purchase["pixelId"] == ad["pixel_id"]
    # Meta got it with the visitor's browser (from the snapshot), not the bank's user agent.
    visitor.expect_delivered("meta", eid)
    (meta,) = [e for e in demo.app.fake.events("meta") if e.get("event_id") == eid]
    assert meta["user_data"]["client_user_agent"] == visitor.user_agent

    # The bank retrying its webhook does not send the Purchase twice (same event id).
    answer = httpx.post(f"{demo.base}/webhooks/boleto", json={"order_id": order_id}, timeout=10)
    assert answer.status_code == 200
    assert len(demo.deliveries(platform="kwai", event_id=eid)) == 1


def test_visitor_from_two_platforms_credits_both(demo: DemoServer, visitor: Visitor) -> None:
    kwai = visitor.arrive_from_ad("kwai")
    bigo = visitor.arrive_from_ad("bigo")
    # Both touches live side by side in the session.
    expect(visitor.page.locator('#attribution .touch[data-platform="kwai"]')).to_be_visible()
    visitor.browse_and_add_mug()
    order_id = visitor.checkout()
    visitor.pay_now()
    eid = f"purchase-{order_id}"
    visitor.expect_delivered("kwai", eid)
    visitor.expect_delivered("bigo", eid)
    (k,) = _kwai_events(demo, kwai["click_id"], "EVENT_PURCHASE")
    assert k["pixelId"] == kwai["pixel_id"]
    (b,) = [
        e
        for e in demo.app.fake.events("bigo")
        if e.get("bbg") == bigo["bbg"] and e["event"]["event_id"] == "ec_purchase"
    ]
    # Each platform got its own pixel id: pixel_id belongs to the click id it came with.
    assert b["pixel_id"] == bigo["pixel_id"]


def test_consent_refused_sends_nothing(demo: DemoServer, visitor: Visitor) -> None:
    visitor.page.goto("/")
    visitor.page.click("#consent-refuse")
    expect(visitor.page.locator("#consent-state")).to_have_text("refused")
    session_before = visitor.cookie("_tmw")  # from the first page, before the choice
    visitor.page.goto("/ads")
    visitor.page.click("#ad-kwai")
    visitor.page.wait_for_url("**/?*")
    click_id = parse_qs(urlsplit(visitor.page.url).query)["click_id"][0]
    expect(visitor.page.locator("#attribution")).to_contain_text("tracking refused")
    visitor.browse_and_add_mug()
    order_id = visitor.checkout()
    visitor.pay_now()
    receipt = visitor.page.locator('#receipts .receipt[data-event="Purchase"]')
    expect(receipt).to_be_visible()
    expect(receipt.locator(".pill.ok")).to_have_count(0)
    # Nothing was queued: the outbox is written before track() returns, so this is final.
    assert demo.deliveries(event_id=f"purchase-{order_id}") == []
    assert demo.deliveries(event_id=f"checkout-{order_id}") == []
    # Nothing was captured or stored either: the session cookie never changed.
    assert visitor.cookie("_tmw") == session_before
    assert visitor.cookie("_bge_ci") is None
    assert not _kwai_events(demo, click_id, "EVENT_PURCHASE")


def test_tampered_cookie_is_a_fresh_session(demo: DemoServer, visitor: Visitor) -> None:
    visitor.arrive_from_ad("kwai")
    raw = visitor.cookie("_tmw")
    assert raw
    forged = raw[:-6] + ("AAAAAA" if not raw.endswith("AAAAAA") else "BBBBBB")
    visitor.context.add_cookies([{"name": "_tmw", "value": forged, "url": demo.base}])
    response = visitor.page.goto("/product/mug")
    assert response is not None and response.status == 200
    expect(visitor.page.locator("h1")).to_have_text("Ceramic mug")
    # The forged cookie counts as absent: no touch, and a new session cookie replaces it.
    expect(visitor.page.locator('#attribution .touch[data-platform="kwai"]')).to_have_count(0)
    visitor.page.goto("/")
    assert visitor.cookie("_tmw") not in (raw, forged)


def test_platform_down_during_checkout_delivers_once_back(
    demo: DemoServer, visitor: Visitor
) -> None:
    ad = visitor.arrive_from_ad("tiktok")
    visitor.browse_and_add_mug()
    order_id = visitor.checkout()

    # Let the earlier TikTok events through, then take TikTok down for the payment.
    def all_delivered() -> bool:
        rows = demo.deliveries(platform="tiktok")
        ids = {r["event_id"] for r in rows}
        return f"checkout-{order_id}" in ids and all(r["status"] == "delivered" for r in rows)

    demo.wait_for("the earlier TikTok events to be delivered", all_delivered)
    before = len(demo.app.fake.received("tiktok"))
    demo.app.fake.inject("tiktok", status=503, count=3)
    visitor.pay_now()
    eid = f"purchase-{order_id}"
    inspector = visitor.expect_delivered("tiktok", eid)
    (row,) = demo.deliveries(platform="tiktok", event_id=eid)
    assert row["attempts"] >= 2
    answers = [r.status for r in demo.app.fake.received("tiktok")[before:]]
    assert answers.count(503) == 3 and answers[-1] == 200
    (ev,) = [e for e in demo.app.fake.events("tiktok") if e.get("event_id") == eid]
    assert ev["user"]["ttclid"] == ad["ttclid"]
    screenshot(inspector, "inspector-after-outage.png")
