"""The WSGI middleware under a real WSGI server: gunicorn with ``--preload`` and two workers.

The README says of Flask (``app.wsgi_app = TrackingWSGIMiddleware(app.wsgi_app)``): "Under
WSGI the dispatcher is a background thread, started on the first request and restarted in a
forked worker (safe with gunicorn ``--preload``)". gunicorn runs tests/flask_site.py in a child
process: the master imports the app (runtime, SQLite outbox) and forks two sync workers.
Visitors land with Kwai click ids over loopback and send leads, served by both workers; the
dispatcher thread each worker started after the fork must deliver some of them to the fake Kwai
server, every lead exactly once, and gunicorn must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._servers import Child, free_port, serve_in_thread, wait_http, wait_listening
from tracking_mw.delivery import open_outbox
from tracking_mw.testing import DEMO_KWAI_TOKEN, FakePlatforms

ROOT = str(Path(__file__).resolve().parents[1])
KEY = "g" * 32
PIXEL = "777002"
# Usually 4 visitors do; now and then one dispatcher happens to claim a dozen leads in a row
# (both poll the shared outbox at the same interval, and their phases drift slowly).
MIN_VISITORS = 4
MAX_VISITORS = 60
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def gunicorn_argv(port: int) -> list[str]:
    """gunicorn serving tests/flask_site.py: app imported in the master, two forked workers."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "10",
        # gunicorn 27 opens a control socket in ~/.gunicorn by default: none here (hence
        # gunicorn>=27 in the test extras: older releases do not know the flag).
        "--no-control-socket",
        "tests.flask_site:app",
    ]


def site_env(tmp_path: Path, fake_base: str) -> dict[str, str]:
    """``TRACKING_*`` for the site: a SQLite outbox, Kwai at the fake, Bigo and ROIBest off."""
    return {
        "TRACKING_SECRET_KEY": KEY,
        "TRACKING_COOKIE_SECURE": "false",
        "TRACKING_OUTBOX": f"sqlite:///{tmp_path / 'outbox.sqlite3'}",
        "TRACKING_KWAI_ACCESS_TOKENS": f"{PIXEL}:{DEMO_KWAI_TOKEN}",
        "TRACKING_KWAI_BASE_URL": f"{fake_base}/kwai",
        "TRACKING_BIGO_ENABLED": "false",
        "TRACKING_ROIBEST_ENABLED": "false",
    }


def visit(base: str, n: int) -> dict[str, Any]:
    """Visitor ``n`` lands with click id ``GU-<n>``, reads its attribution back and sends a
    lead. A new client (cookie jar) per visitor, and ``Connection: close``: every request is
    a new connection, which any worker may accept. Returns the lead's answer."""
    click = f"GU-{n}"
    headers = {"user-agent": CHROME, "connection": "close"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
        r = c.get(f"/?click_id={click}&pixel_id={PIXEL}&utm_source=kwai")
        assert r.status_code == 200, r.text
        assert click in r.cookies["_tmw"]
        r = c.get("/attribution")
        assert r.status_code == 200, r.text
        kwai = r.json()["attribution"]["touches"]["kwai"]
        assert kwai["click_id"] == click and kwai["pixel_id"] == PIXEL
        r = c.get(f"/lead?event_id=gu-lead-{n}")
        assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["event_id"] == f"gu-lead-{n}"
    assert body["queued"] == ["kwai"] and body["skipped"] == {} and body["error"] is None, body
    return body


def delivered_by_worker(base: str, expected: int, timeout: float = 10.0) -> dict[int, int]:
    """Ask ``/delivered`` on new connections (any worker may answer) until two workers have
    answered and their Kwai deliveries add up to ``expected``: worker pid -> deliveries by
    that worker's own dispatcher. A dispatcher counts a delivery once it recorded it in the
    outbox."""
    latest: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/delivered", headers={"connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["dispatcher_threads"] == 1, body
        latest[body["pid"]] = body["delivered"].get("kwai", 0)
        if len(latest) >= 2 and sum(latest.values()) == expected:
            return latest
    raise AssertionError(f"deliveries per worker {latest}, expected {expected} in all")


def test_gunicorn_preload_workers_deliver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRACKING_"):
            monkeypatch.delenv(name)
    fake = FakePlatforms()
    leads: dict[str, dict[str, Any]] = {}  # click id -> the answer of its /lead
    per_worker: dict[int, int] = {}  # worker pid -> deliveries by its dispatcher
    with serve_in_thread(fake.app) as fake_base:
        env = site_env(tmp_path, fake_base)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        child = Child(gunicorn_argv(port), env=env, cwd=ROOT)
        try:
            wait_listening(port, child.proc)
            wait_http(f"{base}/", proc=child.proc)
            # Visitors until both workers served leads, then until both workers' dispatchers
            # delivered some: the outbox is shared and whichever dispatcher polls first
            # sends a lead, whichever worker queued it.
            while len(leads) < MAX_VISITORS:
                n = len(leads) + 1
                leads[f"GU-{n}"] = visit(base, n)
                served = {lead["pid"] for lead in leads.values()}
                if n < MIN_VISITORS or len(served) < 2:
                    continue
                fake.wait_for_events("kwai", len(leads), timeout=15)
                per_worker = delivered_by_worker(base, len(leads))
                if all(per_worker.values()):
                    break
        finally:
            code, stderr = child.stop_and_read()
    master = child.proc.pid

    # Two forked workers (not the master, which imported the app) served the leads, each
    # with one dispatcher thread of its own, started there after the fork.
    by_pid: dict[int, set[str]] = {}
    for click, lead in leads.items():
        by_pid.setdefault(lead["pid"], set()).add(click)
        assert lead["dispatcher_threads"] == 1, lead
    assert len(by_pid) == 2, f"{len(leads)} visitors, all served by {sorted(by_pid)}"
    assert master not in by_pid
    # Each worker's dispatcher delivered leads, and between them each lead once.
    assert set(per_worker) == set(by_pid), (per_worker, sorted(by_pid))
    assert all(per_worker.values()) and sum(per_worker.values()) == len(leads), per_worker

    # Kwai received every lead exactly once (also over the shutdown), with its visitor's
    # click id; the leads served by each worker among them.
    events = fake.events("kwai")
    assert sorted(e["clickid"] for e in events) == sorted(leads)
    for e in events:
        assert e["pixelId"] == PIXEL
        assert e["event_name"] == "EVENT_FORM_SUBMIT"
        assert e["access_token"] == DEMO_KWAI_TOKEN
    assert all(r.accepted for r in fake.received("kwai"))
    delivered = {e["clickid"] for e in events}
    for pid, clicks in by_pid.items():
        assert clicks <= delivered, f"leads served by worker {pid} not delivered"

    # The outbox agrees after the shutdown: all delivered, nothing pending or dead.
    outbox = open_outbox(env["TRACKING_OUTBOX"])
    try:
        stats = outbox.stats(time.time())["kwai"]
    finally:
        outbox.close()
    assert (stats["delivered"], stats["pending"], stats["dead"]) == (len(leads), 0, 0), stats

    # SIGTERM: gunicorn stops its workers gracefully (each logs its exit) and exits with 0.
    assert code == 0, stderr
    assert "Traceback" not in stderr and "[ERROR]" not in stderr, stderr
    assert "tracking_mw" not in stderr, stderr
    for pid in by_pid:
        assert f"Worker exiting (pid: {pid})" in stderr, stderr
