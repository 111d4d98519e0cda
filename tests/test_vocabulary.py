"""The common vocabulary, per-platform names, overrides and ROIBest's channel."""

from __future__ import annotations

import pytest

from tracking_mw.attribution import Attribution, Touch
from tracking_mw.vocabulary import (
    COMMON_EVENTS,
    VOCABULARY,
    is_user_mapped,
    platform_event_name,
    roibest_channel,
)

# The table of platform-notes.md, row by row: (common, kwai, bigo, meta, rokt).
NOTES_TABLE = [
    ("PageView", "EVENT_CONTENT_VIEW", "page_view", "PageView", None),
    ("ViewContent", "EVENT_CONTENT_VIEW", "ec_detail_view", "ViewContent", None),
    ("AddToCart", "EVENT_ADD_TO_CART", "ec_add_cart", "AddToCart", None),
    ("InitiateCheckout", "EVENT_INITIATED_CHECKOUT", "ec_order", "InitiateCheckout", None),
    ("AddPaymentInfo", "EVENT_ADD_PAYMENT_INFO", None, "AddPaymentInfo", None),
    ("PlaceOrder", "EVENT_PLACE_ORDER", "ec_order", "PlaceOrder", None),
    ("Purchase", "EVENT_PURCHASE", "ec_purchase", "Purchase", "purchase"),
    (
        "CompleteRegistration",
        "EVENT_COMPLETE_REGISTRATION",
        "ec_register",
        "CompleteRegistration",
        "signup",
    ),
    ("Lead", "EVENT_FORM_SUBMIT", "form", "Lead", "lead"),
    ("Contact", "EVENT_CONTACT", "consult", "Contact", None),
    ("Subscribe", "EVENT_SUBSCRIBE", None, "Subscribe", "subscription"),
    ("Search", "EVENT_SEARCH", None, "Search", None),
    ("AddToWishlist", "EVENT_ADD_TO_WISHLIST", None, "AddToWishlist", None),
    ("FirstDeposit", "EVENT_FIRST_DEPOSIT", "ec_purchase", "FirstDeposit", "first_deposit"),
]


@pytest.mark.parametrize(("common", "kwai", "bigo", "meta", "rokt"), NOTES_TABLE)
def test_table_matches_platform_notes(
    common: str, kwai: str, bigo: str | None, meta: str, rokt: str | None
) -> None:
    assert platform_event_name("kwai", common) == kwai
    assert platform_event_name("bigo", common) == bigo
    assert platform_event_name("meta", common) == meta
    assert platform_event_name("rokt", common) == rokt


def test_every_common_event_is_in_the_table() -> None:
    assert set(COMMON_EVENTS) == {row[0] for row in NOTES_TABLE}
    for platform in ("meta", "kwai", "bigo", "rokt", "tiktok"):
        assert set(VOCABULARY[platform]) == {c.lower() for c in COMMON_EVENTS}


@pytest.mark.parametrize("spelling", ["purchase", "PURCHASE", "  Purchase\t", "pUrChAsE"])
def test_lookup_is_case_insensitive_after_trimming(spelling: str) -> None:
    assert platform_event_name("kwai", spelling) == "EVENT_PURCHASE"
    assert platform_event_name("bigo", spelling) == "ec_purchase"


@pytest.mark.parametrize(
    ("platform", "name"),
    [("kwai", "EVENT_LOAN_CREDIT"), ("bigo", "ec_detail_view"), ("meta", "MyCustomEvent")],
)
def test_own_and_unknown_names_pass_through_unchanged(platform: str, name: str) -> None:
    assert platform_event_name(platform, name) == name
    assert platform_event_name(platform, f"  {name} ") == name


def test_user_overrides_win_and_can_send_or_silence() -> None:
    overrides = {
        "kwai": {"purchase": "EVENT_COMPLETE_TRANSACTION", "  Lead ": None},
        "bigo": {"AddPaymentInfo": "button"},
        "rokt": {"pageview": "visit"},
    }
    assert platform_event_name("kwai", "PURCHASE", overrides) == "EVENT_COMPLETE_TRANSACTION"
    assert platform_event_name("kwai", "lead", overrides) is None
    assert platform_event_name("bigo", "addpaymentinfo", overrides) == "button"
    assert platform_event_name("rokt", "PageView", overrides) == "visit"
    # Other platforms keep the table.
    assert platform_event_name("meta", "Lead", overrides) == "Lead"
    assert is_user_mapped("kwai", " LEAD", overrides)
    assert not is_user_mapped("meta", "Lead", overrides)
    assert not is_user_mapped("meta", "Lead", None)


def test_roibest_uses_the_channel_column() -> None:
    assert platform_event_name("roibest", "Purchase") == "Purchase"
    assert platform_event_name("roibest", "Purchase", channel="kwai") == "EVENT_PURCHASE"
    assert platform_event_name("roibest", "Purchase", channel="bigo") == "ec_purchase"
    assert platform_event_name("roibest", "Purchase", channel="tiktok") == "CompletePayment"
    assert platform_event_name("roibest", "Purchase", channel="nonsense") == "Purchase"
    assert (
        platform_event_name("roibest", "purchase", {"roibest": {"Purchase": "pay"}}, channel="kwai")
        == "pay"
    )


def _att(*touches: Touch) -> Attribution:
    att = Attribution(visitor_id="v")
    for t in touches:
        att = att.with_touch(t)
    return att


def test_roibest_channel_inference() -> None:
    link = Touch(platform="roibest", click_id="L1", last_seen=100, landing_url="https://a/x")
    assert roibest_channel(_att(link)) == "meta"
    assert roibest_channel(_att(link), "kwai") == "kwai"
    kwai = Touch(platform="kwai", click_id="k", last_seen=100)
    assert roibest_channel(_att(link, kwai)) == "kwai"
    # A touch that landed on the same URL as the link wins over a closer one in time.
    bigo_same = Touch(platform="bigo", click_id="b", last_seen=10, landing_url="https://a/x")
    assert roibest_channel(_att(link, kwai, bigo_same)) == "bigo"
    # Else the closest in time.
    tiktok_old = Touch(platform="tiktok", click_id="t", last_seen=5)
    assert roibest_channel(_att(link, kwai, tiktok_old)) == "kwai"
    # A Meta touch without a click id (only _fbp) says nothing about the link.
    fbp_only = Touch(platform="meta", extra={"fbp": "fb.1.1.1"}, last_seen=100)
    assert roibest_channel(_att(link, fbp_only)) == "meta"
    assert roibest_channel(_att(link, fbp_only, tiktok_old)) == "tiktok"
    hinted = Touch(platform="roibest", click_id="L1", extra={"channel": "Bigo"})
    assert roibest_channel(_att(hinted, kwai)) == "bigo"
