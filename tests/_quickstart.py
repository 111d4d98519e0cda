"""The README's Starlette quickstart, as uvicorn factories for a child process."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tracking_mw import Settings, TrackingMiddleware


async def home(request: Request) -> Response:
    return PlainTextResponse("home")


def declared() -> Starlette:
    """``middleware=[Middleware(TrackingMiddleware)]``: Starlette builds it on the first call."""
    return Starlette(routes=[Route("/", home)], middleware=[Middleware(TrackingMiddleware)])


def eager() -> Starlette:
    """The settings read when the app is made: a bad configuration stops the server."""
    settings = Settings.from_env()
    return Starlette(
        routes=[Route("/", home)], middleware=[Middleware(TrackingMiddleware, settings=settings)]
    )
