"""Client-side rate limiting: requests/min and tokens/min, shared by every caller in a process.

Hand-written on purpose: the annotate engine calls the model from coroutines
on one event loop, other callers (benchmark, audit) from threads, and no
well-kept library offers one limiter over two budgets at once (requests *and*
tokens, as OpenAI-style providers meter them) for both. Both paths go through
`try_acquire`, which never blocks: `acquire` sleeps the thread between tries,
`acquire_async` awaits. `try_acquire` is also the one place where a budget
shared across processes would be consulted.

Two token buckets refill continuously at limit/60 per second. Their capacity
is `burst_s` seconds of budget (at least one request), so a cold start does
not fire a whole minute's worth at once and trip the server's own limiter.
A request is admitted when both buckets hold enough; its token cost is an
estimate (prompt + max output), corrected by `settle` once usage is known.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol


class SharedBudget(Protocol):
    """A budget shared beyond this process (tasks/shared_limit.py): consulted after the local one admits."""

    def acquire(self, tokens_estimate: float) -> None: ...

    def settle(self, tokens_estimate: float, actual_tokens: float) -> None: ...


class RateLimiter:
    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        shared: SharedBudget | None = None,
    ) -> None:
        self._shared = shared
        if requests_per_minute <= 0 or tokens_per_minute <= 0:
            raise ValueError(
                f"rate limits must be positive (got requests_per_minute={requests_per_minute}, "
                f"tokens_per_minute={tokens_per_minute}); set a large value to effectively disable one"
            )
        if burst_s <= 0:
            raise ValueError(f"burst_s must be positive, got {burst_s}")
        self._request_rate = requests_per_minute / 60.0
        self._token_rate = tokens_per_minute / 60.0
        self._request_capacity = max(1.0, self._request_rate * burst_s)
        self._token_capacity = max(1.0, self._token_rate * burst_s)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._requests = self._request_capacity
        self._tokens = self._token_capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._requests = min(self._request_capacity, self._requests + elapsed * self._request_rate)
        self._tokens = min(self._token_capacity, self._tokens + elapsed * self._token_rate)

    def try_acquire(self, tokens_estimate: int) -> float:
        """Take one request and `tokens_estimate` tokens if both fit now (returns 0.0), else take
        nothing and return the seconds to wait before trying again.

        A request larger than the token bucket is admitted once the bucket is
        full and leaves it in debt, so oversized prompts slow the process down
        instead of blocking forever.
        """
        needed = max(0.0, float(tokens_estimate))
        with self._lock:
            self._refill()
            token_threshold = min(needed, self._token_capacity)
            if self._requests >= 1.0 and self._tokens >= token_threshold:
                self._requests -= 1.0
                self._tokens -= needed
                return 0.0
            wait = max((1.0 - self._requests) / self._request_rate, (token_threshold - self._tokens) / self._token_rate)
        return max(wait, 0.001)

    def acquire(self, tokens_estimate: int) -> None:
        """Block the calling thread until the request fits in the budgets, then take it."""
        while wait := self.try_acquire(tokens_estimate):
            self._sleep(wait)  # outside the lock, so other threads can settle or check in meanwhile
        if self._shared is not None:  # the endpoint's caps, shared with every other worker
            self._shared.acquire(float(tokens_estimate))

    async def acquire_async(self, tokens_estimate: int) -> None:
        """Wait (without blocking the event loop) until the request fits in the budgets, then take it."""
        while wait := self.try_acquire(tokens_estimate):
            await asyncio.sleep(wait)
        if self._shared is not None:  # a database round trip (and maybe a wait): off the event loop
            await asyncio.to_thread(self._shared.acquire, float(tokens_estimate))

    def settle(self, tokens_estimate: int, actual_tokens: int) -> None:
        """Correct the token bucket once the real usage of an admitted request is known."""
        with self._lock:
            self._refill()
            self._tokens = min(self._token_capacity, self._tokens + tokens_estimate - actual_tokens)
        if self._shared is not None:
            self._shared.settle(tokens_estimate, actual_tokens)
