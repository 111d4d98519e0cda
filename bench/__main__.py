"""Run every benchmark and write bench/RESULTS.md.

Each benchmark measures its own baseline in the same run and reports ratios to it, so the
numbers stay comparable across machines. ``python -m bench [name ...]`` runs a subset.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
from pathlib import Path

MODULES = ("bench_middleware", "bench_delivery")
RESULTS = Path(__file__).with_name("RESULTS.md")


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    sections = []
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        print(f"running {name} ...", flush=True)
        section = mod.run()
        print(section, flush=True)
        sections.append(section)
    header = (
        "# Benchmark results\n\n"
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.machine()}. "
        "Regenerate with `make bench`. "
        "Every ratio is against a baseline measured in the same run.\n"
    )
    if names == list(MODULES):
        RESULTS.write_text(header + "\n" + "\n\n".join(sections) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
