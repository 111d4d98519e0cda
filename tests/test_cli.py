"""tracking-mw: outbox stats, dead letters, dispatch and send-test-event against fakes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._servers import serve_in_thread
from tracking_mw.cli import main
from tracking_mw.delivery import NewRecord
from tracking_mw.delivery.sqlite import SQLiteOutbox
from tracking_mw.testing import (
    DEMO_KWAI_PIXEL_ID,
    DEMO_KWAI_TOKEN,
    DEMO_META_PIXEL_ID,
    DEMO_META_TOKEN,
    DEMO_ROKT_KEY,
    DEMO_ROKT_SECRET,
    FakePlatforms,
)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakePlatforms, str]]:
    f = FakePlatforms()
    with serve_in_thread(f.app) as base:
        yield f, base


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    import os

    for k in list(os.environ):
        if k.startswith("TRACKING_"):
            monkeypatch.delenv(k)
    url = f"sqlite:///{tmp_path}/outbox.sqlite3"
    monkeypatch.setenv("TRACKING_OUTBOX", url)
    monkeypatch.setenv("TRACKING_SECRET_KEY", "s" * 32)
    monkeypatch.setenv("TRACKING_BIGO_ENABLED", "false")
    monkeypatch.setenv("TRACKING_ROIBEST_ENABLED", "false")
    return url


def seeded(url: str) -> SQLiteOutbox:
    box = SQLiteOutbox(url[len("sqlite:///") :])
    now = time.time()
    box.add(
        [NewRecord("kwai", f"e{i}", "Purchase", "", now, {"n": i}) for i in range(3)]
        + [NewRecord("meta", "m1", "Lead", "", now, {"n": 9})],
        now,
    )
    dead = box.claim("kwai", 2, 30.0, now)
    box.bury(dead, now, "invalid click id", 200, '{"result":10005}')
    return box


def test_outbox_stats(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    seeded(env).close()
    assert main(["outbox", "stats"]) == 0
    out = capsys.readouterr().out
    assert "kwai" in out and "meta" in out and "pending" in out
    assert main(["outbox", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kwai"]["dead"] == 2 and stats["kwai"]["pending"] == 1
    assert stats["meta"]["pending"] == 1
    assert main(["outbox", "recent", "--limit", "2", "--json"]) == 0
    assert [v["event_id"] for v in json.loads(capsys.readouterr().out)] == ["m1", "e2"]


def test_dead_letters_list_and_retry(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    seeded(env).close()
    assert main(["dead-letters", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("invalid click id") == 2
    assert main(["dead-letters", "list", "--json"]) == 0
    views = json.loads(capsys.readouterr().out)
    assert {v["status"] for v in views} == {"dead"}
    assert main(["dead-letters", "retry", "--id", views[0]["record_id"]]) == 0
    assert "1 dead letter(s) queued again" in capsys.readouterr().out
    assert main(["dead-letters", "retry", "--id", "999"]) == 1
    assert "not dead letters" in capsys.readouterr().err
    assert main(["dead-letters", "retry", "--all"]) == 0
    assert "1 dead letter(s)" in capsys.readouterr().out
    assert main(["dead-letters", "list"]) == 0
    assert "(none)" in capsys.readouterr().out


def test_errors_are_one_line_and_non_zero(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--outbox", "mongodb://x", "outbox", "stats"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tracking-mw: error: TRACKING_OUTBOX") and err.count("\n") == 1
    # Reading an outbox that is not there fails, and makes no empty one.
    missing = env.replace("outbox.sqlite3", "elsewhere.sqlite3")
    for command in (["outbox", "stats"], ["outbox", "recent"], ["dead-letters", "list"]):
        assert main(["--outbox", missing, *command]) == 1
        err = capsys.readouterr().err
        assert "no outbox at " in err and "elsewhere.sqlite3" in err and err.count("\n") == 1
    assert not Path(missing[len("sqlite:///") :]).exists()
    monkeypatch.delenv("TRACKING_SECRET_KEY")
    assert main(["dispatch", "--once"]) == 1
    assert "TRACKING_SECRET_KEY" in capsys.readouterr().err
    monkeypatch.setenv("TRACKING_SECRET_KEY", "s" * 32)
    assert main(["dispatch", "--once"]) == 1
    assert "no platform is configured" in capsys.readouterr().err
    assert main(["send-test-event", "--platform", "kwai"]) == 1
    assert "kwai is not configured" in capsys.readouterr().err


def test_dispatch_once_delivers(
    env: str,
    fake: tuple[FakePlatforms, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platforms, base = fake
    platforms.reset()
    monkeypatch.setenv("TRACKING_KWAI_ACCESS_TOKENS", DEMO_KWAI_TOKEN)
    monkeypatch.setenv("TRACKING_KWAI_BASE_URL", f"{base}/kwai")
    from tracking_mw import Attribution, Settings, Touch
    from tracking_mw._runtime import Runtime

    rt = Runtime(Settings.from_env())
    attr = Attribution().with_touch(
        Touch(platform="kwai", click_id="CLICK", pixel_id=DEMO_KWAI_PIXEL_ID)
    )
    for _ in range(3):
        assert rt.tracker.track("Purchase", value=5, currency="BRL", attribution=attr).queued
    rt.close()
    assert main(["dispatch", "--once", "--platform", "kwai"]) == 0
    assert len(platforms.events("kwai")) == 3
    assert main(["outbox", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kwai"]["delivered"] == 3
    assert main(["dispatch", "--once", "--platform", "meta"]) == 1


def test_send_test_event_kwai_and_rokt(
    env: str,
    fake: tuple[FakePlatforms, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platforms, base = fake
    platforms.reset()
    monkeypatch.setenv("TRACKING_KWAI_ACCESS_TOKENS", DEMO_KWAI_TOKEN)
    monkeypatch.setenv("TRACKING_KWAI_BASE_URL", f"{base}/kwai")
    monkeypatch.setenv("TRACKING_ROKT_API_KEY", DEMO_ROKT_KEY)
    monkeypatch.setenv("TRACKING_ROKT_API_SECRET", DEMO_ROKT_SECRET)
    monkeypatch.setenv("TRACKING_ROKT_BASE_URL", f"{base}/rokt")
    # Kwai needs the pixel of the click: without one the adapter skips, explained.
    assert main(["send-test-event", "--platform", "kwai"]) == 1
    assert "would skip" in capsys.readouterr().err
    code = main(["send-test-event", "--platform", "kwai", "--pixel-id", DEMO_KWAI_PIXEL_ID])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "HTTP 200" in out and "outcome: ok" in out and DEMO_KWAI_TOKEN not in out
    (kwai,) = platforms.events("kwai")
    assert kwai["trackFlag"] is True
    assert main(["send-test-event", "--platform", "rokt"]) == 0
    assert "HTTP 202" in capsys.readouterr().out
    (rokt,) = platforms.events("rokt")
    assert rokt["environment"] == "development"


def test_send_test_event_meta_needs_a_test_code(
    env: str,
    fake: tuple[FakePlatforms, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platforms, base = fake
    platforms.reset()
    monkeypatch.setenv("TRACKING_META_PIXEL_ID", DEMO_META_PIXEL_ID)
    monkeypatch.setenv("TRACKING_META_ACCESS_TOKEN", DEMO_META_TOKEN)
    monkeypatch.setenv("TRACKING_META_BASE_URL", f"{base}/meta")
    assert main(["send-test-event", "--platform", "meta"]) == 1
    assert "TRACKING_META_TEST_EVENT_CODE" in capsys.readouterr().err
    monkeypatch.setenv("TRACKING_META_TEST_EVENT_CODE", "TEST123")
    assert main(["send-test-event", "--platform", "meta"]) == 0
    out = capsys.readouterr().out
    assert "events_received" in out and DEMO_META_TOKEN not in out
    assert len(platforms.events("meta")) == 1
    platforms.inject("meta", status=400, body={"error": {"message": "bad", "code": 100}})
    assert main(["send-test-event", "--platform", "meta"]) == 1
    assert "outcome: permanent" in capsys.readouterr().out


def test_console_entry_point_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tracking_mw", "--outbox", "nope://", "outbox", "stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("tracking-mw: error:")


def test_dispatch_runs_until_sigterm(fake: tuple[FakePlatforms, str], tmp_path: Path) -> None:
    from tests._servers import Child
    from tests.delivery._helpers import wait_until
    from tracking_mw import Attribution, Settings, Touch
    from tracking_mw._runtime import Runtime

    platforms, base = fake
    platforms.reset()
    env = {
        "TRACKING_SECRET_KEY": "s" * 32,
        "TRACKING_OUTBOX": f"sqlite:///{tmp_path}/outbox.sqlite3",
        "TRACKING_KWAI_ACCESS_TOKENS": DEMO_KWAI_TOKEN,
        "TRACKING_KWAI_BASE_URL": f"{base}/kwai",
        "TRACKING_BIGO_ENABLED": "false",
        "TRACKING_ROIBEST_ENABLED": "false",
    }
    rt = Runtime(Settings.from_env(environ=env))
    attr = Attribution().with_touch(
        Touch(platform="kwai", click_id="C", pixel_id=DEMO_KWAI_PIXEL_ID)
    )
    for _ in range(3):
        rt.tracker.track("Lead", attribution=attr)
    rt.close()
    child = Child([sys.executable, "-m", "tracking_mw", "dispatch"], env=env)
    try:
        wait_until(lambda: len(platforms.events("kwai")) == 3)
    finally:
        code = child.stop()
    assert code == 0
