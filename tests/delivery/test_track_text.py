"""track() with text UTF-8 cannot encode, through the durable outboxes."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracking_mw import Attribution, Settings
from tracking_mw._runtime import Runtime
from tracking_mw.delivery import Outbox
from tracking_mw.delivery.redis import RedisOutbox
from tracking_mw.delivery.sqlite import SQLiteOutbox
from tracking_mw.tracker import track

from ._helpers import JsonAdapter

# A latin-1 byte read as UTF-8 with "surrogateescape" (a header, a file name): a lone
# surrogate, which UTF-8 cannot encode.
LONE = b"caf\xe9".decode("utf-8", "surrogateescape")


@pytest.fixture(params=["sqlite", "redis"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    box: Outbox
    if request.param == "sqlite":
        box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    else:
        url = request.getfixturevalue("redis_url")
        box = RedisOutbox.from_url(f"{url}?prefix={{t{secrets.token_hex(4)}}}")
    settings = Settings(
        secret_key="k" * 32, outbox="memory://", bigo=None, roibest=None, start_dispatcher=False
    )
    rt = Runtime(settings, adapters={"a": JsonAdapter(name="a")}, outbox=box)
    Runtime.set_default(rt)
    yield rt
    Runtime.set_default(None)
    rt.close()
    box.close()


def test_a_lone_surrogate_is_queued_as_a_replacement_character(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # The outbox write used to fail with UnicodeEncodeError: the event was lost for every
    # platform, and the log said the outbox itself had failed.
    caplog.set_level(logging.WARNING, logger="tracking_mw")
    receipt = track(
        "Lead",
        event_id="order-" + LONE,
        properties={"product": LONE, "key": LONE},
        attribution=Attribution(visitor_id="v-" + LONE),
    )
    assert receipt.error is None and receipt.queued == ("a",)
    assert caplog.records == []
    (claimed,) = runtime.outbox.claim("a", 10, 30.0, 2e9)
    assert claimed.event_id == "order-caf\ufffd" and claimed.batch_key == "caf\ufffd"
    assert claimed.item["visitor"] == "v-caf\ufffd"
    # The next event is not affected either way.
    assert track("Lead", attribution=Attribution(visitor_id="v2")).queued == ("a",)
