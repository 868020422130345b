"""Client-side rate limiting: requests/min and tokens/min, shared by every thread of a process.

Hand-written on purpose: the annotate flow calls the model from many threads
(Prefect's ThreadPoolTaskRunner), and no well-kept library offers a blocking,
thread-safe limiter over two budgets at once (requests *and* tokens, as
OpenAI-style providers meter them). The async-only and single-budget ones
would need a second layer of locking around them anyway.

Two token buckets refill continuously at limit/60 per second. Their capacity
is `burst_s` seconds of budget (at least one request), so a cold start does
not fire a whole minute's worth at once and trip the server's own limiter.
A request is admitted when both buckets hold enough; its token cost is an
estimate (prompt + max output), corrected by `settle` once usage is known.
"""

from __future__ import annotations

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

    def acquire(self, tokens_estimate: int) -> None:
        """Block until one request and `tokens_estimate` tokens fit in the budgets, then take them.

        A request larger than the token bucket is admitted once the bucket is
        full and leaves it in debt, so oversized prompts slow the process down
        instead of blocking forever.
        """
        needed = max(0.0, float(tokens_estimate))
        while True:
            with self._lock:
                self._refill()
                token_threshold = min(needed, self._token_capacity)
                if self._requests >= 1.0 and self._tokens >= token_threshold:
                    self._requests -= 1.0
                    self._tokens -= needed
                    break
                wait = max(
                    (1.0 - self._requests) / self._request_rate,
                    (token_threshold - self._tokens) / self._token_rate,
                )
            # Sleep outside the lock so other threads can settle or check in meanwhile.
            self._sleep(max(wait, 0.001))
        if self._shared is not None:  # the endpoint's caps, shared with every other worker
            self._shared.acquire(needed)

    def settle(self, tokens_estimate: int, actual_tokens: int) -> None:
        """Correct the token bucket once the real usage of an admitted request is known."""
        with self._lock:
            self._refill()
            self._tokens = min(self._token_capacity, self._tokens + tokens_estimate - actual_tokens)
        if self._shared is not None:
            self._shared.settle(tokens_estimate, actual_tokens)
