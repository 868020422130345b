"""The client-side limiter under the async engine, and the default caps per endpoint."""

from __future__ import annotations

import asyncio
import time

from core.config import Settings
from tasks.ratelimit import RateLimiter
from tasks.vllm import HOSTED_RATE_LIMITS, AsyncVLLMClient, VLLMConfig


def test_coroutines_share_the_request_cap() -> None:
    # 20 requests/s with a bucket of 1: 24 acquisitions from 8 coroutines on one loop take at least 23/20 s.
    limiter = RateLimiter(1200, 10**9, burst_s=0.05)

    async def main() -> None:
        async def three() -> None:
            for _ in range(3):
                await limiter.acquire_async(1)

        await asyncio.gather(*(three() for _ in range(8)))

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start >= 23 / 20 - 0.02


def test_try_acquire_takes_nothing_when_it_says_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(60, 10**9, burst_s=1.0, clock=lambda: now[0])  # 1 request/s
    assert limiter.try_acquire(1) == 0.0
    wait = limiter.try_acquire(1)
    assert wait == 1.0
    now[0] += wait
    assert limiter.try_acquire(1) == 0.0


def test_local_endpoints_have_no_default_cap_and_hosted_ones_their_documented_one() -> None:
    for url in ("http://127.0.0.1:8000/v1", "http://vllm.internal:8000/v1", "http://localhost:11434/v1"):
        config = VLLMConfig.from_settings(Settings(), base_url=url, model="m")
        assert config.requests_per_minute is None and config.tokens_per_minute is None
        assert AsyncVLLMClient(config)._limiter is None  # noqa: SLF001 (what "no cap" means for the client)
    hosted = VLLMConfig.from_settings(Settings(), base_url="https://api.openai.com/v1", model="gpt-4o")
    assert (hosted.requests_per_minute, hosted.tokens_per_minute) == HOSTED_RATE_LIMITS["api.openai.com"]
    mine = VLLMConfig.from_settings(
        Settings(requests_per_minute=500, tokens_per_minute=30_000), base_url="https://api.openai.com/v1", model="gpt-4o"
    )
    assert (mine.requests_per_minute, mine.tokens_per_minute) == (500, 30_000)
