"""Kwai Event API: ``POST {base}/log/common/api`` with a JSON body, one event per request.

Field names follow the document's *parameter table* (``clickid``, ``pixelId``,
``pixelSdkVersion``, ``mmpcode``), not its examples, which misspell them. Fixed values:
``is_attributed=1``, ``mmpcode="PL"``, ``pixelSdkVersion="9.9.9"``, ``testFlag=false``;
``trackFlag`` is true only in test mode (``KwaiConfig.test``, the "Test Events" tab).
``properties`` is a JSON-encoded *string*; ``value`` is a number and goes with
``currency`` (BRL, IDR or USD only). The access token belongs to the pixel's ad account
(:meth:`KwaiConfig.token_for`).

Kwai applies only when the visitor came with a Kwai ``click_id``; the pixel comes with it
(``pixel_id`` on the landing URL), else the only configured pixel.

Answers: ``result == 1`` is ok. 10001 (missing parameter), 10002 (type), 10005 (clickid),
10006 (token), 10007 (event name) and any other result code are permanent: Kwai has no
event id to deduplicate a resent event by. Transport errors and 5xx are retried, as is a
2xx body that is not JSON: a gateway page is not a verdict on the event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import ConfigurationError
from .._json import dumps as _dumps
from ..attribution import Attribution
from ..config import KwaiConfig, Settings
from ..events import Event
from ..vocabulary import is_user_mapped, platform_event_name
from ._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    clean_contents,
    json_answer,
    json_request,
    jsonable,
    not_sent,
    platform_config,
)

__all__ = ["KWAI_CURRENCIES", "KWAI_EVENTS", "KwaiAdapter"]

KWAI_CURRENCIES = frozenset({"BRL", "IDR", "USD"})
#: The events of the document's "Events Kwai Support" table.
KWAI_EVENTS = frozenset(
    {
        "EVENT_ADD_PAYMENT_INFO",
        "EVENT_ADD_TO_CART",
        "EVENT_BUTTON_CLICK",
        "EVENT_PURCHASE",
        "EVENT_CONTENT_VIEW",
        "EVENT_DOWNLOAD",
        "EVENT_FORM_SUBMIT",
        "EVENT_INITIATED_CHECKOUT",
        "EVENT_CONTACT",
        "EVENT_PLACE_ORDER",
        "EVENT_SEARCH",
        "EVENT_COMPLETE_REGISTRATION",
        "EVENT_ADD_TO_WISHLIST",
        "EVENT_SUBSCRIBE",
        "EVENT_FIRST_DEPOSIT",
        "EVENT_CREDIT_APPROVAL",
        "EVENT_LOAN_APPLICATION",
        "EVENT_LOAN_CREDIT",
        "EVENT_LOAN_DISBURSAL",
        "EVENT_CREDIT_CARD_APPLICATION",
        "EVENT_VALUE_PRODUCE",
        "EVENT_KEY_INAPP_EVENT",
        "EVENT_KEY_INAPP_EVENT_1",
        "EVENT_KEY_INAPP_EVENT_2",
        "EVENT_KEY_INAPP_EVENT_3",
        "EVENT_AD_VIEW",
        "EVENT_AD_CLICK",
        "EVENT_PURCHASE_1_DAY",
        "EVENT_PURCHASE_2_DAY",
        "EVENT_PURCHASE_3_DAY",
        "EVENT_PURCHASE_7_DAY",
        "EVENT_COMPLETE_TRANSACTION",
    }
)
_KWAI_NAME = re.compile(r"^EVENT_[A-Z0-9_]+$")
_PERMANENT = {
    10001: "missing parameter",
    10002: "parameter type error",
    10005: "clickid verification failed",
    10006: "token verification failed",
    10007: "event name verification failed",
}


class KwaiAdapter(Adapter):
    """Kwai Event API adapter (one event per request)."""

    name = "kwai"
    max_batch = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: KwaiConfig = platform_config(settings, "kwai", "Kwai")
        self._names: dict[str, str | None] = {}

    def _pixel(self, attribution: Attribution) -> str | None:
        touch = attribution.touch("kwai")
        if touch is not None and touch.pixel_id:
            return touch.pixel_id
        pixels = [p for p in self.config.access_tokens if p != "*"]
        return pixels[0] if len(pixels) == 1 else None

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """The Kwai body without credentials and test flag, or :class:`Skip`."""
        click_id = attribution.click_id("kwai")
        if not click_id:
            raise Skip("no Kwai click id")
        name = self._event_name(event.name)
        if name is None:
            raise not_sent("kwai", event.name)
        pixel = self._pixel(attribution)
        if not pixel:
            raise Skip("no Kwai pixel id")
        if self.config.token_for(pixel) is None:
            raise Skip("no Kwai access token for this pixel")
        if event.currency is not None and event.currency not in KWAI_CURRENCIES:
            raise Skip(f"kwai takes only BRL, IDR or USD, not {event.currency}")
        item: dict[str, Any] = {"clickid": click_id, "event_name": name, "pixelId": pixel}
        if event.value is not None and event.currency is not None:
            item["currency"] = event.currency
            item["value"] = event.json_value
        props: dict[str, Any] = {"event_timestamp": round(event.event_time * 1000)}
        contents = clean_contents(event.contents)
        if contents:
            props["content_type"] = "product"
            props["contents"] = [
                {("price" if k == "item_price" else k): v for k, v in c.items()} for c in contents
            ]
            if len(contents) == 1 and "id" in contents[0]:
                props["content_id"] = contents[0]["id"]
        props.update(jsonable(event.properties) or {})
        item["properties"] = _dumps(props)
        return item

    def _event_name(self, name: str) -> str | None:
        """Kwai's name for ``name``; None when not sent. Cached: it scans the event_map."""
        cache = self._names
        if name in cache:
            return cache[name]
        found = platform_event_name("kwai", name, self.settings.event_map)
        if (
            found is not None
            and not _KWAI_NAME.match(found)
            and not is_user_mapped("kwai", name, self.settings.event_map)
        ):
            found = None
        if len(cache) < 1024:  # bounded: names come from code, but stay safe
            cache[name] = found
        return found

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """The documented JSON body, with the pixel's token and the test flag."""
        item = items[0]
        secret = self.config.token_for(item["pixelId"])
        if secret is None:
            raise ConfigurationError("no Kwai access token for this pixel")
        token = secret.reveal()
        body: dict[str, Any] = {
            "clickid": item["clickid"],
            "event_name": item["event_name"],
            "pixelId": item["pixelId"],
            "access_token": token,
            "testFlag": False,
            "trackFlag": bool(self.config.test),
            "is_attributed": 1,
            "mmpcode": "PL",
            "pixelSdkVersion": "9.9.9",
        }
        for key in ("properties", "third_party", "currency", "value"):
            if key in item:
                body[key] = item[key]
        return json_request(
            f"{self.config.base_url}/log/common/api",
            body,
            accept="application/json; charset=utf-8",
            secrets=(token,),
        )

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge Kwai's answer (see the module docstring)."""
        data = json_answer("kwai", "result", status, headers, body)
        if isinstance(data, Outcome):
            return data
        result = data.get("result")
        if result == 1:
            return Outcome.ok()
        msg = str(data.get("error_msg") or "")[:300]
        # A platform error code is permanent, known or not: resending an event Kwai has no
        # event id to deduplicate could count it twice. Only transport errors and 5xx retry.
        label = _PERMANENT.get(result, "rejected") if isinstance(result, int) else "rejected"
        return Outcome.permanent(f"kwai {result} ({label}): {msg}")
