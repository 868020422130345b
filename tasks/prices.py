"""Dollars per million tokens of the hosted models seke is priced for: fresh input, cached input, output.

OpenAI bills a call's `usage.prompt_tokens` in two parts: the
`prompt_tokens_details.cached_tokens` served from its automatic prefix cache at
the model's cached-input rate, the rest at the input rate; completion tokens at
the output rate. The Batch API halves the input and output rates and, for models
before GPT-5, gives no further discount on cached tokens (tasks/batch.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


#: OpenAI's automatic prompt cache: a prefix is served from 1024 tokens on, in steps of 128.
CACHE_MIN_TOKENS = 1024
CACHE_STEP = 128


def cacheable_tokens(prefix_tokens: int) -> int:
    """The cached tokens a repeat of a `prefix_tokens`-long prefix can get: its last boundary, or 0."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return CACHE_MIN_TOKENS + (prefix_tokens - CACHE_MIN_TOKENS) // CACHE_STEP * CACHE_STEP


@dataclass(frozen=True)
class Prices:
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float

    def cost_usd(self, tokens_in: int, tokens_cached: int, tokens_out: int) -> float:
        """`tokens_in` counts every prompt token, the cached ones included (as `usage.prompt_tokens` does)."""
        fresh = max(0, tokens_in - tokens_cached)
        return (fresh * self.input + tokens_cached * self.cached_input + tokens_out * self.output) / 1e6


#: OpenAI's standard-tier list prices, from https://openai.com/api/pricing (read 2026-12-07):
#: gpt-4o and gpt-4o-mini discount cached input by 50 %, gpt-4.1 by 75 %.
MODEL_PRICES: dict[str, Prices] = {
    "gpt-4o": Prices(input=2.50, cached_input=1.25, output=10.00),
    "gpt-4o-mini": Prices(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4.1": Prices(input=2.00, cached_input=0.50, output=8.00),
}

#: The cached share of the input rate assumed for a model not in the table: GPT-4o's, as the
#: default input and output prices are GPT-4o's (core/config.py).
DEFAULT_CACHED_SHARE = 0.5

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def model_prices(model: str) -> Prices | None:
    """The table's prices of `model`, also under a dated snapshot name (gpt-4o-2024-08-06)."""
    return MODEL_PRICES.get(_DATED.sub("", model.rsplit("/", 1)[-1]))


def cached_share(model: str) -> float:
    """The cached-input rate as a share of the input rate, for `model`."""
    prices = model_prices(model)
    return prices.cached_input / prices.input if prices else DEFAULT_CACHED_SHARE
