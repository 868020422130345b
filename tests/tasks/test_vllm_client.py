"""VLLMClient against the simulator over real HTTP: parsing, invalid answers, retries, permanent errors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from PIL import Image
from pydantic import SecretStr

from models.answers import RewriteAnswer, sample_answer_model
from models.labels import ACTION_UNITS, FaceLabels, Task
from simulator.server import SimulatorConfig, running_simulator
from tasks.groundtruth import save_with_ground_truth
from tasks.prompts import prior_prompt, rewrite_prompt
from tasks.vllm import (
    PermanentCallError,
    TransientCallError,
    VLLMClient,
    VLLMConfig,
    extract_json_object,
    parse_answer,
    retry_after_s,
)

TRUTH = FaceLabels(
    expression="surprise", valence=0.2, arousal=0.8, aus={au: au in ("AU1", "AU2", "AU5", "AU26") for au in ACTION_UNITS}
)
ALL = sample_answer_model(set(Task))
PROMPT = prior_prompt(FaceLabels(), list(Task), use_prior=False)


def face_png(labels: FaceLabels = TRUTH, side: int = 64) -> bytes:
    return save_with_ground_truth(Image.new("RGB", (side, side), (120, 100, 90)), labels, "PNG")


def client_for(url: str, **overrides: object) -> VLLMClient:
    settings: dict[str, object] = {
        "base_url": url,
        "model": "seke-simulator",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "requests_per_minute": 10**6,
        "tokens_per_minute": 10**9,
        **overrides,
    }
    return VLLMClient(VLLMConfig.model_validate(settings))


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_simulator(SimulatorConfig()) as base_url:
        yield base_url


def sample(client: VLLMClient, seed: int | None = 1, image: bytes | None = None):  # type: ignore[no-untyped-def]
    return client.complete(
        "sample", PROMPT, image=image or face_png(), answer_model=ALL, temperature=1.0, seed=seed, max_tokens=400
    )


def test_structured_output_is_parsed_and_recorded(url: str) -> None:
    with client_for(url, api_key=SecretStr("sk-secret-123")) as client:
        result = sample(client)
    assert result.valid and result.error is None
    assert set(result.parsed or {}) == {"expression", "valence", "arousal", "aus"}
    assert result.attempts == 1 and result.tokens_in > 255 and result.tokens_out > 0
    assert result.cost_usd == pytest.approx((result.tokens_in * 2.5 + result.tokens_out * 10.0) / 1e6)
    assert result.response_model == "seke-simulator" and result.system_fingerprint == "seke-simulator"
    assert result.started_at <= result.finished_at
    params = result.request_params
    assert params["prompt_sha256"] == PROMPT.sha256 and params["stage"] == "sample"
    assert params["image_resized"] is False and params["image_sent_bytes"] == len(face_png())
    assert "sk-secret-123" not in repr(params) and "base64" not in repr(params)


def test_unstructured_output_in_fences_and_prose_is_parsed(url: str) -> None:
    with client_for(url, structured_output=False) as client:
        results = [sample(client, seed=s) for s in range(12)]
    assert all(r.valid for r in results), [r.error for r in results]
    assert any("```json" in r.raw_text for r in results)
    assert any("```" not in r.raw_text and not r.raw_text.startswith("{") for r in results)


def test_extract_json_object_tolerates_fences_prose_and_braces_in_strings() -> None:
    assert extract_json_object('{"a": 1}') == {"a": 1}
    assert extract_json_object('Sure.\n```json\n{"a": {"b": 2}}\n```\nDone') == {"a": {"b": 2}}
    assert extract_json_object('My answer is {"text": "a } brace", "n": 3} ok') == {"text": "a } brace", "n": 3}
    assert extract_json_object('first {not json} then {"x": true}') == {"x": True}
    assert extract_json_object('{"cut": "off') is None
    assert extract_json_object("no json here") is None


def test_parse_answer_says_why_an_answer_is_invalid() -> None:
    parsed, error = parse_answer('{"answer": ""}', RewriteAnswer)
    assert parsed is None and error is not None and "answer" in error
    parsed, error = parse_answer('{"expression": "joy"}', sample_answer_model({Task.EXPRESSION}))
    assert parsed is None and error is not None and "expression" in error


def test_invalid_answers_are_returned_not_raised(url: str) -> None:
    with running_simulator(SimulatorConfig(malformed_rate=1.0)) as broken_url, client_for(broken_url) as client:
        results = [sample(client, seed=s) for s in range(9)]
    assert all(not r.valid and r.parsed is None and r.error for r in results)
    assert all(r.raw_text for r in results)
    truncated = [r for r in results if r.finish_reason == "length"]
    assert truncated and all("raise this stage's max_tokens" in (r.error or "") for r in truncated)
    # An answer for other tasks than the model asked for is invalid too, and never retried.
    with client_for(url) as client:
        wrong = client.complete(
            "sample", prior_prompt(FaceLabels(), [Task.EXPRESSION]), image=face_png(),
            answer_model=sample_answer_model({Task.AU}), temperature=0.0, seed=None, max_tokens=400,
        )  # fmt: skip
    assert not wrong.valid and wrong.attempts == 1 and "aus" in (wrong.error or "")


def test_429_and_5xx_storm_is_retried_honouring_retry_after() -> None:
    # The first 4 requests fail: 429, 503, 429, 503. Each 429 asks for 0.2 s.
    config = SimulatorConfig(storm_requests=4, retry_after_s=0.2)
    with running_simulator(config) as storm_url, client_for(storm_url) as client:
        start = time.monotonic()
        result = sample(client)
        elapsed = time.monotonic() - start
    assert result.valid and result.attempts == 5
    assert elapsed >= 0.4


def test_retry_after_in_whole_seconds_is_honoured() -> None:
    with running_simulator(SimulatorConfig(storm_requests=1, retry_after_s=1.0)) as slow_url:
        with client_for(slow_url) as client:
            start = time.monotonic()
            result = sample(client)
            assert time.monotonic() - start >= 1.0
    assert result.valid and result.attempts == 2


def test_random_faults_are_absorbed_by_retries() -> None:
    config = SimulatorConfig(rate_limit_rate=0.2, server_error_rate=0.1, retry_after_s=0.0, seed=3)
    with running_simulator(config) as flaky_url, client_for(flaky_url, max_attempts=15) as client:
        results = [sample(client, seed=s) for s in range(20)]
    assert all(r.valid for r in results)
    assert sum(r.attempts for r in results) > 20


def test_exhausted_transient_failures_raise_for_a_later_retry() -> None:
    with running_simulator(SimulatorConfig(storm_requests=10, retry_after_s=0.01)) as storm_url, client_for(storm_url, max_attempts=3) as c:
        with pytest.raises(TransientCallError, match="retry the image later") as info:
            sample(c)
    assert info.value.attempts == 3 and "HTTP" in info.value.last_error


def test_unreachable_endpoint_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with client_for(f"http://127.0.0.1:{port}/v1", max_attempts=2) as client:
        with pytest.raises(TransientCallError) as info:
            sample(client)
    assert info.value.attempts == 2 and "Connection" in info.value.last_error


def test_unknown_model_is_permanent_and_says_what_to_fix(url: str) -> None:
    with client_for(url, model="gpt-4o") as client:
        with pytest.raises(PermanentCallError, match="SEKE_VLLM_MODEL") as info:
            sample(client)
    assert info.value.status_code == 404


def test_wrong_key_is_permanent_and_says_what_to_fix() -> None:
    with running_simulator(SimulatorConfig(api_key=SecretStr("right"))) as locked_url:
        with client_for(locked_url, api_key=SecretStr("wrong")) as client:
            with pytest.raises(PermanentCallError, match="SEKE_VLLM_API_KEY"):
                sample(client)
        with client_for(locked_url, api_key=SecretStr("right")) as client:
            assert sample(client).valid


def test_retry_after_header_forms() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_s({"retry-after": "3"}, now) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "1"}, now) == 0.25
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after_s({"retry-after": later}, now) == pytest.approx(7.0)
    assert retry_after_s({"retry-after": "soon"}, now) is None
    assert retry_after_s({}, now) is None


def test_large_images_are_downscaled_small_ones_sent_as_is(url: str) -> None:
    with client_for(url) as client:
        big = sample(client, image=face_png(side=1024))
        small = sample(client, image=face_png(side=300))
    assert big.request_params["image_resized"] is True
    assert max(big.request_params["image_sent_size"]) == 512
    assert small.request_params["image_resized"] is False


def test_rewrite_call_returns_an_answer(url: str) -> None:
    prompt = rewrite_prompt("What does this face express?", TRUTH, "AU1, AU2, AU5 and AU26 form surprise.")
    with client_for(url) as client:
        result = client.complete(
            "rewrite", prompt, image=face_png(), answer_model=RewriteAnswer, temperature=0.7, seed=5, max_tokens=600
        )
    assert result.valid and "surprise" in (result.parsed or {})["answer"]


def test_a_service_tier_is_sent_only_when_set_and_recorded(url: str) -> None:
    with client_for(url, service_tier="flex") as client:
        flex = sample(client)
    with client_for(url) as client:
        standard = sample(client)
    assert flex.valid and flex.request_params["service_tier"] == "flex"
    assert "service_tier" not in standard.request_params
