"""One event vocabulary, mapped to each platform's own names.

Sites track events with common names (``Purchase``, ``Lead``, ...). Each platform adapter
asks :func:`platform_event_name` for its own name. The rules are ROIBest's event-mapping
rules, applied to every platform:

1. the user's override for the platform (``Settings.event_map[platform][name]``) wins;
2. else the common table below;
3. else the name passes through unchanged (so a platform's own names such as
   ``EVENT_LOAN_CREDIT`` or ``ec_detail_view`` go straight through).

Matching is case-insensitive after trimming whitespace. A cell of ``None`` means "(not
sent)": the platform skips the event, with the reason recorded, unless the user maps it.
For Rokt the result is the ``conversiontype`` (its ``event_name`` is always ``conversion``).

ROIBest forwards events to the ad channel the link belongs to, so it uses that channel's
names; see :func:`roibest_channel`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .attribution import Attribution

__all__ = [
    "COMMON_EVENTS",
    "NOT_SENT",
    "VOCABULARY",
    "platform_event_name",
    "roibest_channel",
]

#: Marker of a "(not sent)" cell.
NOT_SENT = None

# The table of platform-notes.md ("One vocabulary, mapped per platform"). TikTok's column
# uses the Events API 2.0 standard names; it is an extra, so every cell can be overridden.
_TABLE: dict[str, dict[str, str | None]] = {
    "PageView": {
        "kwai": "EVENT_CONTENT_VIEW",
        "bigo": "page_view",
        "meta": "PageView",
        "rokt": None,
        "tiktok": "Pageview",
    },
    "ViewContent": {
        "kwai": "EVENT_CONTENT_VIEW",
        "bigo": "ec_detail_view",
        "meta": "ViewContent",
        "rokt": None,
        "tiktok": "ViewContent",
    },
    "AddToCart": {
        "kwai": "EVENT_ADD_TO_CART",
        "bigo": "ec_add_cart",
        "meta": "AddToCart",
        "rokt": None,
        "tiktok": "AddToCart",
    },
    "InitiateCheckout": {
        "kwai": "EVENT_INITIATED_CHECKOUT",
        "bigo": "ec_order",
        "meta": "InitiateCheckout",
        "rokt": None,
        "tiktok": "InitiateCheckout",
    },
    "AddPaymentInfo": {
        "kwai": "EVENT_ADD_PAYMENT_INFO",
        "bigo": None,
        "meta": "AddPaymentInfo",
        "rokt": None,
        "tiktok": "AddPaymentInfo",
    },
    "PlaceOrder": {
        "kwai": "EVENT_PLACE_ORDER",
        "bigo": "ec_order",
        "meta": "PlaceOrder",  # a custom event on Meta
        "rokt": None,
        "tiktok": "PlaceAnOrder",
    },
    "Purchase": {
        "kwai": "EVENT_PURCHASE",
        "bigo": "ec_purchase",
        "meta": "Purchase",
        "rokt": "purchase",
        "tiktok": "CompletePayment",
    },
    "CompleteRegistration": {
        "kwai": "EVENT_COMPLETE_REGISTRATION",
        "bigo": "ec_register",
        "meta": "CompleteRegistration",
        "rokt": "signup",
        "tiktok": "CompleteRegistration",
    },
    "Lead": {
        "kwai": "EVENT_FORM_SUBMIT",
        "bigo": "form",
        "meta": "Lead",
        "rokt": "lead",
        "tiktok": "SubmitForm",
    },
    "Contact": {
        "kwai": "EVENT_CONTACT",
        "bigo": "consult",
        "meta": "Contact",
        "rokt": None,
        "tiktok": "Contact",
    },
    "Subscribe": {
        "kwai": "EVENT_SUBSCRIBE",
        "bigo": None,
        "meta": "Subscribe",
        "rokt": "subscription",
        "tiktok": "Subscribe",
    },
    "Search": {
        "kwai": "EVENT_SEARCH",
        "bigo": None,
        "meta": "Search",
        "rokt": None,
        "tiktok": "Search",
    },
    "AddToWishlist": {
        "kwai": "EVENT_ADD_TO_WISHLIST",
        "bigo": None,
        "meta": "AddToWishlist",
        "rokt": None,
        "tiktok": "AddToWishlist",
    },
    "FirstDeposit": {
        "kwai": "EVENT_FIRST_DEPOSIT",
        "bigo": "ec_purchase",
        "meta": "FirstDeposit",  # a custom event on Meta
        "rokt": "first_deposit",
        "tiktok": "FirstDeposit",
    },
}

#: The common names, in the table's order.
COMMON_EVENTS: tuple[str, ...] = tuple(_TABLE)

#: platform -> lowercased common name -> platform name (``None`` = not sent).
VOCABULARY: dict[str, dict[str, str | None]] = {
    platform: {name.lower(): cells[platform] for name, cells in _TABLE.items()}
    for platform in ("meta", "kwai", "bigo", "rokt", "tiktok")
}

_CHANNEL_PLATFORMS = ("kwai", "bigo", "tiktok", "meta")


def _key(name: str) -> str:
    return name.strip().lower()


def platform_event_name(
    platform: str,
    name: str,
    overrides: Mapping[str, Mapping[str, str | None]] | None = None,
    *,
    channel: str | None = None,
) -> str | None:
    """The name ``platform`` knows ``name`` by, or ``None`` when it is not sent there.

    ``overrides`` is ``Settings.event_map``. For ``roibest`` pass the link's ``channel``
    (``meta``, ``kwai``, ``bigo`` or ``tiktok``; default ``meta``): its column is used.
    """
    key = _key(name)
    table = (overrides or {}).get(platform) or {}
    for k, v in table.items():
        if _key(k) == key:
            return v.strip() if isinstance(v, str) and v.strip() else None
    column = platform
    if platform == "roibest":
        column = channel if channel in VOCABULARY else "meta"
    vocab = VOCABULARY.get(column)
    if vocab is not None and key in vocab:
        return vocab[key]
    return name.strip()


def is_user_mapped(
    platform: str, name: str, overrides: Mapping[str, Mapping[str, str | None]] | None
) -> bool:
    """True when the user's ``event_map`` has an entry for this name on this platform."""
    key = _key(name)
    return any(_key(k) == key for k in ((overrides or {}).get(platform) or {}))


def roibest_channel(attribution: Attribution, configured: str | None = None) -> str:
    """The ad channel of the visitor's ROIBest link: whose event names ROIBest expects.

    ``configured`` (``RoibestConfig.channel``) wins. Otherwise the channel is inferred
    from the other platforms' click ids captured with the link: a touch that landed on the
    same URL as the ROIBest link first, else the touch seen closest in time to it.
    Without any, Meta's names (ROIBest's own default).
    """
    if configured:
        return configured
    rb = attribution.touch("roibest")
    hint = (rb.extra.get("channel") if rb else None) or ""
    if hint.strip().lower() in _CHANNEL_PLATFORMS:
        return hint.strip().lower()
    candidates = [
        t for p in _CHANNEL_PLATFORMS if (t := attribution.touch(p)) is not None and t.click_id
    ]
    if not candidates:
        return "meta"
    if rb is not None:
        same_landing = [t for t in candidates if rb.landing_url and t.landing_url == rb.landing_url]
        if same_landing:
            return same_landing[0].platform
        candidates.sort(key=lambda t: abs(t.last_seen - rb.last_seen))
    return candidates[0].platform
