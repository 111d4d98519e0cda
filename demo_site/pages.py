"""HTML for the demo shop: a page layout, the attribution panel and receipts.

Plain functions returning strings, every dynamic value through :func:`esc`, so the demo needs
no template engine.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracking_mw.attribution import Attribution

PLATFORM_LABELS = {
    "meta": "Meta",
    "kwai": "Kwai",
    "bigo": "Bigo",
    "rokt": "Rokt",
    "roibest": "ROIBest",
    "tiktok": "TikTok",
}


def esc(value: object) -> str:
    """HTML-escape any value for text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def money(value: float, currency: str = "BRL") -> str:
    """A price as the shop shows it."""
    symbol = "R$" if currency == "BRL" else currency
    return f"{symbol} {value:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")


def ago(ts: float | int | None) -> str:
    """Unix seconds as a short relative time."""
    if not ts:
        return "-"
    d = max(0.0, time.time() - float(ts))
    if d < 60:
        return f"{int(d)} s ago"
    if d < 3600:
        return f"{int(d // 60)} min ago"
    if d < 86400:
        return f"{int(d // 3600)} h ago"
    return f"{int(d // 86400)} d ago"


def attribution_panel(attribution: Attribution | None, consent: bool) -> str:
    """What ``current_attribution()`` holds for this visitor, as a sidebar card."""
    parts = ['<section class="card" id="attribution"><h3>Your attribution</h3>']
    parts.append(
        '<p class="muted" style="margin-top:0">What <code>current_attribution()</code> '
        "returns for this request (kept in the signed <code>_tmw</code> cookie).</p>"
    )
    if not consent or attribution is None:
        parts.append(
            '<p><span class="pill bad">tracking refused</span> The consent hook said no: '
            "nothing is captured, stored or sent.</p></section>"
        )
        return "".join(parts)
    parts.append(f'<dl class="kv"><dt>visitor id</dt><dd>{esc(attribution.visitor_id)}</dd>')
    client = attribution.client
    if client.ip:
        parts.append(f"<dt>client ip</dt><dd>{esc(client.ip)}</dd>")
    if client.user_agent:
        ua = client.user_agent if len(client.user_agent) < 90 else client.user_agent[:87] + "..."
        parts.append(f"<dt>user agent</dt><dd>{esc(ua)}</dd>")
    parts.append("</dl>")
    if not attribution.touches:
        parts.append(
            '<p class="muted">No ad click yet. Pick one on the <a href="/ads">ad clicks</a> '
            "page.</p>"
        )
    for platform, touch in attribution.touches.items():
        parts.append(
            f'<div class="touch" data-platform="{esc(platform)}">'
            f"<strong>{esc(PLATFORM_LABELS.get(platform, platform))}</strong>"
            '<dl class="kv">'
        )
        if touch.click_id:
            parts.append(f'<dt>click id</dt><dd class="click-id">{esc(touch.click_id)}</dd>')
        if touch.pixel_id:
            parts.append(f"<dt>pixel id</dt><dd>{esc(touch.pixel_id)}</dd>")
        for k, v in touch.extra.items():
            parts.append(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>")
        parts.append(
            f"<dt>first seen</dt><dd>{esc(ago(touch.first_seen))}</dd>"
            f"<dt>last seen</dt><dd>{esc(ago(touch.last_seen))}</dd></dl></div>"
        )
    parts.append("</section>")
    return "".join(parts)


def receipt_card(entries: Sequence[Mapping[str, Any]]) -> str:
    """The receipts of the ``track()`` calls the last action made."""
    if not entries:
        return ""
    parts = ['<section class="card" id="receipts"><h3>What track() returned</h3>']
    for entry in entries:
        parts.append(
            f'<div class="receipt" data-event="{esc(entry["event"])}">'
            f"<strong>{esc(entry['event'])}</strong> "
            f'<span class="muted mono">{esc(entry.get("event_id") or "")}</span>'
        )
        if entry.get("error"):
            parts.append(f'<div class="error">{esc(entry["error"])}</div>')
        queued: Iterable[str] = entry.get("queued") or []
        for platform in queued:
            parts.append(
                f'<div><span class="pill ok">queued</span> '
                f"{esc(PLATFORM_LABELS.get(platform, platform))}</div>"
            )
        skipped: Mapping[str, str] = entry.get("skipped") or {}
        for platform, reason in skipped.items():
            parts.append(
                f'<div><span class="pill skip">skipped</span> '
                f"{esc(PLATFORM_LABELS.get(platform, platform))}: "
                f'<span class="muted">{esc(reason)}</span></div>'
            )
        if entry.get("note"):
            parts.append(f'<div class="muted">{esc(entry["note"])}</div>')
        parts.append("</div>")
    parts.append(
        '<p class="muted" style="margin-bottom:0">Deliveries happen in the background: '
        'watch them in the <a href="/_tracking/" target="_blank">inspector</a>.</p></section>'
    )
    return "".join(parts)


def consent_banner(choice: str | None) -> str:
    """Ask once; afterwards a small line to change the choice."""
    if choice is None:
        return (
            '<div class="banner" id="consent-banner"><span>This shop measures which ad brought '
            "you here and tells the ad platform about your purchase.</span>"
            '<form method="post" action="/consent"><input type="hidden" name="choice" value="yes">'
            '<button type="submit" id="consent-accept">Accept</button></form>'
            '<form method="post" action="/consent"><input type="hidden" name="choice" value="no">'
            '<button type="submit" class="secondary" id="consent-refuse">Refuse</button></form>'
            "</div>"
        )
    return ""


def layout(
    title: str,
    body: str,
    *,
    attribution: Attribution | None,
    consent: bool,
    consent_choice: str | None,
    cart_count: int,
    receipts: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A whole page: header, consent banner, content and the tracking sidebar."""
    change = ""
    if consent_choice is not None:
        other = "no" if consent_choice == "yes" else "yes"
        label = "refuse tracking" if other == "no" else "allow tracking"
        change = (
            '<form method="post" action="/consent" style="margin-top:8px">'
            f'<input type="hidden" name="choice" value="{other}">'
            f'<button type="submit" class="secondary" id="consent-toggle">{label}</button></form>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · Café Tracker shop</title>
<link rel="stylesheet" href="/static/style.css">
</head><body>
<header class="top"><div class="wrap">
<a class="logo" href="/">☕ Café Tracker</a>
<nav><a href="/">Shop</a><a href="/ads">Ad clicks</a>
<a href="/cart" id="nav-cart">Cart ({cart_count})</a>
<a href="/_tracking/" target="_blank">Inspector ↗</a></nav>
</div></header>
<main class="wrap">
<div>{consent_banner(consent_choice)}{body}</div>
<aside>{receipt_card(receipts)}{attribution_panel(attribution, consent)}
<section class="card"><h3>Pixel cookies</h3>
<p class="muted" style="margin-top:0">Written in the browser by <code>/static/pixels.js</code>,
standing in for the Bigo and Meta pixels.</p>
<pre id="pixel-cookies">(none yet)</pre>
<div class="muted">consent:
<strong id="consent-state">{"given" if consent else "refused"}</strong></div>
{change}
</section>
</aside>
</main>
<script src="/static/pixels.js"></script>
</body></html>"""


def pretty_json(data: object) -> str:
    """Indented JSON for a <pre> block."""
    return esc(json.dumps(data, indent=2, ensure_ascii=False, default=str))
