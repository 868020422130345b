"""The shared requests/min + tokens/min limiter: exact arithmetic on a fake clock, caps under real threads."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.ratelimit import RateLimiter


class FakeClock:
    """A clock that only moves when the limiter sleeps: waits become exact numbers."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_request_bucket_spaces_requests_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 10**9, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 1 request/s, burst 1
    for _ in range(5):
        limiter.acquire(10)
    assert clock.now == pytest.approx(4.0)


def test_token_bucket_limits_by_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10**6, 6000, burst_s=1.0, clock=clock, sleep=clock.sleep)  # 100 tokens/s, burst 100
    for _ in range(5):
        limiter.acquire(50)
    assert clock.now == pytest.approx(1.5)  # 250 tokens: 100 at once, then 150 at 100/s


def test_settle_refunds_and_charges_the_difference() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10**6, 6000, burst_s=1.0, clock=clock, sleep=clock.sleep)
    limiter.acquire(100)  # estimate takes the whole bucket
    limiter.settle(100, 10)  # the call used only 10: 90 come back
    limiter.acquire(90)
    assert clock.now == pytest.approx(0.0)
    limiter.settle(90, 190)  # used 100 more than estimated: the bucket goes into debt
    limiter.acquire(50)
    assert clock.now == pytest.approx(1.5)  # from -100 up to 50 at 100 tokens/s


def test_oversized_request_waits_for_a_full_bucket_instead_of_forever() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10**6, 6000, burst_s=1.0, clock=clock, sleep=clock.sleep)
    limiter.acquire(50)
    limiter.acquire(1000)  # larger than the 100-token bucket
    assert clock.now == pytest.approx(0.5)


def test_invalid_limits_are_refused_with_the_remedy() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RateLimiter(0, 100)
    with pytest.raises(ValueError, match="burst_s"):
        RateLimiter(10, 100, burst_s=0)


def test_threads_share_the_request_cap() -> None:
    # 20 requests/s with a bucket of 1: 24 acquisitions from 8 threads take at least 23/20 s.
    limiter = RateLimiter(1200, 10**9, burst_s=0.05)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [limiter.acquire(1) for _ in range(3)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start >= 23 / 20 - 0.02
