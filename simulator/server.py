"""The offline simulator: an OpenAI-compatible HTTP server for rehearsing runs.

It is NOT a model. It exists to rehearse throughput, rate limits, cost and
failure handling without a network: every response names itself
(`model` "seke-simulator", `system_fingerprint` "seke-simulator"), and its
quality numbers must never be reported as a model's. Answers come from the
ground truth embedded in synthetic images, corrupted with noise calibrated to
GPT-4o (see simulator/model.py), or from the prompt's prior knowledge.

Endpoints: POST /v1/chat/completions, GET /v1/models, and the Batch API
(/v1/files upload/retrieve/content, /v1/batches create/retrieve/list/cancel):
a batch answers each line as /chat/completions would once
`batch_completion_s` has passed, and can expire or fail lines on request. Faults (429 with
Retry-After, 5xx, malformed output, failed batch lines) are drawn from `SimulatorConfig`'s rates
by a stream seeded with the request itself and how often the same request came before, so which
requests fail does not depend on the order concurrent requests arrive in: a run over the same
images meets the same faults every time. A gate (`hold_after`, POST /simulator/gate) holds chat
requests until a test lets them through, so a test can stop a run at a known point instead of
racing it with timing. A request may ask for `n` choices (each its own draw; `refuse_n` answers it
400 instead, as some endpoints do), and usage reports `prompt_tokens_details.cached_tokens` from a
prefix cache with OpenAI's rules (simulator/cache.py). `running_simulator()` serves it on a free loopback port in
a background thread (tests, demo); `serve()` blocks (`seke simulator serve`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.parser
import email.policy
import hashlib
import io
import json
import math
import random
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import uvicorn
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.labels import FaceLabels, Task
from simulator import cache
from simulator import model as sim
from tasks import prompts
from tasks.groundtruth import read_ground_truth
from tasks.vllm import estimate_text_tokens, image_tokens

FINGERPRINT = "seke-simulator"
MAX_N = 128  # OpenAI's largest n


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default="seke-simulator", description="Served model id; must say 'simulator'.")
    seed: int = Field(default=0, description="Seeds fault draws and unseeded requests.")
    latency_ms: float = Field(default=0.0, ge=0, description="Median latency of an answer.")
    latency_sigma: float = Field(default=0.0, ge=0, description="Lognormal shape of the latency; 0 = fixed.")
    latency_jitter_ms: float = Field(default=0.0, ge=0, description="Uniform extra latency in [0, this].")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="Share of requests answered 429.")
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After sent with a 429.")
    server_error_rate: float = Field(default=0.0, ge=0, le=1, description="Share answered 500/503.")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="Share of answers truncated or invalid.")
    storm_requests: int = Field(default=0, ge=0, description="The first N requests fail, 429 and 503 in turn.")
    hold_after: int | None = Field(
        default=None, ge=0,
        description="Answer this many chat requests, then hold each later one until POST /simulator/gate lets it through.",
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="A provider's cap: a token bucket of 2 s of burst; requests over it get 429."
    )
    api_key: SecretStr | None = Field(default=None, description="If set, requests must carry this bearer key.")
    batch_completion_s: float = Field(default=0.0, ge=0, description="Seconds a batch stays in progress before it completes.")
    batch_expire_first: int = Field(default=0, ge=0, description="The first N batches expire with no line answered.")
    batch_failed_line_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of batch lines answered 500 in the error file."
    )

    prefix_cache_ttl_s: float = Field(
        default=600.0, ge=0, description="Seconds a prompt prefix stays in the simulated prompt cache; 0: no cache."
    )
    refuse_n: bool = Field(default=False, description="Answer a request asking for n > 1 choices with HTTP 400, as some endpoints do.")

    @field_validator("model_name")
    @classmethod
    def _says_simulator(cls, value: str) -> str:
        if "simulator" not in value:
            raise ValueError(f"model_name {value!r} must contain 'simulator' so no record mistakes it for a model")
        return value


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@lru_cache(maxsize=256)  # each image is asked ~5 times (UAMC samples + summary + rewrite)
def _image_facts(data: bytes) -> tuple[str, FaceLabels | None, tuple[int, int] | None]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            size: tuple[int, int] | None = image.size
    except Exception:  # not an image: answered like a prompt without one
        size = None
    return hashlib.sha256(data).hexdigest(), read_ground_truth(data), size


def _image_token_count(data: bytes) -> int:
    """What an image part costs in prompt tokens (OpenAI's high-detail rule); 0 for bytes that are no image."""
    size = _image_facts(data)[2]
    return image_tokens(*size) if size is not None else 0


def _read_messages(messages: object) -> tuple[str, bytes | None]:
    """(all text of the user messages, the first data-URL image); ValueError names what is wrong.

    A system message (the cached prompt layout's constant head) is read by nobody here: what the
    simulator answers from (stage, known labels, requested tasks) is in the user message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    texts: list[str] = []
    image: bytes | None = None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system":
            continue
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url" and image is None:
                url = str((part.get("image_url") or {}).get("url", ""))
                if url.startswith("data:") and "," in url:  # remote URLs cannot be fetched offline
                    try:
                        image = base64.b64decode(url.split(",", 1)[1], validate=False)
                    except (binascii.Error, ValueError) as exc:
                        raise ValueError(f"image data URL is not valid base64: {exc}") from exc
    return "\n".join(texts), image


def _answer(
    text: str, image_key: str, truth: FaceLabels | None, temperature: float, rng: random.Random
) -> tuple[str, dict[str, Any]]:
    """(stage, answer object) for one prompt; a foreign prompt gets a full annotation without prior."""
    belief = sim.perceive(truth, image_key)
    stage = prompts.prompt_stage(text) or "foreign"
    known = prompts.known_labels_in(text) if stage != "foreign" else None
    if known is not None:
        belief = sim.with_prior(belief, known)
    if stage == prompts.REWRITE_STAGE:
        final = FaceLabels.model_validate(prompts.read_marked_json(text, prompts.FINAL_MARKER) or {})
        description = str(prompts.read_marked_json(text, prompts.DESCRIPTION_MARKER) or "")
        opening = rng.choice(("", "Here is my analysis of this face. ", "Looking closely at the face: "))
        return stage, {"answer": opening + prompts.deterministic_answer(final, description)}
    tasks = prompts.requested_tasks_in(text) if stage != "foreign" else list(Task)
    if stage == prompts.SUMMARY_STAGE:
        samples = prompts.read_marked_json(text, prompts.SAMPLES_MARKER) or []
        return stage, sim.summarise(belief, known or FaceLabels(), samples, tasks)
    return stage, sim.sample_answer(belief, tasks, temperature, rng)


def _render(answer: dict[str, Any], structured: bool, rng: random.Random) -> str:
    if structured:
        return json.dumps(answer)
    if rng.random() < 0.5:
        return (
            "Here is my analysis of the face in the image.\n\n```json\n"
            + json.dumps(answer, indent=2)
            + "\n```\n\nThis is based on the visible facial muscle movements."
        )
    return f"After looking at the face, my answer is {json.dumps(answer)} based on the visible muscle movements."


def _malformed(answer: dict[str, Any], content: str, rng: random.Random) -> tuple[str, str]:
    """(content, finish_reason) of a broken answer: truncated, schema-invalid, or no JSON at all."""
    kind = rng.randrange(3)
    if kind == 0:
        return content[: max(1, len(content) // 2)], "length"
    if kind == 1:
        broken = dict(answer)
        if "expression" in broken:
            broken["expression"] = "joy"  # not one of the 8 classes
        elif "valence" in broken:
            broken["valence"] = 1.7  # outside [-1, 1]
        elif "aus" in broken:
            broken["aus"] = {**broken["aus"], "AU3": True}  # not a schema AU
        else:
            broken = {"text": next(iter(answer.values()), "")}
        return json.dumps(broken), "stop"
    return "I am not able to tell the emotion of this face with certainty.", "stop"


class _Simulator:
    """Per-app state; handlers run on the server's single event loop, so no locks are needed."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)  # latency only: when an answer comes, never what it is
        self.requests = 0
        self._seen: dict[str, int] = {}  # request identity -> times it arrived (its attempt number)
        self._allowance = config.hold_after  # chat requests still let through; None: all
        self._gate = asyncio.Event()  # set (and replaced) whenever the allowance changes
        self.held = 0  # chat requests waiting at the gate now
        self.over_cap = 0  # requests refused by the requests_per_minute cap
        self._cap_tokens = 2 * (config.requests_per_minute or 0) / 60
        self._cap_updated = time.monotonic()
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}  # id -> (file object, content)
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object, in creation order
        self._batch_due: dict[str, float] = {}  # id -> monotonic time its lines are answered
        self.prefix_cache = cache.PrefixCache(config.prefix_cache_ttl_s)

    def over_rate_cap(self) -> bool:
        """Whether this request exceeds the configured requests/min (a bucket refilled continuously)."""
        rpm = self.config.requests_per_minute
        if rpm is None:
            return False
        now = time.monotonic()
        self._cap_tokens = min(2 * rpm / 60, self._cap_tokens + (now - self._cap_updated) * rpm / 60)
        self._cap_updated = now
        if self._cap_tokens >= 1:
            self._cap_tokens -= 1
            return False
        self.over_cap += 1
        return True

    def latency_s(self) -> float:
        c = self.config
        median = c.latency_ms * (math.exp(c.latency_sigma * self.rng.gauss(0, 1)) if c.latency_sigma else 1.0)
        return (median + self.rng.uniform(0, c.latency_jitter_ms)) / 1000

    def draws(self, body: dict[str, Any], text: str, image: bytes | None) -> random.Random:
        """The random stream of this arrival of this request: seeded with the simulator's seed, what is
        asked (prompt, image, seed, temperature) and how often the same request arrived before, so a
        retried request draws afresh and no draw depends on what other requests arrived meanwhile."""
        image_key = _image_facts(image)[0] if image is not None else "no-image"
        identity = ":".join(map(str, (hashlib.sha256(text.encode()).hexdigest(), image_key, body.get("seed"), body.get("temperature"))))
        attempt = self._seen.get(identity, 0)
        self._seen[identity] = attempt + 1
        return random.Random(f"{self.config.seed}:{identity}:{attempt}")

    async def through_gate(self) -> None:
        """Wait while the gate holds requests (see `hold_after`)."""
        while self._allowance is not None and self._allowance <= 0:
            self.held += 1
            try:
                await self._gate.wait()
            finally:
                self.held -= 1
        if self._allowance is not None:
            self._allowance -= 1

    async def set_gate(self, request: Request) -> JSONResponse:
        """{"answer": N}: let N more chat requests through, then hold again; {"answer": null}: let all through."""
        body = await request.json()
        answer = body.get("answer") if isinstance(body, dict) else None
        if answer is not None and (not isinstance(answer, int) or answer < 0):
            return _error(400, f"Invalid gate: 'answer' must be a count >= 0 or null, not {answer!r}.", "invalid_request")
        self._allowance = answer
        self._gate.set()
        self._gate = asyncio.Event()
        return JSONResponse({"answer": answer, "held": self.held})

    def fault(self, body: dict[str, Any], text: str, image: bytes | None) -> tuple[JSONResponse | None, random.Random]:
        """(the error this request gets, or None; the request's draws, for its answer too).

        The storm's failures take no draw: each request's own stream of draws, and so the faults it meets
        after the storm, are the same whichever requests the storm happened to hit."""
        c = self.config
        n = self.requests
        self.requests += 1
        draws = self.draws(body, text, image) if n >= c.storm_requests else random.Random(0)
        if n < c.storm_requests:
            rate_limited, server_error = n % 2 == 0, n % 2 == 1
        else:
            rate_limited = draws.random() < c.rate_limit_rate
            server_error = draws.random() < c.server_error_rate
        if rate_limited:
            headers = {
                "retry-after": str(math.ceil(c.retry_after_s)),
                "retry-after-ms": str(int(c.retry_after_s * 1000)),
            }
            return _error(429, "Simulated rate limit: too many requests.", "rate_limit_exceeded", headers), draws
        if server_error:
            status = draws.choice((500, 503))
            return _error(status, "Simulated server error.", "server_error"), draws
        return None, draws

    async def chat(self, request: Request) -> JSONResponse:
        c = self.config
        if c.api_key is not None and request.headers.get("authorization") != f"Bearer {c.api_key.get_secret_value()}":
            return _error(401, "Invalid API key for the simulator; send the key it was started with.", "invalid_api_key")
        try:
            body = await request.json()
        except (ValueError, AttributeError) as exc:
            return _error(400, f"Invalid request: {exc}", "invalid_request")
        checked = self.checked(body)
        if isinstance(checked, JSONResponse):
            return checked
        await self.through_gate()
        if self.over_rate_cap():
            headers = {"retry-after": "1", "retry-after-ms": "500"}
            return _error(429, "Rate limit reached for requests per minute.", "rate_limit_exceeded", headers)
        failure, draws = self.fault(body, *checked)
        if failure is not None:
            return failure
        latency = self.latency_s()
        if latency > 0:
            await asyncio.sleep(latency)
        return JSONResponse(self.completion(body, *checked, draws))

    def checked(self, body: Any) -> tuple[str, bytes | None] | JSONResponse:
        """(prompt text, image) of a valid request body, or the error response that names what is wrong."""
        try:
            text, image = _read_messages(body.get("messages"))
        except (ValueError, AttributeError) as exc:
            return _error(400, f"Invalid request: {exc}", "invalid_request")
        if body.get("model") != self.config.model_name:
            message = f"The model {body.get('model')!r} does not exist; this simulator serves {self.config.model_name!r}."
            return _error(404, message, "model_not_found")
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N):
            return _error(400, f"Invalid 'n': {n!r}; expected an integer from 1 to {MAX_N}.", "invalid_value", param="n")
        if self.config.refuse_n and n not in (None, 1):
            return _error(400, "Unsupported parameter: 'n' other than 1 is not supported with this model.", "unsupported_parameter", param="n")
        return text, image

    def completion(self, body: dict[str, Any], text: str, image: bytes | None, draws: random.Random) -> dict[str, Any]:
        """The chat completion answering a checked request: shared by /chat/completions and batches.

        With `n`, each choice is its own draw: choice 0 exactly the answer of the same request with n=1,
        choice i from a stream of its own (seeded with the request's seed and i, else from the request's draws)."""
        c = self.config
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)  # the OpenAI default
        image_key, truth, _ = _image_facts(image) if image is not None else ("no-image", None, None)
        seed = body.get("seed")
        # Same image, prompt and seed -> same answer, as a seeded API call promises; unseeded calls vary.
        prompt_key = hashlib.sha256(text.encode()).hexdigest()
        response_format = body.get("response_format") or {}
        choices, completion_tokens = [], 0
        for index in range(int(body.get("n") or 1)):
            if index == 0:
                rng, fault = (sim.seeded_rng(image_key, prompt_key, seed) if seed is not None else random.Random(draws.random())), draws
            else:
                fault = random.Random(draws.random())
                rng = sim.seeded_rng(image_key, prompt_key, seed, "choice", index) if seed is not None else random.Random(fault.random())
            stage, answer = _answer(text, image_key, truth, temperature, rng)
            structured = response_format.get("type") in ("json_schema", "json_object") and stage != "foreign"
            content, finish = _render(answer, structured, rng), "stop"
            if fault.random() < c.malformed_rate:
                content, finish = _malformed(answer, content, rng)
            completion_tokens += estimate_text_tokens(content)
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish,
                "logprobs": None,
            })
        units = cache.prompt_units(body, _image_token_count)
        prompt_tokens = len(units)
        cached_tokens = self.prefix_cache.serve(cache.salt(body), units)
        return {
            "id": f"chatcmpl-sim-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": c.model_name,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
            },
        }

    # --- the Batch API: files in, files out, every line answered like /chat/completions ---

    def _new_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        file = {
            "id": f"file-sim-{len(self.files) + 1}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file["id"]] = (file, content)
        return file

    async def upload_file(self, request: Request) -> JSONResponse:
        # Parsed with the standard library's MIME parser: a multipart body is a MIME message.
        raw = await request.body()
        header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            return _error(400, "Invalid upload: the multipart body has no 'file' part.", "invalid_request")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose != "batch":
            return _error(400, f"Invalid purpose {purpose!r}: this simulator stores batch input files only.", "invalid_request")
        filename, content = fields["file"]
        return JSONResponse(self._new_file(filename or "upload.jsonl", purpose, content))

    async def get_file(self, request: Request) -> JSONResponse:
        stored = self.files.get(request.path_params["file_id"])
        if stored is None:
            return _error(404, f"No such file: {request.path_params['file_id']}", "not_found")
        return JSONResponse(stored[0])

    async def file_content(self, request: Request) -> Response:
        stored = self.files.get(request.path_params["file_id"])
        if stored is None:
            return _error(404, f"No such file: {request.path_params['file_id']}", "not_found")
        return Response(stored[1], media_type="application/jsonl")

    async def create_batch(self, request: Request) -> JSONResponse:
        body = await request.json()
        stored = self.files.get(str(body.get("input_file_id")))
        if stored is None:
            return _error(400, f"Invalid input_file_id {body.get('input_file_id')!r}: no such file.", "invalid_request")
        lines = [line for line in stored[1].decode().splitlines() if line.strip()]
        now = int(time.time())
        batch = {
            "id": f"batch-sim-{len(self.batches) + 1}",
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress",
            "created_at": now,
            "in_progress_at": now,
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "output_file_id": None,
            "error_file_id": None,
        }
        self.batches[batch["id"]] = batch
        self._batch_due[batch["id"]] = time.monotonic() + self.config.batch_completion_s
        return JSONResponse(self._advanced(batch))

    def _advanced(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch as of now: once its completion delay has passed, every line is answered (or expired)."""
        if batch["status"] != "in_progress" or time.monotonic() < self._batch_due[batch["id"]]:
            return batch
        index = list(self.batches).index(batch["id"])
        expired = index < self.config.batch_expire_first
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]][1].decode().splitlines() if line.strip()]
        outputs, errors = [], []
        for n, line in enumerate(lines):
            result = {"id": f"batch_req_sim_{index}_{n}", "custom_id": line.get("custom_id")}
            if expired:
                errors.append({**result, "response": None, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
                continue
            body = line.get("body") or {}
            checked = self.checked(body)
            if isinstance(checked, JSONResponse):
                errors.append({**result, "response": {"status_code": checked.status_code, "request_id": result["id"],
                                                      "body": json.loads(bytes(checked.body))}, "error": None})
                continue
            draws = self.draws(body, *checked)
            if draws.random() < self.config.batch_failed_line_rate:
                error = {"error": {"message": "Simulated server error.", "type": "server_error", "param": None, "code": "server_error"}}
                errors.append({**result, "response": {"status_code": 500, "request_id": result["id"], "body": error}, "error": None})
                continue
            self.requests += 1
            answer = self.completion(body, *checked, draws)
            outputs.append({**result, "response": {"status_code": 200, "request_id": result["id"], "body": answer}, "error": None})
        now = int(time.time())
        for key, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                content = "".join(json.dumps(row) + "\n" for row in rows).encode()
                batch[key] = self._new_file(f"{batch['id']}-{key[:-8]}.jsonl", "batch_output", content)["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors) if not expired else 0}
        batch["status"] = "expired" if expired else "completed"
        batch["expired_at" if expired else "completed_at"] = now
        return batch

    async def get_batch(self, request: Request) -> JSONResponse:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, f"No such batch: {request.path_params['batch_id']}", "not_found")
        return JSONResponse(self._advanced(batch))

    async def list_batches(self, request: Request) -> JSONResponse:
        # Newest first, as OpenAI lists them; one page holds them all.
        data = [self._advanced(batch) for batch in reversed(self.batches.values())]
        return JSONResponse({
            "object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        })

    async def cancel_batch(self, request: Request) -> JSONResponse:
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, f"No such batch: {request.path_params['batch_id']}", "not_found")
        if self._advanced(batch)["status"] == "in_progress":
            batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
        return JSONResponse(batch)

    async def stats(self, request: Request) -> JSONResponse:
        """Requests answered or failed, refused by the requests/min cap, and held at the gate now: what a test
        compares with what was stored, or waits for."""
        return JSONResponse({"requests": self.requests, "over_cap": self.over_cap, "held": self.held})

    async def models(self, request: Request) -> JSONResponse:
        model = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": FINGERPRINT}
        return JSONResponse({"object": "list", "data": [model]})


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    state = _Simulator(config or SimulatorConfig())
    return Starlette(
        routes=[
            Route("/v1/chat/completions", state.chat, methods=["POST"]),
            Route("/v1/models", state.models, methods=["GET"]),
            Route("/simulator/stats", state.stats, methods=["GET"]),
            Route("/simulator/gate", state.set_gate, methods=["POST"]),
            Route("/v1/files", state.upload_file, methods=["POST"]),
            Route("/v1/files/{file_id}", state.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}/content", state.file_content, methods=["GET"]),
            Route("/v1/batches", state.create_batch, methods=["POST"]),
            Route("/v1/batches", state.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", state.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", state.cancel_batch, methods=["POST"]),
        ]
    )


def serve(config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (`seke simulator serve`)."""
    config = config or SimulatorConfig()
    print(
        f"{config.model_name}: an offline rehearsal endpoint, not a model; its quality numbers are simulated. "
        f"Serving at http://{host}:{port}/v1",
        file=sys.stderr,
    )
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


def _open_gate(root_url: str) -> None:
    request = urllib.request.Request(f"{root_url}/simulator/gate", data=b'{"answer": null}', method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextmanager
def running_simulator(config: SimulatorConfig | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve on a free loopback port in a background thread; yields the base URL (…/v1)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it each keep-alive response waits ~40 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="seke-simulator", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start on {host}:{port}; see the log above")
            time.sleep(0.01)
        yield f"http://{host}:{port}/v1"
    finally:
        if server.started:  # requests held at the gate answer now, or the server would wait for them to end
            _open_gate(f"http://{host}:{port}")
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
