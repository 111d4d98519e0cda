"""The demo reaches its own fake platforms at the address it is served on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from demo_site.app import PLATFORMS_PREFIX, _reachable, create_app
from tests._servers import free_port
from tracking_mw._runtime import Runtime


@pytest.mark.parametrize(
    ("host", "reached"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("192.168.1.20", "192.168.1.20"),
        ("::1", "[::1]"),
        ("localhost", "localhost"),
    ],
)
def test_reachable_address(host: str, reached: str) -> None:
    assert _reachable(host) == reached


def test_served_on_ipv6_loopback_its_platforms_answer(tmp_path: Path) -> None:
    # Before, the platforms were always called at 127.0.0.1, where nothing listened when the
    # demo was served on another address: every delivery failed with ConnectError.
    port = free_port()
    app = create_app(port=port, host="::1", outbox=f"sqlite:///{tmp_path}/o.sqlite3")
    server = uvicorn.Server(
        uvicorn.Config(app, host="::1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        kwai = app.settings.kwai
        assert kwai is not None and kwai.base_url.startswith(f"http://[::1]:{port}")
        answer = httpx.get(f"http://[::1]:{port}{PLATFORMS_PREFIX}/_fake/events?platform=kwai")
        assert answer.status_code == 200 and answer.json() == []
    finally:
        server.should_exit = True
        thread.join(15)
        Runtime.set_default(None)
