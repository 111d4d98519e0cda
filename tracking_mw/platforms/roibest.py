"""ROIBest reporting API: ``POST {base}/report/fb/event`` JSON ``{link_id, event_name, extra}``.

The same path serves every ad channel; ROIBest routes the event to the channel its link
belongs to, so ``event_name`` must be in *that* channel's vocabulary: Facebook names for a
Facebook link, ``EVENT_*`` for Kwai, ``ec_*`` for Bigo. The channel is
``RoibestConfig.channel`` when set, else inferred from the other click ids captured with the
link (:func:`tracking_mw.vocabulary.roibest_channel`), else Meta's names. User overrides are
read from ``Settings.event_map["roibest"]``.

ROIBest applies only when the visitor came with a link id. ``extra`` carries ``currency`` and
``value`` (required for Purchase on Facebook links) plus the event's own properties. A Kwai
link forwards to Kwai, which takes only BRL, IDR and USD: other currencies are skipped.

Answers: ``code == 0`` is ok; any other code is permanent with ``msg`` as the reason. A 2xx
body that is not JSON is retried; other 4xx are permanent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..attribution import Attribution
from ..config import RoibestConfig, Settings
from ..events import Event
from ..vocabulary import platform_event_name, roibest_channel
from ._base import (
    Adapter,
    Outcome,
    PlatformRequest,
    Skip,
    json_answer,
    json_request,
    jsonable,
    not_sent,
    platform_config,
    require_money,
)
from .kwai import KWAI_CURRENCIES

__all__ = ["RoibestAdapter"]


class RoibestAdapter(Adapter):
    """ROIBest reporting adapter (one event per request)."""

    name = "roibest"
    max_batch = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config: RoibestConfig = platform_config(settings, "roibest", "ROIBest")

    def prepare(self, event: Event, attribution: Attribution) -> dict[str, Any]:
        """The ROIBest body, or :class:`Skip`."""
        link_id = attribution.click_id("roibest")
        if not link_id:
            raise Skip("no ROIBest link id")
        channel = roibest_channel(attribution, self.config.channel)
        name = platform_event_name("roibest", event.name, self.settings.event_map, channel=channel)
        if name is None:
            raise not_sent("roibest", event.name)
        require_money("roibest", name, event)
        if channel == "kwai" and event.currency and event.currency not in KWAI_CURRENCIES:
            raise Skip(f"roibest (kwai link) takes only BRL, IDR or USD, not {event.currency}")
        # currency and value come from the Event's checked fields only (code 1004 otherwise).
        extra: dict[str, Any] = {
            k: v
            for k, v in (jsonable(event.properties) or {}).items()
            if k not in ("currency", "value")
        }
        if event.currency:
            extra["currency"] = event.currency
        if event.value is not None:
            extra["value"] = event.json_value
        item: dict[str, Any] = {"link_id": link_id, "event_name": name}
        if extra:
            item["extra"] = extra
        return item

    def build(self, items: Sequence[Mapping[str, Any]]) -> PlatformRequest:
        """The item as the JSON body (no auth is documented)."""
        return json_request(f"{self.config.base_url}/report/fb/event", dict(items[0]))

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, item_count: int
    ) -> Outcome:
        """Judge ROIBest's answer (see the module docstring)."""
        data = json_answer("roibest", "code", status, headers, body)
        if isinstance(data, Outcome):
            return data
        if data.get("code") == 0:
            return Outcome.ok()
        return Outcome.permanent(f"roibest {data.get('code')}: {str(data.get('msg') or '')[:300]}")
