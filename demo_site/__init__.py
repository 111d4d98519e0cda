"""A demo shop that shows tracking_mw at work, every platform answered by a local fake.

Run it with ``make demo`` (or ``python -m demo_site``) and open http://127.0.0.1:8000/ads.
Build it in code with :func:`demo_site.app.create_app`.
"""

from __future__ import annotations
