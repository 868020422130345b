"""The simulator's model of a provider's automatic prompt cache (OpenAI's rules).

A request's prompt is a sequence of tokens in the order the provider reads it:
the model and the structured-output schema first (they are part of OpenAI's
prefix), then each message's parts in order, text as ~4-character tokens (the
simulator's token estimate), an image as its token count of units that all
depend on its exact bytes. A prefix can be served from the cache once it is at
least 1024 tokens long, in steps of 128 tokens; the cached count of a request
is its longest prefix at such a boundary that an earlier request left in the
cache within the TTL. Every request stores (or refreshes) all its boundaries.
So one changed token misses every boundary after it, and a changed image
misses everything from the image on.

What it does not model: routing by the first ~256 tokens and spill-over to
other machines above ~15 requests a minute per prefix (a real provider misses
more often than this cache does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from tasks.prices import CACHE_MIN_TOKENS, CACHE_STEP

MIN_TOKENS = CACHE_MIN_TOKENS
STEP = CACHE_STEP
CHARS_PER_TOKEN = 4  # tasks/vllm.py estimate_text_tokens
_PRUNE_EVERY = 10_000  # stored boundaries between sweeps of expired ones


def text_units(text: str) -> list[bytes]:
    """The tokens of a text part, as the simulator counts them (at least one for a non-empty text)."""
    if not text:
        return []
    count = max(1, len(text) // CHARS_PER_TOKEN)
    return [text[i * CHARS_PER_TOKEN : (i + 1) * CHARS_PER_TOKEN].encode() for i in range(count)]


def image_units(data: bytes, tokens: int) -> list[bytes]:
    digest = hashlib.sha256(data).digest()
    return [digest + i.to_bytes(4, "big") for i in range(tokens)]


def prompt_units(body: dict[str, Any], image_tokens: Callable[[bytes], int]) -> list[bytes]:
    """The request's prompt tokens in order; `image_tokens` gives an image's token count from its bytes."""
    units: list[bytes] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            units += text_units(content)
            continue
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "text":
                units += text_units(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                try:
                    data = base64.b64decode(url.split(",", 1)[1], validate=False) if "," in url else url.encode()
                except (binascii.Error, ValueError):
                    data = url.encode()
                units += image_units(data, image_tokens(data))
    return units


def salt(body: dict[str, Any]) -> bytes:
    """What precedes the messages in the prefix: the model and the output schema."""
    return json.dumps([body.get("model"), body.get("response_format")], sort_keys=True).encode()


class PrefixCache:
    """Prefix digests at every 128-token boundary from 1024 on, each with an expiry time."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._expires: dict[bytes, float] = {}
        self._stored = 0

    def serve(self, prefix_salt: bytes, units: Sequence[bytes]) -> int:
        """Tokens of this prompt served from the cache; stores the prompt's own prefixes."""
        if self.ttl_s <= 0 or len(units) < MIN_TOKENS:
            return 0
        now = self._clock()
        running = hashlib.sha256(prefix_salt)
        digests: list[tuple[int, bytes]] = []
        for position, unit in enumerate(units, start=1):
            running.update(len(unit).to_bytes(2, "big") + unit)
            if position >= MIN_TOKENS and (position - MIN_TOKENS) % STEP == 0:
                digests.append((position, running.copy().digest()))
        cached = 0
        for position, digest in digests:
            if self._expires.get(digest, 0.0) > now:
                cached = position
        for _, digest in digests:
            self._expires[digest] = now + self.ttl_s
        self._stored += len(digests)
        if self._stored >= _PRUNE_EVERY:
            self._stored = 0
            self._expires = {d: t for d, t in self._expires.items() if t > now}
        return cached
