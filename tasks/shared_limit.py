"""An endpoint's requests/min and tokens/min shared by every worker, through one row in PostgreSQL.

The provider's caps hold for an API key, not for a process: K workers on any
number of machines each limiting themselves to the full caps would send K
times too much. Each request takes from one token bucket per endpoint
(table rate_buckets), refilled and debited atomically by the database function
seke_rate_take (migration 0005), so the workers together stay under the caps
however many join or die, with nothing to rebalance.

Within a process one thread at a time waits on the shared bucket (the others
queue on a lock), so an empty bucket is polled once per wait by each process,
not once per thread. Token estimates are corrected on the next take, which
saves a round trip per call; at high caps a take covers a few requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, text


def bucket_key(base_url: str, model: str) -> str:
    """One bucket per endpoint and model: what a provider meters."""
    return f"{base_url.rstrip('/')}|{model}"[:300]


class SharedRateLimit:
    """Blocking take from the shared bucket; plugs into tasks.ratelimit.RateLimiter as its `shared` budget."""

    def __init__(
        self,
        engine: Engine,
        key: str,
        requests_per_minute: float,
        tokens_per_minute: float,
        *,
        burst_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._engine = engine
        self._key = key
        self._request_rate = requests_per_minute / 60.0
        self._token_rate = tokens_per_minute / 60.0
        self._request_capacity = max(1.0, self._request_rate * burst_s)
        self._token_capacity = max(1.0, self._token_rate * burst_s)
        self._sleep = sleep
        # At high caps, take a few requests per round trip (at most 50 ms of the cap ahead, never more than
        # 8): one database round trip per call was a measurable share of a worker's CPU.
        self._batch = max(1, min(8, int(self._request_rate * 0.05)))
        self._lock = threading.Lock()  # one waiter per process
        self._held_lock = threading.Lock()  # never held while waiting: settle must not queue behind a wait
        self._held_requests = 0
        self._held_tokens = 0.0  # taken and not yet spent; estimates corrected by settle (negative: a debt)

    def _take(self, requests: int, tokens: float) -> float:
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            return float(
                connection.scalar(
                    text("SELECT seke_rate_take(:key, :requests, :tokens, :rcap, :tcap, :rrate, :trate)"),
                    {
                        "key": self._key,
                        "requests": requests,
                        "tokens": tokens,
                        "rcap": self._request_capacity,
                        "tcap": self._token_capacity,
                        "rrate": self._request_rate,
                        "trate": self._token_rate,
                    },
                )
            )

    def acquire(self, tokens_estimate: float) -> None:
        """Block until the endpoint's shared budget admits one request of `tokens_estimate` tokens."""
        with self._lock:
            while True:
                with self._held_lock:
                    if self._held_requests >= 1 and self._held_tokens >= tokens_estimate:
                        self._held_requests -= 1
                        self._held_tokens -= tokens_estimate
                        return
                    requests = self._batch
                    tokens = max(0.0, requests * tokens_estimate - self._held_tokens)
                wait = self._take(requests, tokens)
                if wait == 0:
                    with self._held_lock:
                        self._held_requests += requests
                        self._held_tokens += tokens
                    continue
                self._sleep(wait)

    def settle(self, tokens_estimate: float, actual_tokens: float) -> None:
        """Give back an over-estimate (or owe an under-estimate): the next take accounts for it."""
        with self._held_lock:
            self._held_tokens += tokens_estimate - actual_tokens
