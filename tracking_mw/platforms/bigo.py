"""Bigo Web Events API: ``POST {base}/bigoad/trackingevent`` JSON, one event per request.

Required: ``bbg`` (kept at full length: a truncated one is "invalid bbg"), ``pixel_id`` and
``event.event_id``, one of the document's web events. Bigo applies only when the visitor
came with a ``bbg``; the pixel comes from the landing URL, else ``BigoConfig.pixel_id``.

Money, without any currency conversion: ``event.monetary`` is the value in USD as a plain
decimal string (``"10.00"``), so it is sent only for USD events; ``event.orig_monetary`` and
``event.currency`` always carry the original amount. Email and phone are sent as SHA-256 of
their normalized form (the document allows encrypted values), the advertiser's
``external_id`` as given.

Answers: ``code == 1`` is ok (the document's sentence "non-zero means failure" contradicts
its own example; platform-notes settles on 1). ``-1`` is a server error and retried;
``-4`` and the messages "need pixel_id", "invalid bbg", "notfound pixel", "invalid
event_id" are permanent, as is any other code. A 2xx body that is not JSON is retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from .._normalize import meta_hash, public_ip
from ..attribution import Attribution
from ..config import BigoConfig, Settings
from ..events import Event
from ..vocabulary import is_user_mapped, platform_event_name
from ._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    json_answer,
    json_request,
    not_sent,
    platform_config,
    source_url,
)

__all__ = ["BIGO_EVENTS", "BigoAdapter", "bigo_amount"]

#: The document's "Supported web events".
BIGO_EVENTS = frozenset(
    {
        "page_view",
        "button",
        "consult",
        "ec_register",
        "ec_detail_view",
        "ec_add_cart",
        "ec_order",
        "ec_purchase",
        "form_button",
        "form_detail",
        "form",
        "phone_button",
        "phone_detail",
        "phone_consult",
        "app_button",
        "app_detail",
        "app_download",
        "ad_watch",
    }
)
_PERMANENT_MESSAGES = (
    "need pixel_id",
    "invalid bbg",
    "invalid bgg",
    "notfound pixel",
    "invalid event_id",
)


def bigo_amount(value: Decimal) -> str:
    """A plain decimal string with two places (``Decimal("10")`` -> ``"10.00"``)."""
    return f"{value.quantize(Decimal('0.01')):f}"


class BigoAdapter(Adapter):
    """Bigo Web Events API adapter (one event per request)."""

    name = "bigo"
    max_batch = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: BigoConfig = platform_config(settings, "bigo", "Bigo")

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """The Bigo body, or :class:`Skip`."""
        touch = attribution.touch("bigo")
        if touch is None or not touch.click_id:
            raise Skip("no Bigo bbg")
        name = platform_event_name("bigo", event.name, self.settings.event_map)
        if name is None:
            raise not_sent("bigo", event.name)
        if name not in BIGO_EVENTS and not is_user_mapped(
            "bigo", event.name, self.settings.event_map
        ):
            raise not_sent("bigo", event.name)
        pixel = touch.pixel_id or self.config.pixel_id
        if not pixel:
            raise Skip("no Bigo pixel id")
        body: dict[str, Any] = {
            "bbg": touch.click_id,
            "pixel_id": pixel,
            "timestamp_ms": round(event.event_time * 1000),
        }
        url = source_url(event, attribution)
        if url:
            body["url"] = url
        if attribution.client.referrer:
            body["referer"] = attribution.client.referrer
        # Bigo: "It needs to be a public IP".
        ip = public_ip(attribution.client.ip)
        if ip:
            body["ip"] = ip
        if attribution.client.user_agent:
            body["user_agent"] = attribution.client.user_agent
        if event.user.external_id:
            body["external_id"] = event.user.external_id.strip()
        email = meta_hash("em", event.user.email)
        if email:
            body["email"] = email
        phone = meta_hash("ph", event.user.phone, self.settings.phone_region)
        if phone:
            body["phone_number"] = phone
        cookie_id = touch.extra.get("cookie_id")
        if cookie_id:
            body["cookie_id"] = cookie_id
        ev: dict[str, Any] = {"event_id": name}
        if event.value is not None and event.currency is not None:
            amount = bigo_amount(event.value)
            if event.currency == "USD":
                ev["monetary"] = amount
            ev["currency"] = event.currency
            ev["orig_monetary"] = amount
        body["event"] = ev
        return body

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """The item as the JSON body; Bigo takes no credentials."""
        return json_request(f"{self.config.base_url}/bigoad/trackingevent", dict(items[0]))

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge Bigo's answer (see the module docstring)."""
        data = json_answer("bigo", "code", status, headers, body)
        if isinstance(data, Outcome):
            return data
        code = data.get("code")
        msg = str(data.get("msg") or "")[:300]
        if code == 1:
            return Outcome.ok()
        if any(m in msg.lower() for m in _PERMANENT_MESSAGES):
            return Outcome.permanent(f"bigo {code}: {msg}")
        if code == -1:
            return Outcome.retry(f"bigo -1 (server error): {msg}")
        return Outcome.permanent(f"bigo {code}: {msg}")
