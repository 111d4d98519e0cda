"""A standalone dispatcher for process tests (``python -m tests.delivery.dispatcher_main``).

Like ``tracking-mw dispatch`` with short test timings; writes its counters as JSON to
``$TEST_RESULT`` when it stops (SIGTERM) and touches ``$TEST_READY`` once running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from tracking_mw import DeliveryConfig, Settings
from tracking_mw._runtime import Runtime


def main() -> None:
    logging.getLogger("tracking_mw").setLevel(logging.ERROR)
    delivery = DeliveryConfig(
        backoff_base=0.05,
        backoff_cap=0.3,
        max_attempts=10_000,
        poll_interval=0.02,
        timeout=5.0,
        lease_seconds=float(os.environ.get("TEST_LEASE_SECONDS", "2")),
        shutdown_grace=2.0,
    )
    runtime = Runtime(Settings.from_env(delivery=delivery, start_dispatcher=False))
    dispatcher = runtime.make_dispatcher()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, dispatcher.request_stop)
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0)
        if os.environ.get("TEST_READY"):
            Path(os.environ["TEST_READY"]).touch()
        await task

    asyncio.run(run())
    if os.environ.get("TEST_RESULT"):
        Path(os.environ["TEST_RESULT"]).write_text(json.dumps(runtime.metrics.snapshot()))


if __name__ == "__main__":
    main()
