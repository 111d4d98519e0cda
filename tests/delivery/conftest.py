from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._helpers import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One redis-server for the delivery tests (each test uses its own key prefix)."""
    with redis_server() as url:
        yield url
