"""The simulator's prompt cache and `n` over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from models.labels import FaceLabels, Task
from simulator.cache import MIN_TOKENS, STEP
from simulator.server import SimulatorConfig, running_simulator
from tasks.prompts import prior_prompt


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_simulator(SimulatorConfig()) as base_url:
        yield base_url


def chat(url: str, text: str, **extra: object) -> dict:
    body = {
        "model": "seke-simulator",
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        **extra,
    }
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def cached(response: dict) -> int:
    return response["usage"]["prompt_tokens_details"]["cached_tokens"]


def long_text(tag: str, tokens: int) -> str:
    """A prompt of exactly `tokens` simulator tokens (4 characters each), distinct per tag."""
    return (f"{tag}:" + "abcd" * tokens)[: 4 * tokens]


def test_a_repeated_prefix_is_served_from_the_cache_in_128_token_steps(url: str) -> None:
    text = long_text("repeat", 1300)
    first = chat(url, text)
    assert first["usage"]["prompt_tokens"] == 1300 and cached(first) == 0
    again = chat(url, text)
    assert cached(again) == MIN_TOKENS + 2 * STEP  # 1280: the last boundary at or below 1300 tokens
    longer = chat(url, text + "wxyz" * 200)  # extends the cached prompt: its prefix is served
    assert cached(longer) == 1280


def test_one_changed_token_misses_every_boundary_after_it(url: str) -> None:
    text = long_text("change", 1300)
    chat(url, text)
    early = text[:40] + "ZZZZ" + text[44:]  # token 10 differs: no boundary's prefix is the same
    assert cached(chat(url, early)) == 0
    late = text[: 4 * 1100] + "ZZZZ" + text[4 * 1101 :]  # token 1100 differs: only the 1024 prefix is shared
    assert cached(chat(url, late)) == MIN_TOKENS


def test_short_prompts_are_never_cached(url: str) -> None:
    text = long_text("short", MIN_TOKENS - 1)
    chat(url, text)
    assert cached(chat(url, text)) == 0


def test_the_output_schema_is_part_of_the_prefix(url: str) -> None:
    text = long_text("schema", 1100)
    chat(url, text)
    other = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert cached(chat(url, text, response_format=other)) == 0


def test_an_expired_prefix_misses() -> None:
    with running_simulator(SimulatorConfig(prefix_cache_ttl_s=0)) as base_url:
        text = long_text("ttl", 1100)
        chat(base_url, text)
        assert cached(chat(base_url, text)) == 0


def test_n_choices_are_independent_draws_and_choice_0_is_the_single_answer(url: str) -> None:
    prompt = prior_prompt(FaceLabels(), list(Task))
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt.text}]}]

    def ask(**extra: object) -> dict:
        body = {"model": "seke-simulator", "messages": messages, "temperature": 1.0, "seed": 7, **extra}
        return httpx.post(f"{url}/chat/completions", json=body, timeout=30).json()

    single, several, repeated = ask(), ask(n=4), ask(n=4)
    texts = [choice["message"]["content"] for choice in several["choices"]]
    assert [choice["index"] for choice in several["choices"]] == [0, 1, 2, 3]
    assert texts[0] == single["choices"][0]["message"]["content"]
    assert len(set(texts)) > 1  # not one answer four times
    assert texts == [choice["message"]["content"] for choice in repeated["choices"]]  # seeded: the same again
    assert several["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt counts once
    assert several["usage"]["completion_tokens"] == sum(len(t) // 4 for t in texts)


def test_it_can_refuse_n() -> None:
    with running_simulator(SimulatorConfig(refuse_n=True)) as base_url:
        response = httpx.post(
            f"{base_url}/chat/completions",
            json={"model": "seke-simulator", "messages": [{"role": "user", "content": "hi"}], "n": 2},
            timeout=30,
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "n"
        assert chat(base_url, "hi", n=1)["choices"]
