"""Retry timing: exponential backoff with full jitter, capped; ``Retry-After`` as a minimum.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of
many records that failed together, so a platform coming back from an outage is not hit by
one synchronized wave. A ``Retry-After`` the platform sent is honoured as a floor, clamped
to the cap so a hostile or broken header cannot park records for days.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["TokenBucket", "backoff_delay"]


def backoff_delay(
    attempts: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next try, after ``attempts`` failed tries (>= 1)."""
    exp = min(cap, base * (2.0 ** max(0, min(attempts - 1, 60))))
    delay = rand() * exp
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), cap))
    return delay


class TokenBucket:
    """A rate limit of ``rate`` tokens per second with bursts of up to ``burst``.

    Not thread-safe: each dispatcher lane (one platform, one event loop) owns its bucket.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()

    def take(self, n: float = 1.0) -> float:
        """Take ``n`` tokens; returns the seconds to wait before using them (0: at once).

        Tokens may go negative: that is a reservation, so concurrent takers queue fairly.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    def give_back(self, n: float) -> None:
        """Return ``n`` tokens taken but not used (what was to be sent was not)."""
        self._tokens = min(self.burst, self._tokens + n)
