"""Calls to a vision LLM behind any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, the simulator).

Retry policy: exactly one retry layer, ours. The openai SDK is built with
`max_retries=0` because its own retries would hide attempts from the record,
ignore our shared rate limiter and multiply with any retry we add. We retry
only transient failures — HTTP 408/409/429/5xx, timeouts, connection errors —
with exponential backoff and full jitter (sleep ~ U[0, min(max, base·2^k)],
AWS "Exponential Backoff and Jitter"), and wait at least what the server asks
in `retry-after-ms` or `Retry-After` (seconds or an HTTP-date). Other HTTP
errors (400/401/403/404/422) raise PermanentCallError saying what to fix;
a 429 whose code is `insufficient_quota` is permanent too. Output that does
not parse or validate is never retried here: it comes back as an invalid
CallResult with the raw text and the reason, for UAMC to count and store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from models.answers import extract_json_object, json_schema_for
from core.config import Settings
from core.errors import SekeError
from core.redact import redact_url
from tasks.prices import Prices, cached_share
from tasks.prompts import REWRITE_STAGE, SAMPLE_STAGE, SUMMARY_STAGE, RenderedPrompt
from tasks.ratelimit import RateLimiter

TRANSIENT_STATUS = frozenset({408, 409, 429})  # plus every 5xx

#: Client-side caps (requests/min, tokens/min, per process) used when none are configured, by API host.
#: api.openai.com: GPT-4o at a middle OpenAI usage tier (3,000 RPM, 2,000,000 TPM; ~32 SEKE calls/s at
#: ~1,030 tokens a call). OpenAI sets limits per organisation, model and usage tier (your account's
#: limits page): set SEKE_REQUESTS_PER_MINUTE / SEKE_TOKENS_PER_MINUTE to yours. Any other host (vLLM,
#: SGLang, Ollama, the simulator) gets no client-side cap: its own queue is the limit, and 429/503
#: answers are retried with backoff.
HOSTED_RATE_LIMITS: dict[str, tuple[float, float]] = {"api.openai.com": (3000, 2_000_000)}


class VLLMConfig(BaseModel):
    """One endpoint and how to call it; stored with each run (see `public_snapshot`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible base URL, ending in /v1.")
    model: str = Field(description="Model name the endpoint serves.")
    simulated: bool = Field(
        default=False, description="The endpoint is the offline simulator: its answers rehearse, they are no model's."
    )
    api_key: SecretStr = Field(default=SecretStr("not-needed"), description="Bearer key; never stored.")
    timeout_s: float = Field(default=120.0, gt=0, description="Per-attempt HTTP timeout.")
    max_attempts: int = Field(default=6, ge=1, description="Attempts per call on transient failures.")
    backoff_base_s: float = Field(default=1.0, gt=0, description="First backoff ceiling; doubles per attempt.")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Largest backoff ceiling.")
    retry_after_max_s: float = Field(default=300.0, gt=0, description="Cap on a server's Retry-After.")
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Client-side cap, per process; None: HOSTED_RATE_LIMITS for its host, else no cap."
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Client-side cap, per process; None: HOSTED_RATE_LIMITS for its host, else no cap."
    )
    rate_burst_s: float = Field(default=1.0, gt=0, description="Seconds of budget the limiter may spend at once.")
    image_max_side: int = Field(default=512, ge=16, description="Images larger than this are downscaled.")
    structured_output: bool = Field(
        default=True, description="Send response_format json_schema; turn off for endpoints without it."
    )
    service_tier: str | None = Field(default=None, description="OpenAI's service_tier (e.g. flex), sent when set.")
    prompt_cache_key: bool = Field(
        default=True, description="Cached prompt layout: send prompt_cache_key (one per image); off for endpoints that refuse it."
    )
    price_in_per_mtok: float = Field(default=2.5, ge=0, description="USD per million prompt tokens (GPT-4o).")
    price_out_per_mtok: float = Field(default=10.0, ge=0, description="USD per million output tokens (GPT-4o).")
    price_cached_in_per_mtok: float | None = Field(
        default=None, ge=0,
        description="USD per million cached prompt tokens; None: the input price times the model's cached share (tasks/prices.py).",
    )
    # Samples need temperature > 0 so UAMC sees the model's variance (paper Eq. 1-3); the summary should be stable.
    sample_temperature: float = Field(default=1.0, ge=0, le=2)
    summary_temperature: float = Field(default=0.0, ge=0, le=2)
    rewrite_temperature: float = Field(default=0.7, ge=0, le=2)
    sample_max_tokens: int = Field(default=400, gt=0)
    summary_max_tokens: int = Field(default=1000, gt=0)
    rewrite_max_tokens: int = Field(default=1000, gt=0)

    @model_validator(mode="after")
    def _hosted_defaults(self) -> VLLMConfig:
        """A hosted provider's documented caps when none are configured; no cap for any other endpoint."""
        host = urlsplit(self.base_url).hostname or ""
        if self.requests_per_minute is None and self.tokens_per_minute is None and host in HOSTED_RATE_LIMITS:
            self.requests_per_minute, self.tokens_per_minute = HOSTED_RATE_LIMITS[host]
        if self.price_cached_in_per_mtok is None:
            self.price_cached_in_per_mtok = self.price_in_per_mtok * cached_share(self.model)
        return self

    @property
    def prices(self) -> Prices:
        return Prices(self.price_in_per_mtok, float(self.price_cached_in_per_mtok or 0.0), self.price_out_per_mtok)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, base_url: str | None = None, model: str | None = None, simulated: bool = False
    ) -> VLLMConfig:
        """The config for `settings`; `base_url`/`model` override (e.g. a simulator started on the fly, which
        passes `simulated`). Whoever chooses the endpoint says whether it is the simulator; nothing guesses."""
        url = base_url or settings.vllm_base_url
        if not url:
            raise ValueError("no endpoint: set SEKE_VLLM_BASE_URL, or pass the base_url of a running simulator")
        return cls(
            base_url=url,
            model=model or settings.vllm_model,
            simulated=simulated if base_url else settings.vllm_simulated,
            api_key=settings.vllm_api_key,
            requests_per_minute=settings.requests_per_minute,
            tokens_per_minute=settings.tokens_per_minute,
            max_attempts=settings.vllm_max_attempts,
            service_tier=settings.vllm_service_tier,
            backoff_base_s=settings.vllm_backoff_base_s,
            price_in_per_mtok=settings.price_in_per_mtok,
            price_out_per_mtok=settings.price_out_per_mtok,
            price_cached_in_per_mtok=settings.price_cached_in_per_mtok,
        )

    def stage_params(self, stage: str) -> tuple[float, int]:
        """(temperature, max_tokens) configured for a stage ('prior-sample', 'summary' or 'rewrite')."""
        if stage == SAMPLE_STAGE:
            return self.sample_temperature, self.sample_max_tokens
        if stage == SUMMARY_STAGE:
            return self.summary_temperature, self.summary_max_tokens
        if stage == REWRITE_STAGE:
            return self.rewrite_temperature, self.rewrite_max_tokens
        raise ValueError(f"unknown stage {stage!r}; expected {SAMPLE_STAGE}, {SUMMARY_STAGE} or {REWRITE_STAGE}")

    def public_snapshot(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", exclude={"api_key"}), "base_url": redact_url(self.base_url)}


@dataclass
class CallResult:
    request_params: dict[str, Any]  # what was asked, without secrets or image bytes
    raw_text: str
    parsed: dict[str, Any] | None
    valid: bool
    error: str | None
    tokens_in: int
    tokens_out: int
    latency_s: float  # the successful attempt's round trip
    attempts: int
    cost_usd: float
    started_at: datetime  # started_at..finished_at spans all attempts and backoff
    finished_at: datetime
    finish_reason: str | None = None
    response_model: str | None = None  # as the endpoint names itself (the simulator says so here)
    system_fingerprint: str | None = None
    tokens_cached: int = 0  # of tokens_in, served from the provider's prompt cache (billed at the cached rate)


class TransientCallError(SekeError, RuntimeError):
    """Transient failures used up every attempt; the image can be retried later."""

    def __init__(self, attempts: int, last_error: str) -> None:
        super().__init__(
            f"gave up after {attempts} attempts on transient failures (last: {last_error}); the endpoint is "
            "overloaded or unreachable: check SEKE_VLLM_BASE_URL, retry the image later, or lower concurrency / requests_per_minute"
        )
        self.attempts = attempts
        self.last_error = last_error


class PermanentCallError(SekeError, RuntimeError):
    """The endpoint refused the request in a way retrying cannot fix."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ChoicesRefused(PermanentCallError):
    """The endpoint refused a request for n > 1 choices (some do); one call per sample works there."""


def _refuses_n(exc: openai.APIStatusError, params: Mapping[str, Any]) -> bool:
    if exc.status_code != 400 or (params.get("n") or 1) == 1:
        return False
    body = exc.body if isinstance(exc.body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else body
    return error.get("param") == "n" or "'n'" in str(exc.message)


# --- images ---


# Each image is sent 3-7 times (samples, summary, rewrite); decoding and hashing it once is enough.
# 64 entries cover the images in flight at the default concurrency of 32.
@lru_cache(maxsize=64)
def encode_image(image: bytes, max_side: int) -> tuple[str, dict[str, Any]]:
    """(data URL, metadata). Sends the original bytes unless a side exceeds `max_side`. Do not mutate the result."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            fmt = (img.format or "").upper()
            size = img.size
            if max(size) <= max_side and fmt in ("PNG", "JPEG", "WEBP", "GIF"):
                data = image
            else:
                img.thumbnail((max_side, max_side))
                size = img.size
                fmt = "PNG" if fmt == "PNG" else "JPEG"
                buffer = io.BytesIO()
                img.convert("RGBA" if fmt == "PNG" else "RGB").save(buffer, format=fmt, quality=90)
                data = buffer.getvalue()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the image to send ({exc}); re-ingest it as PNG or JPEG") from exc
    meta = {
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "image_sent_bytes": len(data),
        "image_sent_size": list(size),
        "image_resized": data is not image,
    }
    mime = f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", meta


def image_tokens(width: int, height: int) -> int:
    """OpenAI's high-detail cost: 85 + 170 per 512-px tile (after fitting 2048 and 768 on the short side)."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def estimate_text_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # ~4 characters per token for English prose and JSON


# --- parsing ---


def parse_answer(text: str, answer_model: type[BaseModel]) -> tuple[dict[str, Any] | None, str | None]:
    """(validated answer as JSON-able dict, None) or (None, why it is invalid)."""
    obj = extract_json_object(text)
    if obj is None:
        return None, "no JSON object found in the output"
    try:
        return answer_model.model_validate(obj).model_dump(mode="json"), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        return None, f"answer does not match {answer_model.__name__}: {problems}"


# --- retry timing ---


def retry_after_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or an HTTP-date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempt: int, config: VLLMConfig, rng: random.Random, server_wait: float | None) -> float:
    """Full-jitter backoff after failed attempt number `attempt` (1-based), never below the server's ask."""
    jittered = rng.uniform(0.0, min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1)))
    if server_wait is None:
        return jittered
    return max(jittered, min(server_wait, config.retry_after_max_s))


