"""A debug page that shows a visitor's attribution and every delivery, live.

Mount it in a development or staging app::

    from starlette.routing import Mount
    from tracking_mw.inspector import Inspector

    routes = [..., Mount("/_tracking", app=Inspector(settings, enabled=True))]

.. warning::
    The inspector exposes delivery data: the events sent, the platforms' answers, the
    visitors' click ids and (hashed) user data. It is **off** unless ``enabled=True`` (every
    path answers 404), and it must never be mounted in production without authentication in
    front of it.

Pages (relative to the mount point):

* ``/`` the page itself, refreshing its contents every second with a small fetch;
* ``/api/deliveries`` JSON: the recent deliveries (request rebuilt with credentials masked,
  the platform's answer, status, attempts) and per-platform counters; ``?platform=``,
  ``?event_id=`` and ``?limit=`` filter it;
* ``/api/attribution`` JSON: the requesting browser's attribution.

Mounted inside :class:`~tracking_mw.asgi.TrackingMiddleware` (the usual case) it reads the
visitor's attribution and the runtime of that middleware; elsewhere it reads the runtime of
``settings`` and decodes the visitor's session cookie with the same settings.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ._context import current_state
from ._runtime import Runtime
from ._types import ASGIApp, Receive, Scope, Send
from .attribution import Attribution
from .config import Settings
from .session import SessionCodec

__all__ = ["Inspector"]

log = logging.getLogger("tracking_mw")

_MAX_LIMIT = 500
_SECRET_HEADERS = ("authorization", "access-token", "x-api-key", "cookie")


class Inspector:
    """ASGI app showing attribution and deliveries; 404 everywhere unless ``enabled``.

    ``settings`` picks the runtime (outbox, adapters) to show when the inspector is not
    mounted inside the tracking middleware; inside it, the middleware's own runtime is used.

    It exposes delivery data: never mount it in production without authentication.
    """

    def __init__(self, settings: Settings | None = None, *, enabled: bool = False) -> None:
        self.settings = settings
        self.enabled = bool(enabled)
        self._codec = SessionCodec(settings) if settings is not None else None
        self._app: ASGIApp = Starlette(
            routes=[
                Route("/", self._page),
                Route("/partial", self._partial),
                Route("/api/deliveries", self._api_deliveries),
                Route("/api/attribution", self._api_attribution),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The host app owns startup/shutdown; answer so a direct mount does not hang.
            await _lifespan_noop(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self.enabled:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    # ---- data ------------------------------------------------------------------------------

    def _runtime(self) -> Runtime | None:
        state = current_state()
        if state is not None and state.runtime is not None:
            return state.runtime
        if self.settings is not None:
            return Runtime.for_settings(self.settings)
        return Runtime.default()

    def _attribution(self, request: Request) -> tuple[Attribution | None, str]:
        """The requesting browser's attribution and where it came from."""
        state = current_state()
        if state is not None:
            if not state.consent:
                return None, "consent refused: nothing is captured for this browser"
            return state.attribution, "current_attribution()"
        return _decode_cookie(self._codec, self.settings, request), "session cookie"

    def deliveries(
        self, *, limit: int = 100, platform: str | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        """The JSON document ``/api/deliveries`` answers."""
        runtime = self._runtime()
        if runtime is None:
            return {"deliveries": [], "counters": {}, "generated_at": time.time()}
        # Ask for more than shown when filtering, so a filter finds older matches too.
        fetch = _MAX_LIMIT if (platform or event_id) else limit
        try:
            views = runtime.outbox.recent(fetch)
            counters = runtime.counters()
        except Exception as exc:  # a store that is down is shown, never a 500
            log.warning("tracking_mw: inspector cannot read the outbox: %s", type(exc).__name__)
            return {
                "deliveries": [],
                "counters": {},
                "error": f"cannot read the outbox: {type(exc).__name__}",
                "generated_at": time.time(),
            }
        rows: list[dict[str, Any]] = []
        for view in views:
            if platform and view.platform != platform:
                continue
            if event_id and view.event_id != event_id:
                continue
            row = view.to_dict()
            row.pop("item", None)  # shown as the request the platform receives instead
            row["request"] = _request_view(runtime, view.platform, view.item)
            row["response"] = _pretty(view.last_response) if view.last_response else None
            rows.append(row)
            if len(rows) >= limit:
                break
        return {"deliveries": rows, "counters": counters, "generated_at": time.time()}

    # ---- endpoints -------------------------------------------------------------------------

    async def _api_deliveries(self, request: Request) -> Response:
        q = request.query_params
        try:
            limit = max(1, min(_MAX_LIMIT, int(q.get("limit", "100"))))
        except ValueError:
            limit = 100
        # The outbox is read in a worker thread: a Redis that hangs must not hold the event
        # loop (and every other request) for its timeout, once a second per open tab.
        data = await run_in_threadpool(
            self.deliveries,
            limit=limit,
            platform=q.get("platform") or None,
            event_id=q.get("event_id") or None,
        )
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    async def _api_attribution(self, request: Request) -> Response:
        attribution, source = self._attribution(request)
        return JSONResponse(
            {"source": source, "attribution": attribution.to_dict() if attribution else None},
            headers={"Cache-Control": "no-store"},
        )

    async def _partial(self, request: Request) -> Response:
        live = await self._live_html(request)
        return HTMLResponse(live, headers={"Cache-Control": "no-store"})

    async def _page(self, request: Request) -> Response:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        live = await self._live_html(request)
        body = _PAGE.replace("__LIVE__", live).replace(
            "__PARTIAL__", html.escape(base + "/partial", quote=True)
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    # ---- rendering -------------------------------------------------------------------------

    async def _live_html(self, request: Request) -> str:
        attribution, source = self._attribution(request)
        data = await run_in_threadpool(self.deliveries, limit=100)
        error = (
            f'<section class="card bad-text" id="error">{_esc(data["error"])}</section>'
            if data.get("error")
            else ""
        )
        return (
            error
            + _attribution_html(attribution, source)
            + _counters_html(data["counters"])
            + _deliveries_html(data["deliveries"])
        )


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _decode_cookie(
    codec: SessionCodec | None, settings: Settings | None, request: Request
) -> Attribution | None:
    """Decode the visitor's session cookie with the middleware's codec (None if absent/bad)."""
    if codec is None or settings is None:
        return None
    try:
        return codec.decode(request.cookies.get(settings.cookie_name))
    except Exception:  # a bad cookie is no cookie, here as in the middleware
        return None


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _request_view(runtime: Runtime, platform: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The HTTP request the platform receives for this item, credentials masked."""
    adapter = runtime.adapters.get(platform)
    if adapter is None:
        return {"error": "platform no longer configured", "body": _pretty(json.dumps(item))}
    try:
        req = adapter.build([item])
    except Exception as exc:  # shown, never raised: the page must keep working
        return {"error": f"could not rebuild the request: {type(exc).__name__}"}
    headers = {}
    for k, v in req.headers.items():
        masked = "***" if k.lower() in _SECRET_HEADERS else _mask(v, req.secrets)
        headers[k] = masked
    body = req.masked_body()
    return {
        "method": req.method,
        "url": _mask(req.url, req.secrets),
        "headers": headers,
        "body": body,
        "pretty": _pretty(body),
    }


def _pretty(text: str | None) -> str:
    """JSON indented; a form body (Meta) as its fields with ``data`` parsed; else as is."""
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    if "=" in text and "{" not in text.split("=", 1)[0]:
        fields: dict[str, Any] = {}
        for k, v in parse_qsl(text, keep_blank_values=True):
            try:
                fields[k] = json.loads(v) if v[:1] in "[{" else v
            except ValueError:
                fields[k] = v
        if fields:
            return json.dumps(fields, indent=2, ensure_ascii=False)
    return text


def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = time.time() - float(ts)
    if d < 0:
        return f"in {max(0, int(-d))} s"
    if d < 60:
        return f"{int(d)} s ago"
    if d < 3600:
        return f"{int(d // 60)} min ago"
    return f"{int(d // 3600)} h ago"


def _attribution_html(attribution: Attribution | None, source: str) -> str:
    parts = [
        '<section class="card" id="attribution"><h2>This browser\'s attribution</h2>'
        f'<p class="muted">from {_esc(source)}</p>'
    ]
    if attribution is None:
        parts.append("<p>No attribution for this browser.</p></section>")
        return "".join(parts)
    parts.append(f"<p>visitor id <code>{_esc(attribution.visitor_id)}</code></p>")
    if not attribution.touches:
        parts.append("<p>No ad click captured yet.</p></section>")
        return "".join(parts)
    parts.append(
        "<table><tr><th>platform</th><th>click id</th><th>pixel id</th><th>extra</th>"
        "<th>first seen</th><th>last seen</th><th>landing</th></tr>"
    )
    for platform, t in attribution.touches.items():
        extra = "<br>".join(f"{_esc(k)}={_esc(v)}" for k, v in t.extra.items())
        parts.append(
            f'<tr data-platform="{_esc(platform)}"><td><strong>{_esc(platform)}</strong></td>'
            f'<td class="mono wrap">{_esc(t.click_id)}</td><td class="mono">{_esc(t.pixel_id)}</td>'
            f'<td class="mono wrap">{extra}</td><td>{_ago(t.first_seen)}</td>'
            f'<td>{_ago(t.last_seen)}</td><td class="mono wrap">{_esc(t.landing_url)}</td></tr>'
        )
    parts.append("</table></section>")
    return "".join(parts)


_COUNTER_COLUMNS = ("accepted", "delivered", "retried", "dead", "pending")


def _counters_html(counters: Mapping[str, Mapping[str, float]]) -> str:
    parts = ['<section class="card" id="counters"><h2>Per platform</h2>']
    if not counters:
        parts.append("<p>No platform configured.</p></section>")
        return "".join(parts)
    parts.append(
        "<table><tr><th>platform</th>"
        + "".join(f'<th class="num">{c}</th>' for c in _COUNTER_COLUMNS)
        + '<th class="num">oldest pending</th></tr>'
    )
    for platform, c in counters.items():
        cells = "".join(
            f'<td class="num" data-counter="{c_name}">{int(c.get(c_name, 0))}</td>'
            for c_name in _COUNTER_COLUMNS
        )
        age = float(c.get("oldest_pending_age", 0) or 0)
        parts.append(
            f'<tr data-platform="{_esc(platform)}"><td><strong>{_esc(platform)}</strong></td>'
            f'{cells}<td class="num">{f"{age:.1f} s" if age else "-"}</td></tr>'
        )
    parts.append("</table></section>")
    return "".join(parts)


_STATUS_CLASS = {"delivered": "ok", "pending": "wait", "retrying": "warn", "dead": "bad"}


def _deliveries_html(rows: list[dict[str, Any]]) -> str:
    parts = [
        '<section class="card" id="deliveries"><h2>Deliveries</h2>'
        '<p class="muted">Newest first. <em>request</em> shows the HTTP request as the platform '
        "receives it (credentials masked) and the platform's answer.</p>"
    ]
    if not rows:
        parts.append("<p>No delivery yet: track an event.</p></section>")
        return "".join(parts)
    parts.append(
        "<table><tr><th>created</th><th>platform</th><th>event</th><th>status</th>"
        '<th class="num">attempts</th><th>answer</th><th></th></tr>'
    )
    for r in rows:
        status = str(r["status"])
        req = r.get("request") or {}
        detail = []
        if req.get("error"):
            detail.append(f'<p class="bad-text">{_esc(req["error"])}</p>')
        if req.get("url"):
            detail.append(
                f'<div class="label">request</div><pre>{_esc(req.get("method"))} '
                f"{_esc(req.get('url'))}\n"
                + "".join(f"{_esc(k)}: {_esc(v)}\n" for k, v in req.get("headers", {}).items())
                + f"\n{_esc(req.get('pretty') or req.get('body'))}</pre>"
            )
        if r.get("last_status") is not None or r.get("response"):
            detail.append(
                f'<div class="label">answer (HTTP {_esc(r.get("last_status"))})</div>'
                f'<pre class="answer">{_esc(r.get("response"))}</pre>'
            )
        if r.get("last_error"):
            detail.append(
                f'<div class="label">last error</div><pre class="bad-text">'
                f"{_esc(r['last_error'])}</pre>"
            )
        if status in ("pending", "retrying") and r.get("next_attempt_at"):
            detail.append(f'<p class="muted">next attempt {_ago(r["next_attempt_at"])}</p>')
        key = _esc(r["record_id"])
        answer = "-" if r.get("last_status") is None else f"HTTP {r['last_status']}"
        parts.append(
            f'<tr class="delivery" id="d-{key}" data-key="{key}" '
            f'data-platform="{_esc(r["platform"])}" data-event-id="{_esc(r["event_id"])}" '
            f'data-status="{_esc(status)}">'
            f"<td>{_ago(r['created_at'])}</td><td><strong>{_esc(r['platform'])}</strong></td>"
            f"<td>{_esc(r['event_name'])} "
            f'<span class="muted mono">{_esc(r["event_id"])}</span></td>'
            f'<td><span class="status pill {_STATUS_CLASS.get(status, "")}">{_esc(status)}'
            f'</span></td><td class="num">{int(r["attempts"])}</td><td>{_esc(answer)}</td>'
            f'<td><button type="button" class="toggle" data-key="{key}">request</button></td></tr>'
            f'<tr class="detail" data-key="{key}" hidden><td colspan="7">'
            f"{''.join(detail)}</td></tr>"
        )
    parts.append("</table></section>")
    return "".join(parts)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tracking_mw inspector</title>
<style>
:root { --ink:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7fa;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:var(--bg); }
header { background:#141a29; color:#fff; padding:12px 24px; display:flex; gap:16px;
  align-items:center; }
header h1 { font-size:18px; margin:0; }
header .warn { background:#9a6700; color:#fff; border-radius:999px; padding:2px 10px;
  font-size:12px; }
header .live { margin-left:auto; font-size:12px; color:#c9d3ff; }
header .dot { display:inline-block; width:8px; height:8px; border-radius:50%;
  background:#2da44e; margin-right:6px; }
main { max-width:1280px; margin:0 auto; padding:20px 24px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:14px 18px;
  margin-bottom:16px; }
.card h2 { font-size:16px; margin:0 0 6px; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:13px; }
tr.detail td { background:#fafbfd; padding:8px 12px; }
button.toggle { font:inherit; font-size:12px; border:1px solid var(--line); background:#fff;
  border-radius:6px; padding:1px 8px; cursor:pointer; color:#2f5bea; }
button.toggle.open { background:#2f5bea; color:#fff; border-color:#2f5bea; }
.num { text-align:right; font-variant-numeric:tabular-nums; }
.mono, pre, code { font-family:var(--mono); font-size:12px; }
.wrap { word-break:break-all; max-width:340px; }
.muted { color:var(--muted); }
pre { background:#f1f3f7; border-radius:7px; padding:8px 10px; white-space:pre-wrap;
  word-break:break-all; margin:4px 0 10px; max-height:420px; overflow:auto; }
.label { font-size:12px; font-weight:600; color:var(--muted); text-transform:uppercase;
  letter-spacing:.04em; }
.pill { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px;
  font-weight:600; background:#eef1f8; }
.pill.ok { background:#dafbe1; color:#1a7f37; }
.pill.warn { background:#fff8c5; color:#9a6700; }
.pill.wait { background:#ddf4ff; color:#0969da; }
.pill.bad { background:#ffebe9; color:#cf222e; }
.bad-text { color:#cf222e; }
</style></head><body>
<header><h1>tracking_mw inspector</h1>
<span class="warn">debug tool: shows delivery data, never expose it in production</span>
<span class="live"><span class="dot" id="live-dot"></span>live, updated
<span id="updated">now</span></span></header>
<main id="live">__LIVE__</main>
<script>
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  var dot = document.getElementById("live-dot");
  var open = {};
  var busy = false;
  function apply() {
    live.querySelectorAll("tr.detail").forEach(function (tr) {
      tr.hidden = !open[tr.getAttribute("data-key")];
    });
    live.querySelectorAll("button.toggle").forEach(function (b) {
      b.classList.toggle("open", !!open[b.getAttribute("data-key")]);
    });
  }
  live.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button.toggle") : null;
    if (!b) return;
    var k = b.getAttribute("data-key");
    if (open[k]) delete open[k]; else open[k] = true;
    apply();
  });
  function refresh() {
    if (busy) return;
    busy = true;
    fetch("__PARTIAL__", {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.text(); })
      .then(function (text) {
        live.innerHTML = text;
        apply();
        updated.textContent = new Date().toLocaleTimeString();
        dot.style.background = "#2da44e";
      })
      .catch(function () { dot.style.background = "#cf222e"; })
      .then(function () { busy = false; });
  }
  setInterval(refresh, 1000);
})();
</script>
</body></html>
"""
