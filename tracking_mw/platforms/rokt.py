"""Rokt Event API (mParticle): batches to ``{base}/v2/events`` or ``{base}/v2/bulkevents``.

One item is one mParticle *batch*: ``user_identities`` (``email`` raw, trimmed and
lowercased, plus ``other`` = its SHA-256; one of them is required, so Rokt applies only to
events whose user data has an email), ``other2`` and
``integration_attributes["1277"].passbackconversiontrackingid`` = the ``rtid`` when the
visitor came with one, ``user_attributes`` and one ``custom_event`` named ``conversion``
whose ``conversiontype`` comes from the vocabulary. ``confirmationref`` is the event id, so
Rokt deduplicates resends; ``source_message_id`` is the event id too.

One batch goes to ``/v2/events`` as an object; 2 to 100 go to ``/v2/bulkevents`` as an array.
To keep a full request under Rokt's 256 KB, a batch is kept under 2.5 KB by dropping the
event's own extra attributes (largest first) when needed.
Auth is HTTP Basic with key and secret (the document's ``key-secret`` header example is
wrong). ``environment`` is ``RoktConfig.environment`` (``development`` in test mode).

Answers: 202 (any 2xx) is ok; 400, 401, 403 and other 4xx are permanent; 429 is retried after
``Retry-After`` seconds when given; 5xx is retried.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._normalize import (
    is_hashed,
    normalize_email,
    normalize_ip,
    phone_e164,
    sha256_hex,
)
from ..attribution import Attribution
from ..config import RoktConfig, Settings
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
    not_sent,
    platform_config,
    scalar_properties,
)

__all__ = ["RoktAdapter"]

_PHONE_TEXT = re.compile(r"^[+0-9() .\-]{7,24}$")
# Keys this adapter sets itself; event properties cannot override them.
_RESERVED = frozenset({"conversiontype", "confirmationref", "amount", "currency"})


# Rokt takes 256 KB per request and a request carries up to 100 batches: one batch must
# stay under 2.5 KB so that any full request fits.
MAX_BATCH_BYTES = 2500
_OWN_ATTRIBUTES = frozenset({*_RESERVED, "quantity", "sku"})


_ORDER_KEYS = ("transaction_id", "order_id")


def _transaction_id(props: Mapping[str, Any]) -> str | None:
    for key in _ORDER_KEYS:
        v = props.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
            return str(v).strip()[:256]
    return None


def _size(obj: Any) -> int:
    return len(json_bytes(obj))


def _fit(batch: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
    """Drop the event's own extra attributes, largest first, until the batch fits."""
    extras = sorted(
        (k for k in custom if k not in _OWN_ATTRIBUTES),
        key=lambda k: len(str(custom[k])),
        reverse=True,
    )
    while _size(batch) > MAX_BATCH_BYTES and extras:
        del custom[extras.pop(0)]
    device = batch.get("device_info")
    if _size(batch) > MAX_BATCH_BYTES and device:
        # A user agent this long is not a browser's; matching does not need it.
        del batch["device_info"]
    return batch


class RoktAdapter(Adapter):
    """Rokt Event API adapter (up to 100 batches per request)."""

    name = "rokt"
    max_batch = 100

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: RoktConfig = platform_config(settings, "rokt", "Rokt")

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """One mParticle batch for ``event``, without ``environment``, or :class:`Skip`."""
        raw_email = event.user.email
        identities: dict[str, str] = {}
        if raw_email and is_hashed(raw_email):
            identities["other"] = raw_email.strip().lower()
        else:
            email = normalize_email(raw_email)
            if email:
                identities["email"] = email
                identities["other"] = sha256_hex(email)
        if not identities:
            raise Skip("rokt needs the user's email")
        conversion = platform_event_name("rokt", event.name, self.settings.event_map)
        if conversion is None:
            raise not_sent("rokt", event.name)
        rtid = attribution.click_id("rokt")
        if rtid:
            identities["other2"] = rtid
        batch: dict[str, Any] = {"user_identities": identities}
        attrs: dict[str, str] = {}
        if event.user.first_name and event.user.first_name.strip():
            attrs["firstname"] = event.user.first_name.strip()[:4096]
        if event.user.last_name and event.user.last_name.strip():
            attrs["lastname"] = event.user.last_name.strip()[:4096]
        mobile = phone_e164(event.user.phone, self.settings.phone_region)
        if mobile is None and event.user.phone and _PHONE_TEXT.match(event.user.phone.strip()):
            # Rokt takes numbers "formatted either as 3053211654, or +1 (323) 867-5309":
            # one that phonenumbers cannot validate is still sent as written.
            mobile = event.user.phone.strip()
        if mobile:
            attrs["mobile"] = mobile
        ip = normalize_ip(attribution.client.ip)
        if ip:
            attrs["ipaddress"] = ip
        if attrs:
            batch["user_attributes"] = attrs
        if attribution.client.user_agent:
            batch["device_info"] = {"http_header_user_agent": attribution.client.user_agent}
        if ip:
            batch["ip"] = ip
        if rtid:
            batch["integration_attributes"] = {"1277": {"passbackconversiontrackingid": rtid}}
        custom: dict[str, Any] = {
            k: v
            for k, v in scalar_properties(event.properties).items()
            if k.lower() not in _RESERVED
        }
        custom["conversiontype"] = conversion
        custom["confirmationref"] = event.event_id
        # One of the fields Rokt asks for: the order's id when the event names one.
        custom.setdefault("transactionid", _transaction_id(event.properties) or event.event_id)
        if event.value is not None:
            custom["amount"] = event.json_value
        if event.currency:
            custom["currency"] = event.currency
        contents = clean_contents(event.contents)
        if contents:
            custom.setdefault("quantity", sum(int(c.get("quantity", 1)) for c in contents))
            if len(contents) == 1 and "id" in contents[0]:
                # Rokt: "If more than one item is present, do not provide any SKUs."
                custom.setdefault("sku", contents[0]["id"])
        batch["events"] = [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "conversion",
                    "custom_event_type": "transaction",
                    "source_message_id": event.event_id,
                    "timestamp_unixtime_ms": round(event.event_time * 1000),
                    "custom_attributes": custom,
                },
            }
        ]
        return _fit(batch, custom)

    def _auth(self) -> str:
        pair = f"{self.config.api_key.reveal()}:{self.config.api_secret.reveal()}"
        return base64.b64encode(pair.encode("utf-8")).decode("ascii")

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """``/v2/events`` for one batch, ``/v2/bulkevents`` for 2..100."""
        batches = [{"environment": self.config.environment, **dict(i)} for i in items]
        token = self._auth()
        if len(batches) == 1:
            url, payload = f"{self.config.base_url}/v2/events", json_bytes(batches[0])
        else:
            url, payload = f"{self.config.base_url}/v2/bulkevents", json_bytes(batches)
        return PlatformRequest(
            method="POST",
            url=url,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Basic {token}",
            },
            body=payload,
            secrets=(
                token,
                self.config.api_key.reveal(),
                self.config.api_secret.reveal(),
            ),
        )

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge Rokt's answer (see the module docstring)."""
        http = default_classification(status, headers)
        if http is not None:
            return http
        if 200 <= status < 300:
            return Outcome.ok()
        reasons = {400: "bad request", 401: "auth header missing", 403: "auth invalid"}
        text = body[:300].decode("utf-8", "replace")
        return Outcome.permanent(f"rokt HTTP {status} ({reasons.get(status, 'rejected')}): {text}")
