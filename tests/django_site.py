"""A minimal single-module Django project wrapped in tracking_mw's middlewares.

Used in process by tests/test_django.py (``asgi_app(settings)``, ``wsgi_app(settings)``) and
by a uvicorn child process with settings from ``TRACKING_*`` variables::

    python -m uvicorn --factory tests.django_site:application_from_env

Views: ``/attribution/sync`` and ``/attribution/async`` answer the visitor's attribution as
JSON; ``/lead/sync`` and ``/lead/async`` call ``track("Lead", ...)`` and answer the receipt.
Any other path (a landing page such as ``/?click_id=...``) answers a small JSON page.
"""

from __future__ import annotations

import threading
from typing import Any

import django
from django.conf import settings as django_settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path

from tracking_mw import (
    DeliveryConfig,
    Settings,
    TrackingMiddleware,
    TrackingWSGIMiddleware,
    current_attribution,
    track,
)
from tracking_mw.tracker import Receipt

if not django_settings.configured:
    django_settings.configure(
        DEBUG=False,
        SECRET_KEY="django-site-test-key-" + "x" * 32,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["shop.test", "127.0.0.1"],
        DATABASES={},
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        TEMPLATES=[],
        USE_TZ=True,
        # Django's default logging setup runs logging.config.dictConfig, which closes every
        # handler already installed (pytest's log capture among them): leave logging alone.
        LOGGING_CONFIG=None,
    )
    django.setup(set_prefix=False)


def _attribution_body(kind: str) -> dict[str, Any]:
    a = current_attribution()
    return {
        "view": kind,
        "main_thread": threading.current_thread() is threading.main_thread(),
        "attribution": a.to_dict() if a is not None else None,
    }


def _receipt_body(kind: str, receipt: Receipt) -> dict[str, Any]:
    return {
        "view": kind,
        "event_id": receipt.event_id,
        "queued": list(receipt.queued),
        "skipped": dict(receipt.skipped),
        "duplicate": receipt.duplicate,
        "error": receipt.error,
    }


def _lead(request: HttpRequest) -> Receipt:
    event_id = request.GET.get("event_id") or None
    return track("Lead", event_id=event_id, user={"external_id": "django-user-1"})


def landing(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"page": request.path})


def attribution_sync(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_attribution_body("sync"))


async def attribution_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_attribution_body("async"))


def lead_sync(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_receipt_body("sync", _lead(request)))


async def lead_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_receipt_body("async", _lead(request)))


urlpatterns = [
    path("attribution/sync", attribution_sync),
    path("attribution/async", attribution_async),
    path("lead/sync", lead_sync),
    path("lead/async", lead_async),
    re_path(r"^.*$", landing),
]


def asgi_app(settings: Settings) -> TrackingMiddleware:
    """The project's ASGI application wrapped as the README shows, with ``settings``."""
    return TrackingMiddleware(get_asgi_application(), settings)


def wsgi_app(settings: Settings) -> TrackingWSGIMiddleware:
    """The project's WSGI application wrapped as the README shows, with ``settings``."""
    return TrackingWSGIMiddleware(get_wsgi_application(), settings)


# Delivery timings short enough for a test to see an event arrive within a fraction of a second.
FAST_DELIVERY = DeliveryConfig(
    backoff_base=0.05, backoff_cap=0.5, poll_interval=0.05, timeout=5.0, shutdown_grace=1.0
)


def application_from_env() -> TrackingMiddleware:
    """ASGI entry point for a server process (uvicorn ``--factory``): settings from
    ``TRACKING_*`` variables, as ``TrackingMiddleware(get_asgi_application())`` reads them."""
    return TrackingMiddleware(get_asgi_application(), delivery=FAST_DELIVERY)
