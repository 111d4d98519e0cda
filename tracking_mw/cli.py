"""``tracking-mw``: run dispatchers, look into the outbox, retry dead letters, send a test event.

    tracking-mw dispatch [--once] [--platform P ...]
    tracking-mw outbox stats [--json]
    tracking-mw outbox recent [--limit N] [--json]
    tracking-mw dead-letters list [--limit N] [--json]
    tracking-mw dead-letters retry (--id ID ... | --all)
    tracking-mw send-test-event --platform P [--event NAME] [--click-id ID] [--pixel-id ID]

Settings come from the ``TRACKING_*`` environment (``Settings.from_env``); the outbox
commands need only ``TRACKING_OUTBOX`` (or ``--outbox``). Expected errors print one line
to stderr and exit with status 1; usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import httpx

from ._errors import TrackingError
from .attribution import Attribution, ClientContext, Touch
from .config import Settings
from .delivery import DeliveryView, Outbox, open_outbox
from .events import Event, UserData

__all__ = ["main"]

DEFAULT_OUTBOX = "sqlite:///tracking_outbox.sqlite3"
TEST_IP = "203.0.113.10"  # TEST-NET-3: never a real visitor
TEST_UA = "Mozilla/5.0 (X11; Linux x86_64) tracking-mw-send-test-event"


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tracking-mw", description="Deliver and inspect tracking_mw conversions."
    )
    p.add_argument("--outbox", help="outbox URL (default: $TRACKING_OUTBOX or the settings')")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dispatch", help="run a dispatcher until SIGTERM/SIGINT")
    d.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    d.add_argument(
        "--platform", action="append", default=[], help="only these platforms (repeatable)"
    )

    o = sub.add_parser("outbox", help="look into the outbox")
    osub = o.add_subparsers(dest="action", required=True)
    st = osub.add_parser("stats", help="records per platform and status")
    st.add_argument("--json", action="store_true")
    rc = osub.add_parser("recent", help="the newest delivery records")
    rc.add_argument("--limit", type=int, default=20)
    rc.add_argument("--json", action="store_true")

    dl = sub.add_parser("dead-letters", help="records that could not be delivered")
    dsub = dl.add_subparsers(dest="action", required=True)
    ls = dsub.add_parser("list", help="list dead letters, newest first")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    rt = dsub.add_parser("retry", help="queue dead letters again")
    grp = rt.add_mutually_exclusive_group(required=True)
    grp.add_argument("--id", action="append", dest="ids", help="record id (repeatable)")
    grp.add_argument("--all", action="store_true", help="every dead letter")

    t = sub.add_parser("send-test-event", help="send one test-mode event, print the answer")
    t.add_argument("--platform", required=True)
    t.add_argument("--event", default="Purchase", help="event name (default Purchase)")
    t.add_argument("--click-id", help="click id / bbg / link id / rtid to send")
    t.add_argument("--pixel-id", help="pixel id the click came with (Kwai, Bigo)")
    t.add_argument("--email", default="test@example.com")
    return p


def _outbox_url(args: argparse.Namespace) -> str:
    url: str = args.outbox or os.environ.get("TRACKING_OUTBOX", "").strip() or DEFAULT_OUTBOX
    return url


def _open(args: argparse.Namespace) -> Outbox:
    """The outbox to read or change. A SQLite file must exist already: opening one would make
    a new, empty outbox, and an operator in the wrong directory would read "empty"."""
    url = _outbox_url(args)
    rest = url[len("sqlite://") :].split("?", 1)[0] if url.startswith("sqlite://") else ""
    if rest.startswith("/") and len(rest) > 1 and not os.path.exists(rest[1:]):
        raise CliError(
            f"no outbox at {os.path.abspath(rest[1:])} (set TRACKING_OUTBOX or --outbox)"
        )
    return open_outbox(url)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.outbox:
        overrides["outbox"] = args.outbox
    return Settings.from_env(**overrides)


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _cmd_stats(args: argparse.Namespace) -> int:
    box = _open(args)
    stats = box.stats(time.time())
    box.close()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    cols = ("pending", "retrying", "delivered", "dead", "oldest_pending_age")
    print(f"{'platform':<10} " + " ".join(f"{c:>18}" for c in cols))
    for platform in sorted(stats):
        s = stats[platform]
        row = [f"{int(s[c]):>18}" for c in cols[:-1]] + [f"{s[cols[-1]]:>17.1f}s"]
        print(f"{platform:<10} " + " ".join(row))
    if not stats:
        print("(the outbox is empty)")
    return 0


def _print_views(views: Sequence[DeliveryView], as_json: bool) -> None:
    if as_json:
        print(json.dumps([v.to_dict() for v in views], indent=2))
        return
    for v in views:
        reason = v.last_error or ""
        print(
            f"{v.record_id:>8}  {v.platform:<8} {v.status:<9} attempts={v.attempts:<3}"
            f" {_fmt_time(v.updated_at)}  {v.event_name:<20} event_id={v.event_id}"
            f"  HTTP {v.last_status or '-'}  {reason}"
        )
    if not views:
        print("(none)")


def _cmd_recent(args: argparse.Namespace) -> int:
    box = _open(args)
    _print_views(box.recent(args.limit), args.json)
    box.close()
    return 0


def _cmd_dead_list(args: argparse.Namespace) -> int:
    box = _open(args)
    _print_views(box.dead_letters(args.limit), args.json)
    box.close()
    return 0


def _cmd_dead_retry(args: argparse.Namespace) -> int:
    box = _open(args)
    n = box.retry_dead(None if args.all else list(args.ids), time.time())
    box.close()
    print(f"{n} dead letter(s) queued again")
    if not args.all and n < len(args.ids):
        raise CliError(f"{len(args.ids) - n} id(s) were not dead letters")
    return 0


def _cmd_dispatch(args: argparse.Namespace) -> int:
    from ._runtime import Runtime

    settings = _settings(args)
    runtime = Runtime(settings)
    adapters = runtime.adapters
    if args.platform:
        unknown = [p for p in args.platform if p not in adapters]
        if unknown:
            raise CliError(f"not configured: {', '.join(unknown)}")
        adapters = {p: a for p, a in adapters.items() if p in args.platform}
    if not adapters:
        raise CliError("no platform is configured: nothing to dispatch")
    runtime.adapters = adapters
    dispatcher = runtime.make_dispatcher()
    log = logging.getLogger("tracking_mw")
    log.info(
        "tracking_mw: dispatching %s from %s", ", ".join(adapters), type(runtime.outbox).__name__
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, dispatcher.request_stop)
        await dispatcher.run(until_idle=args.once)

    asyncio.run(main())
    runtime.outbox.close()
    log.info("tracking_mw: dispatcher stopped")
    return 0


def _test_settings(settings: Settings, platform: str) -> Settings:
    """The settings with ``platform`` switched to its test mode (where it has one)."""
    cfg = settings.platforms.get(platform)
    if cfg is None:
        raise CliError(
            f"{platform} is not configured (see the TRACKING_{platform.upper()}_* variables)"
        )
    if platform in ("meta", "tiktok"):
        if not getattr(cfg, "test_event_code", None):
            raise CliError(
                f"set TRACKING_{platform.upper()}_TEST_EVENT_CODE (from the platform's test"
                " events tool) so the test event is not counted as a real one"
            )
        return settings
    if platform == "kwai" and settings.kwai is not None:
        return settings.replace(kwai=dataclasses.replace(settings.kwai, test=True))
    if platform == "rokt" and settings.rokt is not None:
        return settings.replace(rokt=dataclasses.replace(settings.rokt, environment="development"))
    return settings


def _cmd_send_test(args: argparse.Namespace) -> int:
    from .platforms import build_adapters, validate_event
    from .platforms._base import Skip

    platform = args.platform.strip().lower()
    settings = _test_settings(_settings(args), platform)
    adapter = build_adapters(settings).get(platform)
    if adapter is None:
        raise CliError(f"{platform} is not a platform tracking_mw knows")
    if platform in ("bigo", "roibest"):
        print(f"note: {platform} has no test mode; the platform receives this event as sent")
    now = time.time()
    click = args.click_id or f"tracking-mw-test-{int(now)}"
    attr = Attribution(visitor_id="tracking-mw-test").with_touch(
        Touch(
            platform=platform,
            click_id=click,
            pixel_id=args.pixel_id,
            first_seen=int(now),
            last_seen=int(now),
        )
    )
    attr = attr.with_client(
        ClientContext(ip=TEST_IP, user_agent=TEST_UA, url="https://example.com/tracking-mw-test")
    )
    money = args.event.strip().lower() in ("purchase", "firstdeposit")
    event = Event(
        name=args.event,
        value=Decimal("1.00") if money else None,
        currency="USD" if money else None,
        user=UserData(email=args.email),
        event_source_url="https://example.com/tracking-mw-test",
    )
    validate_event(event)
    try:
        item = adapter.prepare(event, attr)
    except Skip as skip:
        raise CliError(f"{platform} would skip this event: {skip.reason}") from None
    request = adapter.build([item])
    print(f"POST {request.url.split('?')[0]}  event_id={event.event_id}")
    try:
        with httpx.Client(timeout=settings.delivery.timeout) as client:
            response = client.request(
                request.method, request.url, headers=dict(request.headers), content=request.body
            )
    except httpx.HTTPError as exc:
        raise CliError(f"{platform} could not be reached: {type(exc).__name__}") from exc
    outcome = adapter.classify(response.status_code, response.headers, response.content, 1)
    print(f"HTTP {response.status_code}")
    body = response.content.decode("utf-8", "replace")[:2048]
    for secret in request.secrets:
        if secret:
            body = body.replace(secret, "***")
    print(body if body else "(empty body)")
    print(f"outcome: {outcome.kind}" + (f" ({outcome.reason})" if outcome.reason else ""))
    return 0 if outcome.kind == "ok" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tracking-mw``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    handlers = {
        ("dispatch", None): _cmd_dispatch,
        ("outbox", "stats"): _cmd_stats,
        ("outbox", "recent"): _cmd_recent,
        ("dead-letters", "list"): _cmd_dead_list,
        ("dead-letters", "retry"): _cmd_dead_retry,
        ("send-test-event", None): _cmd_send_test,
    }
    handler = handlers[(args.command, getattr(args, "action", None))]
    try:
        return handler(args)
    except (TrackingError, CliError) as exc:
        print(f"tracking-mw: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
