"""When each platform applies, and the reason it gives when it does not."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from tracking_mw._errors import ConfigurationError, InvalidEvent
from tracking_mw.attribution import Attribution, ClientContext, Touch
from tracking_mw.config import KwaiConfig, RoibestConfig, Secret
from tracking_mw.events import Event
from tracking_mw.platforms import (
    Adapter,
    BigoAdapter,
    KwaiAdapter,
    MetaAdapter,
    RoibestAdapter,
    RoktAdapter,
    Skip,
    TiktokAdapter,
    build_adapters,
)
from tracking_mw.testing import FakePlatforms

from ._helpers import FAKE_BASE, fake_settings, full_attribution, purchase


@pytest.fixture
def fake() -> FakePlatforms:
    return FakePlatforms()


@pytest.fixture
def adapters(fake: FakePlatforms) -> dict[str, Adapter]:
    return build_adapters(fake_settings(fake))


def skip_reason(adapter: Adapter, event: Event, att: Attribution) -> str:
    with pytest.raises(Skip) as info:
        adapter.prepare(event, att)
    return info.value.reason


def without(att: Attribution, platform: str) -> Attribution:
    touches = {p: t for p, t in att.touches.items() if p != platform}
    return dataclasses.replace(att, touches=touches)


@pytest.mark.parametrize(
    ("platform", "reason"),
    [
        ("kwai", "no Kwai click id"),
        ("bigo", "no Bigo bbg"),
        ("roibest", "no ROIBest link id"),
        ("tiktok", "no TikTok ttclid or _ttp"),
    ],
)
def test_click_id_platforms_need_their_touch(
    adapters: dict[str, Adapter], platform: str, reason: str
) -> None:
    att = without(full_attribution(), platform)
    assert skip_reason(adapters[platform], purchase(), att) == reason


def test_meta_and_rokt_do_not_need_a_click(adapters: dict[str, Adapter]) -> None:
    att = without(without(full_attribution(), "meta"), "rokt")
    meta_item = adapters["meta"].prepare(purchase(), att)
    assert "fbc" not in meta_item["event"]["user_data"]
    rokt_item = adapters["rokt"].prepare(purchase(), att)
    assert "other2" not in rokt_item["user_identities"]
    assert "integration_attributes" not in rokt_item


@pytest.mark.parametrize(
    ("platform", "name"),
    [("bigo", "AddPaymentInfo"), ("bigo", "Search"), ("rokt", "PageView"), ("rokt", "AddToCart")],
)
def test_not_sent_cells_skip_with_reason(
    adapters: dict[str, Adapter], platform: str, name: str
) -> None:
    reason = skip_reason(
        adapters[platform], purchase(name=name, value=None, currency=None), full_attribution()
    )
    assert reason == f"{platform} does not take {name}"


def test_user_map_can_silence_or_enable(fake: FakePlatforms) -> None:
    adapters = build_adapters(
        fake_settings(fake, event_map={"meta": {"Purchase": None}, "bigo": {"Search": "button"}})
    )
    assert (
        skip_reason(adapters["meta"], purchase(), full_attribution())
        == "meta does not take Purchase"
    )
    item = adapters["bigo"].prepare(
        purchase(name="search", value=None, currency=None), full_attribution()
    )
    assert item["event"]["event_id"] == "button"


def test_names_a_closed_vocabulary_does_not_know_are_skipped(adapters: dict[str, Adapter]) -> None:
    ev = purchase(name="LoanApproved", value=None, currency=None)
    assert (
        skip_reason(adapters["kwai"], ev, full_attribution()) == "kwai does not take LoanApproved"
    )
    assert (
        skip_reason(adapters["bigo"], ev, full_attribution()) == "bigo does not take LoanApproved"
    )
    # Open vocabularies take it as a custom event.
    assert adapters["meta"].prepare(ev, full_attribution())["event"]["event_name"] == "LoanApproved"
    own = purchase(name="EVENT_LOAN_CREDIT", value=None, currency=None)
    assert (
        json.loads(json.dumps(adapters["kwai"].prepare(own, full_attribution())))["event_name"]
        == "EVENT_LOAN_CREDIT"
    )


@pytest.mark.parametrize("currency", ["EUR", "MXN"])
def test_kwai_currencies(adapters: dict[str, Adapter], currency: str) -> None:
    reason = skip_reason(adapters["kwai"], purchase(currency=currency), full_attribution())
    assert currency in reason and "BRL" in reason
    for ok in ("BRL", "IDR", "USD"):
        assert adapters["kwai"].prepare(purchase(currency=ok), full_attribution())["currency"] == ok


def test_kwai_pixel_and_token(fake: FakePlatforms) -> None:
    att = full_attribution()
    no_pixel = att.with_touch(Touch(platform="kwai", click_id="c"))
    multi = KwaiConfig(
        access_tokens={"p1": Secret("t1"), "p2": Secret("t2")}, base_url=f"{FAKE_BASE}/kwai"
    )
    kwai = KwaiAdapter(fake_settings(fake, kwai=multi))
    assert skip_reason(kwai, purchase(), no_pixel) == "no Kwai pixel id"
    other_pixel = att.with_touch(Touch(platform="kwai", click_id="c", pixel_id="p9"))
    assert skip_reason(kwai, purchase(), other_pixel) == "no Kwai access token for this pixel"
    single = KwaiConfig(access_tokens={"p1": Secret("t1")}, base_url=f"{FAKE_BASE}/kwai")
    item = KwaiAdapter(fake_settings(fake, kwai=single)).prepare(purchase(), no_pixel)
    assert item["pixelId"] == "p1"
    req = KwaiAdapter(fake_settings(fake, kwai=single)).build([item])
    assert req.secrets == ("t1",) and b'"access_token":"t1"' in req.body


def test_bigo_pixel_fallback(fake: FakePlatforms) -> None:
    settings = fake_settings(fake)
    att = full_attribution().with_touch(Touch(platform="bigo", click_id="bbg-value-123"))
    assert BigoAdapter(settings).prepare(purchase(), att)["pixel_id"] == settings.bigo.pixel_id  # type: ignore[union-attr]
    bare = fake_settings(fake, bigo=dataclasses.replace(settings.bigo, pixel_id=None))  # type: ignore[type-var]
    assert skip_reason(BigoAdapter(bare), purchase(), att) == "no Bigo pixel id"


def test_rokt_needs_an_email(adapters: dict[str, Adapter]) -> None:
    ev = purchase(user={"phone": "+5511912345678"})
    assert skip_reason(adapters["rokt"], ev, full_attribution()) == "rokt needs the user's email"
    bad = purchase(user={"email": "not an email"})
    assert skip_reason(adapters["rokt"], bad, full_attribution()) == "rokt needs the user's email"
    hashed = "a" * 64
    item = adapters["rokt"].prepare(purchase(user={"email": hashed.upper()}), full_attribution())
    assert item["user_identities"] == {
        "other": hashed,
        "other2": full_attribution().click_id("rokt"),
    }


def test_meta_rules(adapters: dict[str, Adapter]) -> None:
    meta = adapters["meta"]
    old = purchase(event_time=time.time() - 7 * 86400 - 5)
    assert skip_reason(meta, old, full_attribution()) == "meta takes events at most 7 days old"
    no_ua = full_attribution().with_client(ClientContext(ip="203.0.113.7", url="https://s/x"))
    assert "user agent" in skip_reason(meta, purchase(), no_ua)
    ua_only = Attribution(visitor_id="v").with_client(
        ClientContext(user_agent="UA", url="https://s/x")
    )
    assert "identifier" in skip_reason(meta, purchase(user={}), ua_only)
    # An email is enough besides the agent.
    item = meta.prepare(purchase(user={"email": "a@b.co"}), ua_only)
    assert set(item["event"]["user_data"]) == {"em", "client_user_agent"}
    no_url = Attribution(visitor_id="v").with_client(
        ClientContext(user_agent="UA", ip="203.0.113.7")
    )
    assert "event_source_url" in skip_reason(meta, purchase(), no_url)
    item = meta.prepare(purchase(event_source_url="https://s/own"), no_url)
    assert item["event"]["event_source_url"] == "https://s/own"


def test_event_source_url_falls_back_to_the_request(adapters: dict[str, Adapter]) -> None:
    att = full_attribution()
    assert adapters["meta"].prepare(purchase(), att)["event"]["event_source_url"] == att.client.url
    assert adapters["bigo"].prepare(purchase(), att)["url"] == att.client.url
    assert adapters["tiktok"].prepare(purchase(), att)["page"]["url"] == att.client.url


def test_never_hashed_and_byte_identical(adapters: dict[str, Adapter]) -> None:
    att = full_attribution()
    meta = adapters["meta"].prepare(purchase(), att)["event"]["user_data"]
    assert meta["client_ip_address"] == att.client.ip
    assert meta["client_user_agent"] == att.client.user_agent
    assert meta["fbc"] == att.touches["meta"].extra["fbc"]
    assert meta["fbp"] == att.touches["meta"].extra["fbp"]
    bigo = adapters["bigo"].prepare(purchase(), att)
    assert bigo["bbg"] == att.click_id("bigo") and bigo["ip"] == att.client.ip
    assert bigo["cookie_id"] == "ci-123"
    assert adapters["kwai"].prepare(purchase(), att)["clickid"] == att.click_id("kwai")
    assert adapters["roibest"].prepare(purchase(), att)["link_id"] == att.click_id("roibest")
    tt = adapters["tiktok"].prepare(purchase(), att)["user"]
    assert tt["ttclid"] == att.click_id("tiktok") and tt["ttp"] == "2Xttp_cookie"
    assert tt["ip"] == att.client.ip and tt["user_agent"] == att.client.user_agent


def test_tiktok_applies_with_ttp_only(adapters: dict[str, Adapter]) -> None:
    att = full_attribution().with_touch(Touch(platform="tiktok", extra={"ttp": "t"}))
    user = adapters["tiktok"].prepare(purchase(), att)["user"]
    assert user["ttp"] == "t" and "ttclid" not in user


def test_roibest_channel_from_settings_and_kwai_currency(fake: FakePlatforms) -> None:
    rb = RoibestAdapter(
        fake_settings(fake, roibest=RoibestConfig(channel="bigo", base_url=f"{FAKE_BASE}/roibest"))
    )
    assert rb.prepare(purchase(), full_attribution())["event_name"] == "ec_purchase"
    kwai_rb = RoibestAdapter(
        fake_settings(fake, roibest=RoibestConfig(channel="kwai", base_url=f"{FAKE_BASE}/roibest"))
    )
    assert "BRL" in skip_reason(kwai_rb, purchase(currency="EUR"), full_attribution())


def test_adapters_refuse_missing_configuration(fake: FakePlatforms) -> None:
    bare = fake_settings(
        fake, meta=None, kwai=None, bigo=None, rokt=None, roibest=None, tiktok=None
    )
    for cls in (MetaAdapter, KwaiAdapter, BigoAdapter, RoktAdapter, RoibestAdapter, TiktokAdapter):
        with pytest.raises(ConfigurationError):
            cls(bare)


def test_items_are_json_ready_with_odd_properties(adapters: dict[str, Adapter]) -> None:
    from decimal import Decimal

    ev = purchase(
        properties={
            "d": Decimal("1.5"),
            "nested": {"a": (1, 2)},
            "obj": object(),
            "nan": float("nan"),
        }
    )
    for adapter in adapters.values():
        item: Any = adapter.prepare(ev, full_attribution())
        assert json.loads(json.dumps(item, allow_nan=False)) == item


def test_rokt_full_request_fits_256_kb(fake: FakePlatforms) -> None:
    from tracking_mw.platforms.rokt import MAX_BATCH_BYTES

    rokt = build_adapters(fake_settings(fake))["rokt"]
    props = {f"attr{i}": "x" * 1000 for i in range(10)} | {"transactionid": "T-1"}
    items = [
        rokt.prepare(purchase(event_id=f"e{i}", properties=props), full_attribution())
        for i in range(100)
    ]
    custom = items[0]["events"][0]["data"]["custom_attributes"]
    assert custom["transactionid"] == "T-1" and custom["conversiontype"] == "purchase"
    assert len(json.dumps(items[0]).encode()) <= MAX_BATCH_BYTES
    req = rokt.build(items)
    assert len(req.body) <= 256 * 1024


def _answer(fake: FakePlatforms, adapter: Adapter, item: dict[str, Any]) -> str:
    """The adapter's verdict ("ok", "retry", "permanent") on the fake's answer to ``item``."""
    import asyncio

    import httpx

    req = adapter.build([item])

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as client:
            return await client.request(
                req.method, req.url, headers=dict(req.headers), content=req.body
            )

    resp = asyncio.run(go())
    return adapter.classify(resp.status_code, dict(resp.headers), resp.content, 1).kind


@pytest.mark.parametrize("platform", ["meta", "roibest"])
def test_a_name_mapped_to_purchase_needs_value_and_currency(
    fake: FakePlatforms, platform: str
) -> None:
    # validate_event knows the common names only; the user's map can make another name a
    # Purchase there, which the platform rejects without money (Meta 100, ROIBest 1004).
    adapters = build_adapters(fake_settings(fake, event_map={platform: {"Compra": "Purchase"}}))
    att = full_attribution()
    with pytest.raises(InvalidEvent) as info:
        adapters[platform].prepare(Event(name="Compra"), att)
    assert info.value.field == "value" and f"sent to {platform} as Purchase" in str(info.value)
    with pytest.raises(InvalidEvent):
        adapters[platform].prepare(Event(name=" compra "), att)
    # With the money, it is prepared and the platform takes it.
    item = adapters[platform].prepare(Event(name="Compra", value="5", currency="BRL"), att)
    assert _answer(fake, adapters[platform], item) == "ok"
    # A platform the map does not make it a Purchase on judges it by its own rules.
    assert skip_reason(adapters["bigo"], Event(name="Compra"), att) == "bigo does not take Compra"


def test_track_raises_for_a_mapped_purchase_without_money(fake: FakePlatforms) -> None:
    from tracking_mw._runtime import Runtime

    settings = fake_settings(fake, event_map={"meta": {"Compra": "Purchase"}})
    rt = Runtime(settings)
    try:
        with pytest.raises(InvalidEvent) as info:
            rt.tracker.track("Compra", attribution=full_attribution())
        assert info.value.field == "value"
        assert rt.outbox.recent() == []  # nothing queued for any platform
        receipt = rt.tracker.track(
            "Compra", value="5", currency="BRL", attribution=full_attribution()
        )
        assert "meta" in receipt.queued
    finally:
        rt.close()


def test_properties_cannot_replace_the_checked_money_fields(fake: FakePlatforms) -> None:
    adapters = build_adapters(fake_settings(fake))
    att = full_attribution()
    props = {"value": "12,50", "currency": "reais", "contents": "x", "plan": "gold"}
    lead = Event(name="Lead", properties=props)
    custom = adapters["meta"].prepare(lead, att)["event"]["custom_data"]
    assert custom == {"plan": "gold"}
    assert _answer(fake, adapters["meta"], adapters["meta"].prepare(lead, att)) == "ok"
    sale = purchase(properties=props)
    custom = adapters["meta"].prepare(sale, att)["event"]["custom_data"]
    assert custom["value"] == 19.99 and custom["currency"] == "USD" and custom["plan"] == "gold"
    assert isinstance(custom["contents"], list)
    extra = adapters["roibest"].prepare(lead, att)["extra"]
    assert extra == {"contents": "x", "plan": "gold"}
    extra = adapters["roibest"].prepare(sale, att)["extra"]
    assert extra["value"] == 19.99 and extra["currency"] == "USD"


@pytest.mark.parametrize(
    ("ip", "sent"),
    [
        ("8.8.8.8", "8.8.8.8"),
        (" 2606:4700:4700::1111 ", "2606:4700:4700::1111"),
        ("::ffff:8.8.8.8", "::ffff:8.8.8.8"),
        ("10.0.0.7", None),
        ("192.168.1.20", None),
        ("127.0.0.1", None),
        ("100.64.0.1", None),
        ("::1", None),
        ("fd00::1", None),
        ("::ffff:192.168.1.1", None),
        ("not an ip", None),
    ],
)
def test_bigo_gets_only_a_public_ip(fake: FakePlatforms, ip: str, sent: str | None) -> None:
    # Bigo: "It needs to be a public IP". A peer address behind an unconfigured proxy or on a
    # developer's machine is left out rather than sent.
    adapters = build_adapters(fake_settings(fake))
    att = full_attribution()
    att = att.with_client(dataclasses.replace(att.client, ip=ip))
    item = adapters["bigo"].prepare(purchase(), att)
    assert item.get("ip") == sent
    assert _answer(fake, adapters["bigo"], item) == "ok"
    # The fake says what Bigo says of one that is not public.
    assert _answer(fake, adapters["bigo"], {**item, "ip": "10.0.0.7"}) == "permanent"
    assert fake.received("bigo")[-1].answer["code"] == -4


def test_rokt_transaction_id(adapters: dict[str, Adapter]) -> None:
    att = full_attribution()

    def attrs(event: Event) -> dict[str, Any]:
        item = adapters["rokt"].prepare(event, att)
        return dict(item["events"][0]["data"]["custom_attributes"])

    sale = purchase(event_id="evt-1")
    assert attrs(sale)["transactionid"] == "evt-1"
    assert attrs(purchase(event_id="evt-1", properties={"order_id": 1234}))["transactionid"] == (
        "1234"
    )
    got = attrs(purchase(properties={"transaction_id": " T-9 ", "order_id": "O-1"}))
    assert got["transactionid"] == "T-9"
    assert attrs(purchase(properties={"transactionid": "own"}))["transactionid"] == "own"
