"""A small Flask site wrapped in tracking_mw's WSGI middleware, as the README shows it.

Built at import time with settings from ``TRACKING_*`` variables, so that a server that
imports the app before forking its workers (gunicorn ``--preload``) creates the runtime and
its outbox in the master process::

    python -m gunicorn --preload -w 2 --bind 127.0.0.1:8000 tests.flask_site:app

Views: ``/`` is a landing page (any query); ``/attribution`` answers the visitor's
attribution; ``/lead?event_id=...`` calls ``track("Lead", ...)`` and answers the receipt;
``/delivered`` answers how many events this process's dispatcher delivered, per platform.
Every answer carries the pid of the process that served it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, request

from tracking_mw import (
    DeliveryConfig,
    Runtime,
    TrackingWSGIMiddleware,
    current_attribution,
    track,
)

# Delivery timings short enough for a test to see an event arrive within a fraction of a second.
FAST_DELIVERY = DeliveryConfig(
    backoff_base=0.05, backoff_cap=0.5, poll_interval=0.05, timeout=5.0, shutdown_grace=1.0
)

# The name tracking_mw gives its dispatcher thread (tracking_mw.delivery.ThreadDispatcher).
DISPATCHER_THREAD = "tracking_mw-dispatcher"


def _dispatcher_threads() -> int:
    """How many dispatcher threads run in this process (threads do not survive fork())."""
    return sum(1 for t in threading.enumerate() if t.name == DISPATCHER_THREAD and t.is_alive())


app = Flask(__name__)


@app.get("/")
def landing() -> dict[str, Any]:
    return {"page": "/", "pid": os.getpid()}


@app.get("/attribution")
def attribution() -> dict[str, Any]:
    a = current_attribution()
    return {"attribution": a.to_dict() if a is not None else None, "pid": os.getpid()}


@app.get("/lead")
def lead() -> dict[str, Any]:
    receipt = track("Lead", event_id=request.args["event_id"])
    return {
        "event_id": receipt.event_id,
        "queued": list(receipt.queued),
        "skipped": dict(receipt.skipped),
        "error": receipt.error,
        "pid": os.getpid(),
        "dispatcher_threads": _dispatcher_threads(),
    }


@app.get("/delivered")
def delivered() -> dict[str, Any]:
    runtime = Runtime.default()  # the runtime of the middleware below
    assert runtime is not None
    counters = runtime.counters()  # delivered: by this process, since it started
    return {
        "delivered": {platform: int(c["delivered"]) for platform, c in counters.items()},
        "pid": os.getpid(),
        "dispatcher_threads": _dispatcher_threads(),
    }


# Settings from TRACKING_* (Settings.from_env()), with faster delivery timings on top.
app.wsgi_app = TrackingWSGIMiddleware(app.wsgi_app, delivery=FAST_DELIVERY)  # type: ignore[method-assign]