def _status_detail(exc: openai.APIStatusError) -> str:
    """'HTTP 404: <the server's own message>' (the SDK's message repeats the whole body)."""
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    return f"HTTP {exc.status_code}: {message or exc.message}"


def _permanent_message(exc: openai.APIStatusError, config: VLLMConfig) -> str:
    status = exc.status_code
    where = f"{redact_url(config.base_url)} (model {config.model!r})"
    detail = _status_detail(exc)
    if status in (401, 403):
        return f"{where} refused the credentials ({detail}); set SEKE_VLLM_API_KEY to a valid key for this endpoint"
    if status == 404:
        return (
            f"{where} does not know this path or model ({detail}); check SEKE_VLLM_BASE_URL (it should end in /v1) "
            "and SEKE_VLLM_MODEL against the endpoint's GET /v1/models"
        )
    if status == 429:
        return f"{where} has no quota left ({detail}); add credit or use another key, then resume the run"
    hint = "; if it does not support json_schema output, set structured_output=False" if config.structured_output else ""
    return f"{where} rejected the request ({detail}); check the model accepts image input{hint}"


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent: its data URL and what the call record says about it (built once per image)."""

    url: str
    meta: dict[str, Any]

    @classmethod
    def of(cls, image: bytes, max_side: int) -> EncodedImage:
        return cls(*encode_image(image, max_side))

    @cached_property
    def cache_key(self) -> str:
        """The image's prompt_cache_key: the same for every call that sends these bytes."""
        return "seke-" + hashlib.sha256(self.url.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class _Request:
    # The request body, sent as built: `client.post` skips the SDK's recursive transform of the params
    # against its TypedDicts (measured ~1 ms a call with a data-URL image and a JSON schema).
    params: dict[str, Any]
    record: dict[str, Any]  # CallResult.request_params
    estimate: int  # tokens the limiter reserves: prompt + image + max output


def _choice_answer(choice: Any, answer_model: type[BaseModel], max_tokens: int) -> tuple[str, dict[str, Any] | None, str | None, str | None]:
    """(raw text, parsed answer, error, finish reason) of one choice."""
    message, finish_reason = choice.message, choice.finish_reason
    raw = message.content or ""
    refusal = getattr(message, "refusal", None)
    parsed, error = (None, f"the model refused: {refusal}") if refusal else parse_answer(raw, answer_model)
    if error and finish_reason == "length":
        error += f" (output cut at max_tokens={max_tokens}; raise this stage's max_tokens)"
    return raw, parsed, error, finish_reason


def uncapped(limit: float | None) -> float:
    return float(limit) if limit is not None else 1e15  # "no cap" for one budget while the other has one


class _ClientBase:
    """What the sync and the async client share: the request, the limiter, the retry decision, the result."""

    def __init__(self, config: VLLMConfig, limiter: RateLimiter | None) -> None:
        self.config = config
        capped = config.requests_per_minute is not None or config.tokens_per_minute is not None
        self._limiter = limiter or (
            RateLimiter(uncapped(config.requests_per_minute), uncapped(config.tokens_per_minute), burst_s=config.rate_burst_s)
            if capped
            else None
        )
        self._rng = random.Random()
        self._client_kwargs: dict[str, Any] = {
            "base_url": config.base_url,
            "api_key": config.api_key.get_secret_value(),
            "timeout": config.timeout_s,
            "max_retries": 0,  # see the module docstring: our loop is the only retry layer
        }

    def _request(
        self,
        stage: str,
        prompt: RenderedPrompt,
        image: bytes | EncodedImage | None,
        answer_model: type[BaseModel],
        temperature: float,
        seed: int | None,
        max_tokens: int,
        n: int = 1,
    ) -> _Request:
        text_part = {"type": "text", "text": prompt.text}
        content: list[dict[str, Any]] = [text_part]
        record: dict[str, Any] = {
            "stage": stage,
            "base_url": redact_url(self.config.base_url),
            "model": self.config.model,
            "prompt_name": prompt.name,
            "prompt_version": prompt.version,
            "prompt_sha256": prompt.sha256,
            "answer_model": answer_model.__name__,
            "temperature": temperature,
            "seed": seed,
            "max_tokens": max_tokens,
            "structured_output": self.config.structured_output,
        }
        estimate = estimate_text_tokens(prompt.text) + n * max_tokens
        if image is not None:
            encoded = image if isinstance(image, EncodedImage) else EncodedImage.of(image, self.config.image_max_side)
            content.append({"type": "image_url", "image_url": {"url": encoded.url}})
            record.update(encoded.meta)
            estimate += image_tokens(*encoded.meta["image_sent_size"])
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if prompt.system is not None:  # cached layout: constant system text, then the image, then this call's text
            content.reverse()
            messages.insert(0, {"role": "system", "content": prompt.system.text})
            record["system_prompt_sha256"] = prompt.system.sha256
            estimate += estimate_text_tokens(prompt.system.text)
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": temperature,
            # max_tokens rather than max_completion_tokens: vLLM, SGLang and Ollama all accept it.
            "max_tokens": max_tokens,
        }
        if seed is not None:
            params["seed"] = seed
        if self.config.service_tier is not None:
            params["service_tier"] = record["service_tier"] = self.config.service_tier
        if n > 1:  # the prompt is billed once, the completion tokens per choice
            params["n"] = record["n"] = n
        if prompt.system is not None and image is not None and self.config.prompt_cache_key:
            # Routes an image's calls to the machine that holds its prefix (OpenAI; others ignore the field).
            params["prompt_cache_key"] = record["prompt_cache_key"] = encoded.cache_key
        if self.config.structured_output:
            params["response_format"] = json_schema_for(answer_model)
        return _Request(params, record, estimate)

    def _failed_attempt(self, exc: openai.APIError, request: _Request, attempt: int) -> float:
        """After a failed attempt: the backoff to sleep, or raise when retrying cannot help or attempts are used up."""
        if self._limiter is not None:
            self._limiter.settle(request.estimate, 0)
        if isinstance(exc, openai.APIStatusError) and _refuses_n(exc, request.params):
            raise ChoicesRefused(f"the endpoint refused n={request.params['n']} choices ({_status_detail(exc)})", 400) from exc
        if isinstance(exc, openai.APIStatusError):
            transient = exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500
            if not transient or exc.code == "insufficient_quota":
                raise PermanentCallError(_permanent_message(exc, self.config), exc.status_code) from exc
            last_error, server_wait = _status_detail(exc), retry_after_s(exc.response.headers)
        else:  # APIConnectionError, including APITimeoutError
            last_error, server_wait = f"{type(exc).__name__}: {exc.message}", None
        if attempt >= self.config.max_attempts:
            raise TransientCallError(attempt, last_error) from exc
        return backoff_s(attempt, self.config, self._rng, server_wait)

    def _results(
        self,
        completion: Any,
        answer_model: type[BaseModel],
        request: _Request,
        max_tokens: int,
        latency: float,
        attempts: int,
        started_at: datetime,
    ) -> list[CallResult]:
        """One result per choice asked for. With n > 1 the first carries the prompt's tokens (billed once)
        and the completion tokens are split by each choice's length (usage gives only their sum)."""
        n = request.params.get("n") or 1
        choices = list(getattr(completion, "choices", None) or [])
        answers = [_choice_answer(choice, answer_model, max_tokens) for choice in choices[:n]]
        while len(answers) < n:
            answers.append((str(completion)[:10_000], None, "the endpoint returned no choice here", None))
        usage = getattr(completion, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", None) or (request.estimate - n * max_tokens)
        lengths = [estimate_text_tokens(raw) for raw, *_ in answers]
        tokens_out = getattr(usage, "completion_tokens", None) or sum(lengths)
        details = getattr(usage, "prompt_tokens_details", None)
        tokens_cached = min(tokens_in, getattr(details, "cached_tokens", None) or 0)
        if self._limiter is not None:
            self._limiter.settle(request.estimate, tokens_in + tokens_out)
        outs = [tokens_out * length // sum(lengths) for length in lengths]
        outs[-1] += tokens_out - sum(outs)
        finished_at = datetime.now(UTC)
        results = []
        for index, ((raw, parsed, error, finish_reason), out) in enumerate(zip(answers, outs, strict=True)):
            first = index == 0
            record = request.record if n == 1 else {**request.record, "choice_index": index}
            results.append(CallResult(
                request_params=record,
                raw_text=raw,
                parsed=parsed,
                valid=error is None,
                error=error,
                tokens_in=tokens_in if first else 0,
                tokens_out=out,
                latency_s=latency,
                attempts=attempts,
                cost_usd=self.config.prices.cost_usd(tokens_in if first else 0, tokens_cached if first else 0, out),
                started_at=started_at,
                finished_at=finished_at,
                finish_reason=finish_reason,
                response_model=getattr(completion, "model", None),
                system_fingerprint=getattr(completion, "system_fingerprint", None),
                tokens_cached=tokens_cached if first else 0,
            ))  # fmt: skip
        return results


class VLLMClient(_ClientBase):
    """Thread-safe: one per process, shared by threads (the limiter caps them together)."""

    def __init__(
        self,
        config: VLLMConfig,
        *,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(config, limiter)
        self._sleep = sleep
        self._client = openai.OpenAI(**self._client_kwargs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VLLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def complete(
        self,
        stage: str,
        prompt: RenderedPrompt,
        *,
        image: bytes | EncodedImage | None,
        answer_model: type[BaseModel],
        temperature: float,
        seed: int | None,
        max_tokens: int,
    ) -> CallResult:
        """One validated model call. Invalid output → CallResult(valid=False); only transport errors raise."""
        started_at = datetime.now(UTC)
        request = self._request(stage, prompt, image, answer_model, temperature, seed, max_tokens)
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                self._limiter.acquire(request.estimate)
            sent = time.monotonic()
            try:
                completion = self._client.post("/chat/completions", body=request.params, cast_to=ChatCompletion)
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                self._sleep(self._failed_attempt(exc, request, attempt))
                continue
            latency = time.monotonic() - sent
            return self._results(completion, answer_model, request, max_tokens, latency, attempt, started_at)[0]


class AsyncVLLMClient(_ClientBase):
    """The same calls from coroutines: one per event loop (its HTTP connections belong to that loop)."""

    def __init__(self, config: VLLMConfig, *, limiter: RateLimiter | None = None) -> None:
        super().__init__(config, limiter)
        self._client = openai.AsyncOpenAI(**self._client_kwargs)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncVLLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def complete(
        self,
        stage: str,
        prompt: RenderedPrompt,
        *,
        image: bytes | EncodedImage | None,
        answer_model: type[BaseModel],
        temperature: float,
        seed: int | None,
        max_tokens: int,
    ) -> CallResult:
        """As VLLMClient.complete, awaiting the limiter, the endpoint and the backoff."""
        results = await self.complete_choices(
            stage, prompt, image=image, answer_model=answer_model, temperature=temperature, seed=seed, max_tokens=max_tokens
        )
        return results[0]

    async def complete_choices(
        self,
        stage: str,
        prompt: RenderedPrompt,
        *,
        image: bytes | EncodedImage | None,
        answer_model: type[BaseModel],
        temperature: float,
        seed: int | None,
        max_tokens: int,
        n: int = 1,
    ) -> list[CallResult]:
        """One request for `n` choices (one result each): the prompt billed once. ChoicesRefused when
        the endpoint takes no n > 1."""
        started_at = datetime.now(UTC)
        request = self._request(stage, prompt, image, answer_model, temperature, seed, max_tokens, n)
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                await self._limiter.acquire_async(request.estimate)
            sent = time.monotonic()
            try:
                completion = await self._client.post("/chat/completions", body=request.params, cast_to=ChatCompletion)
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                await asyncio.sleep(self._failed_attempt(exc, request, attempt))
                continue
            latency = time.monotonic() - sent
            return self._results(completion, answer_model, request, max_tokens, latency, attempt, started_at)
