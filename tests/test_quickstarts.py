"""The README's quickstarts as a user meets them: FastAPI's ``add_middleware`` in process,
Starlette under a real uvicorn with the secret key missing (a startup error must be seen), and
a configuration error logged by either middleware wherever a framework happens to build it."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests._servers import Child, free_port, uvicorn_argv, wait_listening
from tests._settings import quiet_settings
from tracking_mw import (
    ConfigurationError,
    KwaiConfig,
    Secret,
    Settings,
    TrackingMiddleware,
    TrackingWSGIMiddleware,
    current_attribution,
    track,
)

pytestmark = pytest.mark.anyio

KEY = "q" * 32
CLICK = "QsClick-0123456789abcdef"
LANDING = f"/attribution?click_id={CLICK}&pixel_id=777"
ROOT = str(Path(__file__).resolve().parent.parent)
MISSING_KEY = "no secret key: set TRACKING_SECRET_KEY"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fastapi_app(**settings: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/attribution")
    async def attribution_async() -> dict[str, Any] | None:
        a = current_attribution()
        return a.to_dict() if a is not None else None

    @app.get("/attribution-sync")
    def attribution_sync() -> dict[str, Any] | None:
        # FastAPI runs a plain def in a worker thread: the context goes with it.
        a = current_attribution()
        return a.to_dict() if a is not None else None

    @app.post("/lead")
    def lead() -> dict[str, Any]:
        receipt = track("Lead")
        return {"queued": list(receipt.queued), "skipped": dict(receipt.skipped)}

    app.add_middleware(TrackingMiddleware, **settings)
    return app


def kwai_settings() -> Settings:
    kwai = KwaiConfig(access_tokens={"*": Secret("kwai-token-quickstart")})
    return quiet_settings(KEY, kwai=kwai)


async def test_fastapi_add_middleware() -> None:
    app = fastapi_app(settings=kwai_settings())
    transport = httpx.ASGITransport(app=app, client=("203.0.113.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
        landing = await c.get(LANDING)
        assert landing.status_code == 200
        assert "_tmw" in c.cookies
        assert landing.json()["touches"]["kwai"]["click_id"] == CLICK
        for path in ("/attribution", "/attribution-sync"):
            r = await c.get(path)
            assert r.status_code == 200 and "set-cookie" not in r.headers
            touch = r.json()["touches"]["kwai"]
            assert (touch["click_id"], touch["pixel_id"]) == (CLICK, "777")
        r = await c.post("/lead")
        assert r.json()["queued"] == ["kwai"]


async def test_fastapi_without_a_key_logs_and_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TRACKING_SECRET_KEY", raising=False)
    app = fastapi_app()  # add_middleware only declares it: nothing is read yet
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR, logger="tracking_mw"):
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            with pytest.raises(ConfigurationError, match="TRACKING_SECRET_KEY"):
                await c.get("/attribution")
    assert [r.getMessage() for r in caplog.records if MISSING_KEY in r.getMessage()]


def env_without_key() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}
    env["PYTHONPATH"] = ROOT
    return env


def test_declared_middleware_without_a_key_says_so_at_startup() -> None:
    # Starlette builds middleware=[...] on the lifespan call, where uvicorn's default
    # lifespan mode hides the exception: the message must still reach the console.
    port = free_port()
    child = Child(
        uvicorn_argv("tests._quickstart:declared", port, "--factory"),
        env=env_without_key(),
        cwd=ROOT,
    )
    try:
        wait_listening(port, child.proc)
    finally:
        _, text = child.stop_and_read()
    assert f"tracking_mw: {MISSING_KEY}" in text
    assert "Exception in ASGI application" not in text  # said before any request came


def test_eager_settings_without_a_key_stop_the_server() -> None:
    port = free_port()
    done = subprocess.run(
        uvicorn_argv("tests._quickstart:eager", port, "--factory"),
        env=env_without_key(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert MISSING_KEY in done.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("glue", ["asgi", "wsgi"])
def test_outbox_error_is_logged_at_construction(
    glue: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Valid settings naming an outbox that cannot be opened: raised when the middleware is
    # built (by the framework, perhaps inside the lifespan call), and logged there too.
    settings = Settings(secret_key=KEY, outbox=f"sqlite:///{tmp_path}/missing/outbox.db")
    cls: Any = TrackingMiddleware if glue == "asgi" else TrackingWSGIMiddleware
    with (
        caplog.at_level(logging.ERROR, logger="tracking_mw"),
        pytest.raises(ConfigurationError, match="outbox directory does not exist"),
    ):
        cls(lambda *a: None, settings)
    assert any("outbox directory does not exist" in r.getMessage() for r in caplog.records)
