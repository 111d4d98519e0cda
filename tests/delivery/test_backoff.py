"""Backoff with full jitter and Retry-After; the token bucket."""

from __future__ import annotations

import pytest

from tracking_mw.delivery.backoff import TokenBucket, backoff_delay


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
        (3, 0.5, 2.0),
        (10, 1.0, 60.0),  # 512 capped at 60
        (500, 1.0, 60.0),  # no overflow for huge attempt counts
        (4, 0.0, 0.0),  # full jitter reaches zero
    ],
)
def test_exponential_full_jitter_capped(attempts: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempts, base=1.0, cap=60.0, rand=lambda: rand) == expected


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(30.0, 30.0), (0.5, 4.0), (3600.0, 60.0), (-5.0, 4.0)],
)
def test_retry_after_is_a_floor_clamped_to_the_cap(retry_after: float, expected: float) -> None:
    got = backoff_delay(3, base=1.0, cap=60.0, retry_after=retry_after, rand=lambda: 1.0)
    assert got == expected


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, burst=2, clock=lambda: now[0])
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)  # the third waits for a token
    now[0] = 1.0
    assert bucket.take() == 0.0
    # A request carrying several events takes one token per event.
    now[0] = 3.0
    assert bucket.take(5) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        TokenBucket(0)
