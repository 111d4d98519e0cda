"""``python -m tracking_mw``: the same as the ``tracking-mw`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
