"""TikTok Events API 2.0 (optional): ``POST {base}/open_api/v1.3/event/track/``.

Header ``Access-Token``; body ``{event_source: "web", event_source_id: <pixel>, data: [...]}``
with up to 1,000 events per request (``test_event_code`` added in test mode). Each event:
``event``, ``event_time`` (seconds), ``event_id``, ``user`` (``ttclid``, ``ttp``, SHA-256 of
the normalized ``email``, of the E.164 ``phone`` and of ``external_id``; raw ``ip`` and
``user_agent``), ``page`` (``url``, ``referrer``) and ``properties`` (``currency``,
``value``, ``contents``, ...).

TikTok applies only when the visitor came with a ``ttclid`` or has the ``_ttp`` cookie.

Answers: ``code == 0`` is ok; 40100 (too many requests) and 5xxxx codes are retried; other
codes are permanent. A 2xx body that is not JSON is retried (events carry ``event_id``,
which TikTok deduplicates on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._normalize import is_hashed, meta_hash, normalize_ip, phone_e164, sha256_hex
from ..attribution import Attribution
from ..config import Settings, TiktokConfig
from ..events import Event
from ..vocabulary import platform_event_name
from ._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    clean_contents,
    default_classification,
    json_bytes,
    jsonable,
    not_sent,
    parse_json,
    parse_retry_after,
    platform_config,
    source_url,
)

__all__ = ["TiktokAdapter"]


class TiktokAdapter(Adapter):
    """TikTok Events API 2.0 adapter (up to 1,000 events per request)."""

    name = "tiktok"
    max_batch = 1000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: TiktokConfig = platform_config(settings, "tiktok", "TikTok")

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """One entry of ``data``, or :class:`Skip`."""
        touch = attribution.touch("tiktok")
        ttclid = touch.click_id if touch else None
        ttp = touch.extra.get("ttp") if touch else None
        if not ttclid and not ttp:
            raise Skip("no TikTok ttclid or _ttp")
        name = platform_event_name("tiktok", event.name, self.settings.event_map)
        if name is None:
            raise not_sent("tiktok", event.name)
        user: dict[str, Any] = {}
        if ttclid:
            user["ttclid"] = ttclid
        if ttp:
            user["ttp"] = ttp
        email = meta_hash("em", event.user.email)
        if email:
            user["email"] = email
        phone = event.user.phone
        if phone and is_hashed(phone):
            user["phone"] = phone.strip().lower()
        else:
            e164 = phone_e164(phone, self.settings.phone_region)
            if e164:
                user["phone"] = sha256_hex(e164)
        ext = meta_hash("external_id", event.user.external_id)
        if ext:
            user["external_id"] = ext
        ip = normalize_ip(attribution.client.ip)
        if ip:
            user["ip"] = ip
        if attribution.client.user_agent:
            user["user_agent"] = attribution.client.user_agent
        item: dict[str, Any] = {
            "event": name,
            "event_time": int(event.event_time),
            "event_id": event.event_id,
            "user": user,
        }
        page: dict[str, str] = {}
        url = source_url(event, attribution)
        if url:
            page["url"] = url
        if attribution.client.referrer:
            page["referrer"] = attribution.client.referrer
        if page:
            item["page"] = page
        props: dict[str, Any] = dict(jsonable(event.properties) or {})
        if event.currency:
            props["currency"] = event.currency
        if event.value is not None:
            props["value"] = event.json_value
        contents = clean_contents(event.contents)
        if contents:
            props["contents"] = [
                {
                    ("content_id" if k == "id" else "price" if k == "item_price" else k): v
                    for k, v in c.items()
                }
                for c in contents
            ]
            props.setdefault("content_type", "product")
        if props:
            item["properties"] = props
        return item

    def batch_key(self, item: Mapping[str, Any]) -> str:
        """One pixel per configuration: every item may share a request."""
        return self.config.pixel_id

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """The Events API 2.0 body with the ``Access-Token`` header."""
        token = self.config.access_token.reveal()
        body: dict[str, Any] = {
            "event_source": "web",
            "event_source_id": self.config.pixel_id,
            "data": [dict(i) for i in items],
        }
        if self.config.test_event_code:
            body["test_event_code"] = self.config.test_event_code
        return PlatformRequest(
            method="POST",
            url=f"{self.config.base_url}/open_api/v1.3/event/track/",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Access-Token": token,
            },
            body=json_bytes(body),
            secrets=(token,),
        )

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge TikTok's answer (see the module docstring)."""
        http = default_classification(status, headers)
        if http is not None:
            return http
        data = parse_json(body)
        if not isinstance(data, dict) or "code" not in data:
            if 200 <= status < 300:
                return Outcome.retry("tiktok answered without a code")
            return Outcome.permanent(f"HTTP {status}")
        code = data.get("code")
        msg = str(data.get("message") or "")[:300]
        if code == 0:
            return Outcome.ok()
        if code == 40100 or (isinstance(code, int) and 50000 <= code <= 59999):
            return Outcome.retry(f"tiktok {code}: {msg}", parse_retry_after(headers))
        return Outcome.permanent(f"tiktok {code}: {msg}")
