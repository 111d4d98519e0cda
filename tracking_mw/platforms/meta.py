"""Meta Conversions API: ``POST {base}/{version}/{pixel}/events``, form-encoded.

The body is ``data=<JSON array of server events>&access_token=…`` (plus
``test_event_code`` in test mode); up to 1,000 events per request, grouped by pixel.

Meta applies whenever it is configured: it matches on IP, user agent, ``fbc``/``fbp`` and
hashed user data, not only on a click id. A website event still needs the visitor's user
agent, the page URL and one more identifier, and must be at most 7 days old (an older one
makes Meta reject the *whole* request), so such events are skipped with a reason.

Answers: 2xx with ``events_received == len(data)`` is ok. Errors come as
``{"error": {"message", "type", "code", "fbtrace_id"}}``: throttling codes (4, 17, 32, 613,
80004) and ``is_transient`` errors retry, other codes (100 invalid parameter, 190 token,
200 permission, ...) are permanent. Token and permission errors (3, 10, 102, 104, 190,
200-299) are about the request, not an event in it: a batch refused for them is not split.
A 2xx body that is not JSON is retried: events carry ``event_id``, so Meta deduplicates a
resend.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from .._json import dumps as _dumps
from .._json import loads as _loads
from .._normalize import meta_hash_cached, normalize_ip_cached
from ..attribution import Attribution
from ..config import MetaConfig, Settings
from ..events import Event
from ..vocabulary import platform_event_name
from ._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    clean_contents,
    default_classification,
    form_encode,
    jsonable,
    not_sent,
    parse_json,
    parse_retry_after,
    platform_config,
    require_money,
    source_url,
)

__all__ = ["MetaAdapter"]

MAX_AGE_SECONDS = 7 * 86400
_THROTTLING = frozenset({4, 17, 32, 613, 80004})
_TRANSIENT = frozenset({1, 2})
# Graph API codes about the token or the app's permissions, whatever the events: 3 (method
# or capability), 10 (permission denied), 102 (session), 104 (no token), 190 (token),
# 200-299 (permissions). https://developers.facebook.com/docs/graph-api/guides/error-handling
_REQUEST_WIDE = frozenset({3, 10, 102, 104, 190, *range(200, 300)})
_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept": "application/json",
}
_HASHED_FIELDS = (
    ("em", "email"),
    ("ph", "phone"),
    ("fn", "first_name"),
    ("ln", "last_name"),
    ("ge", "gender"),
    ("db", "date_of_birth"),
    ("ct", "city"),
    ("st", "state"),
    ("zp", "zip"),
    ("country", "country"),
    ("external_id", "external_id"),
)

_KEY_OF = {attr: key for key, attr in _HASHED_FIELDS}

# custom_data keys made from Event fields; properties cannot set them.
_OWN_FIELDS = frozenset({"value", "currency", "contents"})


class MetaAdapter(Adapter):
    """Meta Conversions API adapter (batches up to 1,000 events per pixel)."""

    name = "meta"
    max_batch = 1000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: MetaConfig = platform_config(settings, "meta", "Meta")
        self._names: dict[str, str | None] = {}
        # How every stored item of this pixel begins (see build_stored).
        self._stored_prefix = '{"pixel_id":' + _dumps(self.config.pixel_id) + ',"event":'

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """The server event for ``event``, or :class:`Skip`."""
        name = self._event_name(event.name)
        if name is None:
            raise not_sent("meta", event.name)
        require_money("meta", name, event)
        if time.time() - event.event_time > MAX_AGE_SECONDS:
            raise Skip("meta takes events at most 7 days old")
        user: dict[str, Any] = {}
        region = self.settings.phone_region
        data = event.user
        # The set fields only (most are None), in UserData's field order.
        for attr, raw in data.__dict__.items():
            key = _KEY_OF.get(attr)
            if raw is not None and key is not None:
                hashed = meta_hash_cached(key, raw, region)
                if hashed is not None:
                    user[key] = hashed
        client = attribution.client
        ip = normalize_ip_cached(client.ip) if client.ip else None
        if ip:
            user["client_ip_address"] = ip
        touch = attribution.touches.get("meta")
        if touch is not None:
            extra = touch.extra
            fbc = extra.get("fbc")
            if not fbc and touch.click_id:
                # The _fbc cookie is missing: build it from fbclid as Meta's pixel would.
                created = (touch.first_seen or int(event.event_time)) * 1000
                fbc = f"fb.1.{created}.{touch.click_id}"
            if fbc:
                user["fbc"] = fbc
            if extra.get("fbp"):
                user["fbp"] = extra["fbp"]
        ua = attribution.client.user_agent
        if not ua:
            raise Skip("meta needs the visitor's user agent for a website event")
        if not user:
            raise Skip("meta needs an identifier besides the user agent (IP, fbc, fbp, email...)")
        user["client_user_agent"] = ua
        url = source_url(event, attribution)
        if not url:
            raise Skip("meta needs the page URL (event_source_url) for a website event")
        server_event: dict[str, Any] = {
            "event_name": name,
            "event_time": int(event.event_time),
            "event_id": event.event_id,
            "action_source": "website",
            "event_source_url": url,
            "user_data": user,
        }
        custom = self._custom_data(event)
        if custom:
            server_event["custom_data"] = custom
        return {"pixel_id": self.config.pixel_id, "event": server_event}

    def _event_name(self, name: str) -> str | None:
        # The vocabulary lookup scans the user's event_map: once per name, then a dict hit.
        cache = self._names
        if name in cache:
            return cache[name]
        found = platform_event_name("meta", name, self.settings.event_map)
        if len(cache) < 1024:  # bounded: names come from code, but stay safe
            cache[name] = found
        return found

    @staticmethod
    def _custom_data(event: Event) -> dict[str, Any]:
        # value, currency and contents come from the Event's own checked fields only: a
        # property of that name ("12,50") would get the whole request rejected (code 100).
        custom: dict[str, Any] = {
            k: v for k, v in (jsonable(event.properties) or {}).items() if k not in _OWN_FIELDS
        }
        if event.value is not None:
            custom["value"] = event.json_value
        if event.currency:
            custom["currency"] = event.currency
        contents = clean_contents(event.contents)
        if contents:
            custom["contents"] = contents
            ids = [c["id"] for c in contents if "id" in c]
            if ids:
                custom.setdefault("content_ids", ids)
                custom.setdefault("content_type", "product")
            custom.setdefault("num_items", sum(int(c.get("quantity", 1)) for c in contents))
        return custom

    def batch_key(self, item: Mapping[str, Any]) -> str:
        """Events of one pixel share a request."""
        return str(item.get("pixel_id") or self.config.pixel_id)

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """``data=[...]&access_token=...`` to the items' pixel."""
        return self._request(self.batch_key(items[0]), _dumps([i["event"] for i in items]))

    builds_stored = True

    def build_stored(self, items_json: Sequence[str]) -> PlatformRequest:
        """:meth:`build` from stored item texts, splicing their ``event`` parts unparsed.

        prepare() makes items of exactly two keys, ``pixel_id`` then ``event``, and the
        outbox stores them as compact JSON, so each text is ``<prefix><event JSON>}``. A
        text of any other shape (another pixel, an item written otherwise) is parsed.
        """
        prefix = self._stored_prefix
        start = len(prefix)
        parts: list[str] = []
        for text in items_json:
            if not (text.startswith(prefix) and text.endswith("}")):
                return self.build([_loads(t) for t in items_json])
            parts.append(text[start:-1])
        return self._request(self.config.pixel_id, "[" + ",".join(parts) + "]")

    def _request(self, pixel: str, data: str) -> PlatformRequest:
        token = self.config.access_token.reveal()
        form = [("data", data), ("access_token", token)]
        if self.config.test_event_code:
            form.append(("test_event_code", self.config.test_event_code))
        url = f"{self.config.base_url}/{self.config.api_version}/{urllib.parse.quote(pixel)}/events"
        return PlatformRequest(
            method="POST",
            url=url,
            headers=dict(_HEADERS),
            # Byte for byte what urllib.parse.urlencode(form) gives, in a fraction of the time.
            body=form_encode(form),
            secrets=(token, urllib.parse.quote_plus(token)),
        )

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge Meta's answer (see the module docstring)."""
        data = parse_json(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            code = err.get("code")
            reason = f"meta error {code}: {str(err.get('message') or '')[:300]}"
            if code in _THROTTLING or code in _TRANSIENT or err.get("is_transient") is True:
                return Outcome.retry(reason, parse_retry_after(headers))
            if status >= 500:
                return Outcome.retry(reason)
            whole = type(code) is int and code in _REQUEST_WIDE
            return Outcome.permanent(reason, request_wide=whole)
        http = default_classification(status, headers)
        if http is not None:
            return http
        if 200 <= status < 300:
            if not isinstance(data, dict):
                return Outcome.retry("meta answered 2xx without a JSON body")
            received = data.get("events_received")
            if received == item_count:
                return Outcome.ok()
            return Outcome.permanent(f"meta received {received} of {item_count} events")
        return Outcome.permanent(f"HTTP {status}")
