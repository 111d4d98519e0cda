"""The demo shop: a Starlette app wired to tracking_mw through its public API only.

``create_app(port=8000)`` builds everything in one process:

* the shop (landing, product, cart, checkout, card or boleto payment, thank-you),
  wrapped in :class:`~tracking_mw.asgi.TrackingMiddleware`;
* the fake platform servers of :mod:`tracking_mw.testing`, under ``/_platforms``, where every
  configured platform sends its conversions (test modes on, demo credentials);
* the :class:`~tracking_mw.inspector.Inspector` under ``/_tracking``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tracking_mw import DeliveryConfig, Settings, current_attribution
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.attribution import Attribution
from tracking_mw.inspector import Inspector
from tracking_mw.testing import FakePlatforms
from tracking_mw.tracker import Receipt, track

from . import pages
from .pages import esc, money

log = logging.getLogger("demo_site")

DEMO_SECRET_KEY = "demo-secret-key-change-me-in-production"
CONSENT_COOKIE = "demo_consent"
CART_COOKIE = "demo_cart"
CURRENCY = "BRL"
PLATFORMS_PREFIX = "/_platforms"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Product:
    """One thing the shop sells."""

    id: str
    name: str
    price: Decimal
    art: str  # a symbol the default fonts have
    blurb: str


PRODUCTS: dict[str, Product] = {
    p.id: p
    for p in (
        Product(
            "beans", "Coffee beans, 1 kg", Decimal("89.90"), "1 kg", "Single origin, Minas Gerais."
        ),
        Product("mug", "Ceramic mug", Decimal("39.50"), "☕", "Keeps your coffee warm."),
        Product("kettle", "Pour-over kettle", Decimal("219.00"), "♨", "Gooseneck, 1 litre."),
    )
}


@dataclass
class Order:
    """An order kept in memory; ``attribution`` is the snapshot taken at checkout."""

    id: str
    items: list[str]
    total: Decimal
    email: str
    phone: str | None
    name: str | None
    attribution: dict[str, Any] | None
    consent: bool
    status: str = "awaiting payment"
    created: float = field(default_factory=time.time)

    @property
    def purchase_event_id(self) -> str:
        """One Purchase per order: tracking it twice (a webhook retried) queues it once."""
        return f"purchase-{self.id}"


def consent_from_scope(scope: MutableMapping[str, Any]) -> bool:
    """The consent hook: tracking is allowed unless the visitor pressed "Refuse"."""
    return _cookie(scope, CONSENT_COOKIE) != "no"


def _cookie(scope: Mapping[str, Any], name: str) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no cookie at all
                continue
            if name in jar:
                return jar[name].value
    return None


def demo_settings(
    fake: FakePlatforms,
    *,
    base_url: str,
    outbox: str,
    delivery: DeliveryConfig | None = None,
) -> Settings:
    """Settings with every platform pointed at the in-process fake servers, test modes on."""
    overrides: dict[str, Any] = dict(fake.settings_overrides(base_url + PLATFORMS_PREFIX))
    if overrides.get("meta") is not None:
        overrides["meta"] = replace(overrides["meta"], test_event_code="TEST_DEMO")
    if overrides.get("kwai") is not None:
        overrides["kwai"] = replace(overrides["kwai"], test=True)
    if overrides.get("rokt") is not None:
        overrides["rokt"] = replace(overrides["rokt"], environment="development")
    return Settings(
        secret_key=DEMO_SECRET_KEY,
        cookie_secure=False,  # the demo runs on plain http://127.0.0.1
        consent=consent_from_scope,
        outbox=outbox,
        delivery=delivery
        or DeliveryConfig(backoff_base=0.5, backoff_cap=5.0, poll_interval=0.1, timeout=5.0),
        **overrides,
    )


def default_outbox() -> str:
    """A SQLite outbox in a per-user temporary directory (the demo keeps nothing in the repo)."""
    folder = Path(tempfile.gettempdir()) / f"tracking_mw_demo_{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'outbox.sqlite3'}"


class _Split:
    """Routes ``/_platforms`` straight to the fake servers, everything else to the shop.

    The fake platforms sit outside the tracking middleware: the dispatcher's own requests are
    not visitors. Lifespan events go to the shop, whose middleware starts the dispatcher.
    """

    def __init__(self, shop: ASGIApp, platforms: ASGIApp) -> None:
        self.shop = shop
        self.platforms = platforms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (
            path == PLATFORMS_PREFIX or path.startswith(PLATFORMS_PREFIX + "/")
        ):
            root = scope.get("root_path", "")
            child = dict(scope)
            child["path"] = path[len(PLATFORMS_PREFIX) :] or "/"
            child["root_path"] = root + PLATFORMS_PREFIX
            raw = scope.get("raw_path")
            if isinstance(raw, bytes) and raw.startswith(PLATFORMS_PREFIX.encode()):
                child["raw_path"] = raw[len(PLATFORMS_PREFIX) :] or b"/"
            await self.platforms(child, receive, send)
            return
        await self.shop(scope, receive, send)


class Shop:
    """The shop's state (orders, receipts) and its request handlers."""

    def __init__(self, settings: Settings, fake: FakePlatforms, base_url: str) -> None:
        self.settings = settings
        self.fake = fake
        self.base_url = base_url
        self.orders: dict[str, Order] = {}
        # Receipts of recent actions, shown on the page the action redirects to.
        self.receipts: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    # ---- helpers -------------------------------------------------------------------------

    def remember(self, entries: list[dict[str, Any]]) -> str:
        key = secrets.token_urlsafe(8)
        self.receipts[key] = entries
        while len(self.receipts) > 1000:
            self.receipts.popitem(last=False)
        return key

    def track_entry(self, name: str, **fields: Any) -> dict[str, Any]:
        """Call ``track()`` and describe its receipt for the page (never raises)."""
        try:
            receipt = track(name, **fields)
        except Exception as exc:  # the demo shows the error instead of failing the page
            log.warning("track(%s) failed: %s", name, type(exc).__name__)
            return {"event": name, "error": f"{type(exc).__name__}: {exc}"}
        return receipt_dict(name, receipt)

    def page(
        self,
        request: Request,
        title: str,
        body: str,
        *,
        status_code: int = 200,
        receipts_key: str | None = None,
    ) -> HTMLResponse:
        consent = consent_from_scope(request.scope)
        key = receipts_key or request.query_params.get("r")
        receipts = self.receipts.get(key, []) if key else []
        html = pages.layout(
            title,
            body,
            attribution=current_attribution(),
            consent=consent,
            consent_choice=request.cookies.get(CONSENT_COOKIE),
            cart_count=len(cart_items(request)),
            receipts=receipts,
        )
        return HTMLResponse(html, status_code=status_code)

    # ---- pages ---------------------------------------------------------------------------

    async def landing(self, request: Request) -> Response:
        cards = "".join(
            f'<div class="product"><div class="art">{p.art}</div>'
            f'<a href="/product/{p.id}"><strong>{esc(p.name)}</strong></a>'
            f'<div class="muted">{esc(p.blurb)}</div>'
            f'<div class="price">{money(float(p.price))}</div></div>'
            for p in PRODUCTS.values()
        )
        body = (
            '<section class="card"><h1>Fresh coffee, measured honestly</h1>'
            "<p>This little shop sends its conversions to the ad platforms from the server "
            "with <code>tracking_mw</code>. Arrive from an "
            '<a href="/ads">ad click</a>, browse, buy, and watch each platform receive its '
            'event in the <a href="/_tracking/" target="_blank">inspector</a>.</p></section>'
            f'<section class="card"><h2>Products</h2><div class="grid">{cards}</div></section>'
        )
        return self.page(request, "Shop", body)

    async def product(self, request: Request) -> Response:
        p = PRODUCTS.get(request.path_params["pid"])
        if p is None:
            return self.page(
                request, "Not found", '<div class="card">No such product.</div>', status_code=404
            )
        body = (
            f'<section class="card"><div class="product" style="max-width:420px">'
            f'<div class="art">{p.art}</div><h1>{esc(p.name)}</h1>'
            f"<p>{esc(p.blurb)}</p>"
            f'<p class="price">{money(float(p.price))}</p>'
            f'<form method="post" action="/cart/add"><input type="hidden" name="product" '
            f'value="{p.id}"><button type="submit" id="add-to-cart">Add to cart</button></form>'
            "</div></section>"
        )
        return self.page(request, p.name, body)

    async def cart_add(self, request: Request) -> Response:
        form = await read_form(request)
        p = PRODUCTS.get(form.get("product", ""))
        if p is None:
            return RedirectResponse("/", status_code=303)
        items = [*cart_items(request), p.id]
        entry = self.track_entry(
            "AddToCart",
            value=p.price,
            currency=CURRENCY,
            contents=[{"id": p.id, "quantity": 1, "item_price": float(p.price)}],
        )
        resp = RedirectResponse(f"/cart?r={self.remember([entry])}", status_code=303)
        resp.set_cookie(CART_COOKIE, ".".join(items[-20:]), max_age=86400, samesite="lax")
        return resp

    async def cart(self, request: Request) -> Response:
        items = cart_items(request)
        if not items:
            body = (
                '<section class="card"><h1>Your cart</h1><p>Empty. '
                '<a href="/">Go shopping</a>.</p></section>'
            )
            return self.page(request, "Cart", body)
        rows = item_rows(items)
        total = sum((PRODUCTS[i].price for i in items), Decimal(0))
        body = (
            f'<section class="card"><h1>Your cart</h1><table>{rows}'
            f'<tr><th>Total</th><th id="cart-total">{money(float(total))}</th></tr></table>'
            '<p><a class="btn" href="/checkout" id="go-checkout">Checkout</a> '
            '<a class="btn secondary" href="/">Keep shopping</a></p></section>'
        )
        return self.page(request, "Cart", body)

    async def checkout(self, request: Request) -> Response:
        items = cart_items(request)
        if not items:
            return RedirectResponse("/cart", status_code=303)
        total = sum((PRODUCTS[i].price for i in items), Decimal(0))
        body = (
            f'<section class="card"><h1>Checkout</h1><p>Total: <strong>{money(float(total))}'
            "</strong></p>"
            '<form method="post" action="/checkout" id="checkout-form">'
            '<label for="email">Email</label>'
            '<input type="email" id="email" name="email" required placeholder="ana@example.com">'
            '<label for="phone">Phone (optional)</label>'
            '<input type="tel" id="phone" name="phone" placeholder="+55 11 91234-5678">'
            '<label for="name">Name (optional)</label>'
            '<input type="text" id="name" name="name" placeholder="Ana Souza">'
            '<p><button type="submit" id="continue-payment">Continue to payment</button></p>'
            '</form><p class="muted">Rokt only takes a conversion that carries an email; Meta '
            "and TikTok use it (hashed) to match the buyer.</p></section>"
        )
        return self.page(request, "Checkout", body)

    async def checkout_post(self, request: Request) -> Response:
        items = cart_items(request)
        form = await read_form(request)
        email = form.get("email", "").strip()
        if not items or "@" not in email:
            return RedirectResponse("/checkout", status_code=303)
        total = sum((PRODUCTS[i].price for i in items), Decimal(0))
        name = form.get("name", "").strip() or None
        attribution = current_attribution()
        order = Order(
            id=uuid.uuid4().hex[:10].upper(),
            items=items,
            total=total,
            email=email,
            phone=form.get("phone", "").strip() or None,
            name=name,
            # The snapshot lets a payment confirmed later (boleto) be attributed to this click.
            attribution=attribution.to_dict() if attribution is not None else None,
            consent=consent_from_scope(request.scope),
        )
        self.orders[order.id] = order
        if len(self.orders) > 10_000:  # an in-memory demo: forget the oldest orders
            del self.orders[next(iter(self.orders))]
        entry = self.track_entry(
            "InitiateCheckout",
            value=total,
            currency=CURRENCY,
            user=order_user(order),
            contents=order_contents(order),
            event_id=f"checkout-{order.id}",
        )
        resp = RedirectResponse(f"/pay/{order.id}?r={self.remember([entry])}", status_code=303)
        resp.delete_cookie(CART_COOKIE)
        return resp

    def _order(self, request: Request) -> Order | None:
        return self.orders.get(request.path_params["oid"])

    async def pay(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return self.page(
                request, "Not found", '<div class="card">No such order.</div>', status_code=404
            )
        body = (
            f'<section class="card"><h1>Payment</h1><p>Order <code>{esc(order.id)}</code>, '
            f"total <strong>{money(float(order.total))}</strong>.</p>"
            f'<form method="post" action="/pay/{order.id}/card" style="display:inline">'
            '<button type="submit" id="pay-now">Pay now (card)</button></form> '
            f'<form method="post" action="/pay/{order.id}/boleto" style="display:inline">'
            '<button type="submit" class="warn" id="pay-boleto">Pay later (boleto)</button>'
            "</form>"
            '<p class="muted">A card payment is confirmed at once: <code>Purchase</code> is '
            "tracked in this request. A boleto is paid days later at a bank: the order is "
            "placed now and the bank's webhook confirms the payment, with no visitor cookie; "
            "the Purchase uses the attribution stored with the order.</p></section>"
        )
        return self.page(request, "Payment", body)

    async def pay_card(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return RedirectResponse("/", status_code=303)
        entries = []
        if order.status != "paid":
            order.status = "paid"
            entries.append(
                self.track_entry(
                    "Purchase",
                    value=order.total,
                    currency=CURRENCY,
                    user=order_user(order),
                    contents=order_contents(order),
                    event_id=order.purchase_event_id,
                )
            )
        return RedirectResponse(f"/thanks/{order.id}?r={self.remember(entries)}", 303)

    async def pay_boleto(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return RedirectResponse("/", status_code=303)
        entries = []
        if order.status == "awaiting payment":
            order.status = "boleto issued"
            entries.append(
                self.track_entry(
                    "PlaceOrder",
                    value=order.total,
                    currency=CURRENCY,
                    user=order_user(order),
                    contents=order_contents(order),
                    event_id=f"order-{order.id}",
                )
            )
        return RedirectResponse(f"/boleto/{order.id}?r={self.remember(entries)}", 303)

    async def boleto(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return self.page(
                request, "Not found", '<div class="card">No such order.</div>', status_code=404
            )
        line = "34191.79001 01043.510047 91020.150008 " + order.id[:1] + " 9" + order.id[1:8]
        if order.status == "paid":
            action = (
                '<div class="flash" id="boleto-paid">Payment confirmed by the bank. '
                f'<a href="/thanks/{order.id}">See your order</a>.</div>'
            )
        else:
            action = (
                f'<form method="post" action="/boleto/{order.id}/simulate">'
                '<button type="submit" id="simulate-bank">Simulate bank confirmation</button>'
                '</form><p class="muted">Sends <code>POST /webhooks/boleto</code> from the '
                "server, as the bank would: no browser, no cookie.</p>"
            )
        body = (
            f'<section class="card"><h1>Boleto issued</h1><p>Order <code>{esc(order.id)}</code> '
            f"is placed; pay <strong>{money(float(order.total))}</strong> at any bank.</p>"
            f'<div class="boleto"></div><pre>{esc(line)}</pre>{action}</section>'
        )
        return self.page(request, "Boleto", body)

    async def boleto_simulate(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return RedirectResponse("/", status_code=303)
        # The bank calls the shop's webhook server to server: a fresh client, no cookies.
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.post(
                f"{self.base_url}/webhooks/boleto",
                json={"order_id": order.id, "status": "paid", "amount": str(order.total)},
                headers={"User-Agent": "DemoBank-Webhook/1.0"},
            )
        entries: list[dict[str, Any]] = []
        try:
            data = answer.json()
            if isinstance(data, dict) and isinstance(data.get("receipt"), dict):
                entries.append(data["receipt"])
        except ValueError:
            entries.append({"event": "Purchase", "error": f"webhook answered {answer.status_code}"})
        return RedirectResponse(f"/boleto/{order.id}?r={self.remember(entries)}", 303)

    async def webhook_boleto(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            order = self.orders.get(str(data["order_id"]))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"ok": False, "error": "bad payload"}, status_code=400)
        if order is None:
            return JSONResponse({"ok": False, "error": "unknown order"}, status_code=404)
        order.status = "paid"
        if not order.consent or order.attribution is None:
            entry: dict[str, Any] = {
                "event": "Purchase",
                "note": "not tracked: the buyer refused tracking at checkout",
            }
        else:
            entry = self.track_entry(
                "Purchase",
                value=order.total,
                currency=CURRENCY,
                user=order_user(order),
                contents=order_contents(order),
                event_id=order.purchase_event_id,
                event_source_url=f"{self.base_url}/boleto/{order.id}",
                # Not this request's (cookie-less) visitor: the one who clicked the ad.
                attribution=Attribution.from_dict(order.attribution),
            )
            webhook_note = (
                "tracked by the bank's webhook (no cookie) with the attribution stored "
                "with the order at checkout"
            )
            entry["note"] = "; ".join(n for n in (webhook_note, entry.get("note")) if n)
        return JSONResponse({"ok": True, "order_id": order.id, "receipt": entry})

    async def thanks(self, request: Request) -> Response:
        order = self._order(request)
        if order is None:
            return self.page(
                request, "Not found", '<div class="card">No such order.</div>', status_code=404
            )
        rows = item_rows(order.items)
        body = (
            f'<section class="card"><h1 id="thanks">Thank you!</h1><p>Order '
            f'<code id="order-id">{esc(order.id)}</code> is <strong>{esc(order.status)}</strong>. '
            f"A receipt goes to {esc(order.email)}.</p><table>{rows}"
            f"<tr><th>Total</th><th>{money(float(order.total))}</th></tr></table>"
            '<p><a class="btn" href="/_tracking/" target="_blank">See the deliveries</a> '
            '<a class="btn secondary" href="/">Back to the shop</a></p></section>'
        )
        return self.page(request, "Thank you", body)

    async def ads(self, request: Request) -> Response:
        rows = "".join(
            f'<li data-platform="{esc(platform)}"><a class="btn secondary ad-link" '
            f'href="{esc(url)}" id="ad-{esc(platform)}">{esc(label)}</a>'
            f'<div class="where">{esc(url)}</div></li>'
            for platform, label, url in sample_ad_urls()
        )
        body = (
            '<section class="card"><h1>Sample ad clicks</h1><p>Each link is what the shop '
            "receives when someone clicks an ad on that platform. The ids are new on every "
            "view of this page, so each click is a new one.</p>"
            f'<ul class="adlist" style="list-style:none;padding:0">{rows}</ul>'
            '<p class="muted">Click one, browse two pages, buy: the platform the click came '
            "from receives the conversion. Meta takes every conversion it can match (IP, user "
            "agent, browser id).</p></section>"
        )
        return self.page(request, "Ad clicks", body)

    async def consent(self, request: Request) -> Response:
        form = await read_form(request)
        choice = "no" if form.get("choice") == "no" else "yes"
        # Back to the page the choice was made on: only its path, never another site.
        ref = urlsplit(request.headers.get("referer") or "/")
        back = (ref.path if ref.path.startswith("/") else "/") + (
            f"?{ref.query}" if ref.query else ""
        )
        resp = RedirectResponse("/" + back.lstrip("/"), status_code=303)
        resp.set_cookie(CONSENT_COOKIE, choice, max_age=365 * 86400, samesite="lax")
        return resp

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


def item_rows(items: list[str]) -> str:
    """Table rows (name, price) for the products in a cart or an order."""
    return "".join(
        f"<tr><td>{esc(PRODUCTS[i].name)}</td><td>{money(float(PRODUCTS[i].price))}</td></tr>"
        for i in items
    )


def cart_items(request: Request) -> list[str]:
    """Product ids in the cart cookie (unknown ids are dropped)."""
    raw = request.cookies.get(CART_COOKIE, "")
    return [i for i in raw.split(".") if i in PRODUCTS]


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body as a dict (first value wins)."""
    body = (await request.body())[:65536]
    out: dict[str, str] = {}
    for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        out.setdefault(k, v)
    return out


def order_user(order: Order) -> dict[str, str]:
    """The buyer's data for ``track(user=...)``; adapters normalize and hash it."""
    user: dict[str, str] = {"email": order.email, "external_id": f"customer-{order.email}"}
    if order.phone:
        user["phone"] = order.phone
    if order.name:
        first, _, last = order.name.partition(" ")
        user["first_name"] = first
        if last:
            user["last_name"] = last
    return user


def order_contents(order: Order) -> list[dict[str, Any]]:
    """The order's lines for ``track(contents=...)``."""
    counts: dict[str, int] = {}
    for i in order.items:
        counts[i] = counts.get(i, 0) + 1
    return [
        {"id": i, "quantity": n, "item_price": float(PRODUCTS[i].price)} for i, n in counts.items()
    ]


def receipt_dict(name: str, receipt: Receipt) -> dict[str, Any]:
    """A Receipt as plain data for the page and the webhook's answer."""
    entry: dict[str, Any] = {
        "event": name,
        "event_id": receipt.event_id,
        "queued": list(receipt.queued),
        "skipped": dict(receipt.skipped),
    }
    if receipt.error:
        entry["error"] = receipt.error
    if receipt.duplicate:
        entry["note"] = "already tracked with this event id: queued once"
    return entry


def _digits(n: int) -> str:
    return str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(n - 1))


def sample_ad_urls() -> list[tuple[str, str, str]]:
    """One fresh, realistic-looking ad click per platform: (platform, label, URL)."""
    ms = int(time.time() * 1000)
    kwai_click = "CIXm" + secrets.token_urlsafe(30)
    fbclid = "IwAR" + secrets.token_urlsafe(45).replace("-", "x")
    bbg = "bg" + secrets.token_hex(2) + "." + secrets.token_urlsafe(40)
    utm = "&utm_source={src}&utm_medium=paid&utm_campaign=spring_coffee"
    return [
        (
            "kwai",
            "Kwai ad",
            f"/?click_id={quote(kwai_click)}&pixel_id={_digits(18)}" + utm.format(src="kwai"),
        ),
        (
            "bigo",
            "Bigo ad",
            f"/?bbg={quote(bbg)}&pixel_id={_digits(16)}" + utm.format(src="bigo"),
        ),
        ("meta", "Meta (Facebook/Instagram) ad", f"/?fbclid={fbclid}" + utm.format(src="facebook")),
        ("rokt", "Rokt offer", f"/?rtid={secrets.token_hex(16)}" + utm.format(src="rokt")),
        (
            "roibest",
            "ROIBest link",
            f"/?link_id=lnk_{secrets.token_hex(6)}" + utm.format(src="roibest"),
        ),
        (
            "tiktok",
            "TikTok ad",
            f"/?ttclid=E.C.P.{secrets.token_urlsafe(36)}.{ms}" + utm.format(src="tiktok"),
        ),
    ]


def _reachable(host: str) -> str:
    """The address this process reaches its own server at, served on ``host``: a wildcard
    is reached over loopback, any other address as it is (a LAN address to show the demo
    on a phone listens there only), an IPv6 one in brackets."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def create_app(
    *,
    port: int,
    outbox: str | None = None,
    host: str = "127.0.0.1",
    fake: FakePlatforms | None = None,
    delivery: DeliveryConfig | None = None,
) -> DemoApp:
    """The whole demo as one ASGI app, to serve on ``host:port``.

    ``port`` must be the port the app is served on: the platforms' base URLs (and the bank's
    webhook call) point back at it. ``outbox`` defaults to a SQLite file in the temporary
    directory; ``fake`` to a new :class:`FakePlatforms`; ``delivery`` to short retry delays.
    The returned app exposes ``.fake``, ``.settings`` and ``.shop`` for tests.
    """
    fake = fake or FakePlatforms()
    base_url = f"http://{_reachable(host)}:{port}"
    settings = demo_settings(
        fake, base_url=base_url, outbox=outbox or default_outbox(), delivery=delivery
    )
    shop = Shop(settings, fake, base_url)
    routes = [
        Route("/", shop.landing),
        Route("/product/{pid}", shop.product),
        Route("/cart", shop.cart),
        Route("/cart/add", shop.cart_add, methods=["POST"]),
        Route("/checkout", shop.checkout),
        Route("/checkout", shop.checkout_post, methods=["POST"]),
        Route("/pay/{oid}", shop.pay),
        Route("/pay/{oid}/card", shop.pay_card, methods=["POST"]),
        Route("/pay/{oid}/boleto", shop.pay_boleto, methods=["POST"]),
        Route("/boleto/{oid}", shop.boleto),
        Route("/boleto/{oid}/simulate", shop.boleto_simulate, methods=["POST"]),
        Route("/thanks/{oid}", shop.thanks),
        Route("/webhooks/boleto", shop.webhook_boleto, methods=["POST"]),
        Route("/ads", shop.ads),
        Route("/consent", shop.consent, methods=["POST"]),
        Route("/healthz", shop.health),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/_tracking", app=Inspector(settings, enabled=True)),
    ]
    tracked = TrackingMiddleware(Starlette(routes=routes), settings=settings)
    return DemoApp(_Split(tracked, fake.app), fake=fake, settings=settings, shop=shop)


class DemoApp:
    """The demo's ASGI app, with the parts tests look at: ``fake``, ``settings``, ``shop``."""

    def __init__(
        self, app: ASGIApp, *, fake: FakePlatforms, settings: Settings, shop: Shop
    ) -> None:
        self.app = app
        self.fake = fake
        self.settings = settings
        self.shop = shop
        self.base_url = shop.base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
