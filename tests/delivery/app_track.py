"""A small shop for process tests: TrackingMiddleware + a view calling track().

Settings come from ``TRACKING_*``; delivery timings are short so tests finish quickly.
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.delivery._helpers import full_attribution
from tracking_mw import DeliveryConfig, Settings
from tracking_mw.asgi import TrackingMiddleware
from tracking_mw.tracker import track

# Retries of a platform that is down are expected here: keep stderr quiet.
logging.getLogger("tracking_mw").setLevel(logging.ERROR)

FAST = DeliveryConfig(
    backoff_base=0.05,
    backoff_cap=0.3,
    max_attempts=10_000,
    poll_interval=0.02,
    timeout=5.0,
    lease_seconds=float(os.environ.get("TEST_LEASE_SECONDS", "2")),
    shutdown_grace=1.0,
)


async def buy(request: Request) -> JSONResponse:
    n = int(request.query_params["n"])
    receipt = track(
        "Purchase",
        value="10.00",
        currency="BRL",
        user={"email": f"buyer{n}@example.com"},
        attribution=full_attribution(n),
        event_id=f"order-{n}",
    )
    return JSONResponse({"queued": list(receipt.queued), "error": receipt.error})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = TrackingMiddleware(
    Starlette(routes=[Route("/buy", buy, methods=["POST"]), Route("/health", health)]),
    Settings.from_env(delivery=FAST, cookie_secure=False),
)
