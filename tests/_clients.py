"""httpx clients for tests that drive a middleware in process, and what they check on a
response."""

from __future__ import annotations

from typing import Any

import httpx

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def asgi_client(
    app: Any, *, peer: str = "198.51.100.7", ua: str = CHROME, **kw: Any
) -> httpx.AsyncClient:
    """A client of ``app`` through httpx's ASGI transport, from ``peer`` as browser ``ua``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 1234)),
        base_url="http://shop.test",
        headers={"user-agent": ua},
        **kw,
    )


def wsgi_client(
    app: Any, *, peer: str = "198.51.100.8", ua: str = CHROME, **kw: Any
) -> httpx.Client:
    """A client of ``app`` through httpx's WSGI transport, from ``peer`` as browser ``ua``."""
    return httpx.Client(
        transport=httpx.WSGITransport(app=app, remote_addr=peer),
        base_url="http://shop.test",
        headers={"user-agent": ua},
        **kw,
    )


def tmw_cookies(r: httpx.Response) -> list[str]:
    """The ``Set-Cookie`` values of a response that write the attribution cookie."""
    return [c for c in r.headers.get_list("set-cookie") if c.startswith("_tmw=")]
