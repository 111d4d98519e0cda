"""``python -m demo_site [--host H] [--port N] [--outbox URL]``: serve the demo shop.

Defaults come from ``DEMO_HOST`` (127.0.0.1), ``DEMO_PORT`` (8000) and ``DEMO_OUTBOX`` (a
SQLite file in the temporary directory).
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from .app import create_app, default_outbox


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m demo_site", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("DEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))
    parser.add_argument("--outbox", default=os.environ.get("DEMO_OUTBOX") or default_outbox())
    args = parser.parse_args(argv)
    app = create_app(port=args.port, outbox=args.outbox, host=args.host)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"\n  Demo shop:        http://{shown}:{args.port}/\n"
        f"  Sample ad clicks: http://{shown}:{args.port}/ads\n"
        f"  Inspector:        http://{shown}:{args.port}/_tracking/\n"
        f"  Outbox:           {args.outbox}\n",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
