"""Batch mode: SEKE in rounds over the OpenAI Batch API, with the same calls and decisions as online mode.

A round replays SEKE (tasks/seke.py) for every image of the run that is not
done, with a `call` that answers from the run's stored calls and otherwise
records the request and stops the image for this round (`Pending`). The
recorded requests of all images are the round's batch (split at the API's
per-file limits); once the batch is back, every answered line is stored as a
call exactly as an online call would be (same prompt, parsed answer, tokens;
cost at the batch price factor; plus its batch id and custom id), and the next
round replays further. UAMC's draws come from the image's seeded stream and
the replay reuses the stored answers, so the decisions are those of online
mode. The first `start_samples` samples of an image share one prompt and have
fixed seeds, so they are requested together: at most N − start + 3 rounds
(plus one per round of invalid answers or failed lines).

Durability: a batch's row (`api_batches`) is written once its input file is
uploaded and before the batch is created, then updated with the batch id. A
row without a batch id is resolved on resume by finding the batch created
from its input file (`batches.list`), so a crash between creating a batch and
reading its id back never submits it twice. A row not yet imported is waited
for and imported before anything new is planned; importing stores only lines
whose call is still missing, so it is idempotent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models.orm import ApiBatch, RunImage, VLLMCall
from models.vocab import BatchStatus, ImageStatus, Stage
from tasks.annotate import AnnotateSession, Annotator, ImageState, SharedPrefill
from tasks.prices import Prices
from tasks.prompts import RenderedPrompt
from tasks.runs import close_run
from tasks.seke import Answer, CallKey, CallRequest, sub_seed
from tasks.uamc import initial_samples
from tasks.vllm import (
    AsyncVLLMClient,
    CallResult,
    EncodedImage,
    PermanentCallError,
    TransientCallError,
)

ENDPOINT = "/v1/chat/completions"
#: Statuses after which a batch changes no more (its output, if any, can be imported).
TERMINAL = {BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED, BatchStatus.FAILED}


@dataclass(frozen=True)
class BatchConfig:
    """How a batch-mode run submits and waits; none of it changes the run's answers."""

    price_factor: float = 0.5  # OpenAI's Batch API price relative to online
    # Before GPT-5, the Batch API bills cached prompt tokens at its (halved) input rate: no cache discount on top.
    cache_discount: bool = False
    max_requests: int = 50_000  # per input file (the API's limit)
    max_bytes: int = 190 * 1024 * 1024  # per input file (the API's limit is 200 MB)
    poll_s: float = 30.0  # seconds between checks of a batch in progress
    completion_window: str = "24h"
    extra_rounds: int = 3  # rounds allowed beyond N − start + 3, for invalid answers and failed or expired lines
    fallback_online: bool = False  # ask failed or expired lines online at once instead of in the next round
    plan_chunk: int = 1000  # images replayed at once when planning a round


class Pending(Exception):
    """The image needs an answer that is not stored yet: it stops here for this round."""


@dataclass(frozen=True)
class PendingCall:
    """One request of the round: what to send, and what is needed to store its answer as a call."""

    custom_id: str
    state: ImageState
    keys: tuple[CallKey, ...]  # the calls its answer stores: one, or UAMC's first samples as n choices
    prompt: RenderedPrompt
    answer_model: type[BaseModel]
    max_tokens: int
    body: dict[str, Any]
    record: Any  # the client's request record (tasks.vllm._Request): request_params and token estimate
    image: EncodedImage  # for --fallback-online
    temperature: float
    seed: int


def custom_id(run_id: int, image_id: int, stage: Stage | str, index: int) -> str:
    return f"{run_id}/{image_id}/{stage}/{index}"


def _pending_calls(
    client: AsyncVLLMClient, run_id: int, seed: int, prefill: SharedPrefill, state: ImageState, image: EncodedImage,
    request: CallRequest, shared: bool,
) -> list[PendingCall]:
    """The missing request, and with a first sample the rest of the first samples (same prompt, known seeds):
    as one line asking n choices when `shared`, else one line each."""
    indexes = prefill.indexes(request, state.calls)
    groups = [indexes] if shared else [[index] for index in indexes]
    calls = []
    temperature, max_tokens = client.config.stage_params(request.stage)
    for group in groups:
        index = group[0]
        seed_i = request.seed if index == request.index else sub_seed(seed, state.sha256, request.stage, index)
        # The online client's own request builder: the same body, byte for byte, as an online call.
        built = client._request(request.stage, request.prompt, image, request.answer_model, temperature, seed_i, max_tokens, len(group))
        calls.append(PendingCall(
            custom_id(run_id, state.image_id, request.stage, index), state, tuple((request.stage, i) for i in group),
            request.prompt, request.answer_model, max_tokens, built.params, built, image, temperature, seed_i,
        ))
    return calls


@dataclass
class RoundPlan:
    """What a replay of every open image found: the requests still needed, images per outcome, lines stored."""

    pending: dict[str, PendingCall] = field(default_factory=dict)
    requests: int = 0  # pending requests (BatchRunner.plan hands them on chunk by chunk)
    images: Counter[str] = field(default_factory=Counter)
    stored: int = 0
    online: int = 0  # with fallback_online: unanswered lines asked online instead
    noted_refusal: bool = False  # a stored call carries the run report's note that n > 1 was refused
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Line:
    """An answered line of a batch's output file."""

    batch_id: str
    body: dict[str, Any]


async def plan_round(
    annotator: Annotator, image_ids: list[int], lines: dict[str, Line], config: BatchConfig,
    concurrency: int = 32, fallback_online: bool = False, n_refused: bool = False, note_refusal: bool = False,
) -> RoundPlan:
    """Replay every image; store the `lines` that answer a pending request; return what is still needed.

    Images whose answers are all stored finish (or fail) here, committed, as online. With `fallback_online`,
    pending requests without a line are asked online now (at the online price) instead of in the next round.
    `n_refused`: the Batch API refused a line asking n > 1 choices, so each sample is a line of its own;
    `note_refusal`: mark the first call stored for the run report, as the online path marks its fallback.
    """
    plan = RoundPlan()
    # Without shared prefill the first samples still go in one round, as lines of their own.
    prefill = SharedPrefill(initial_samples(annotator.config.uamc))
    shared = annotator.config.shared_prefill and not n_refused
    async with annotator.open() as session:
        gate = asyncio.Semaphore(concurrency)

        async def one(image_id: int) -> None:
            found: list[PendingCall] = []

            def call_for(state: ImageState, image: EncodedImage):  # noqa: ANN202 (a tasks.seke.Call)
                async def call(request: CallRequest) -> Answer:
                    stored = state.calls.get((request.stage, request.index))
                    if stored is not None:
                        return stored.answer(request.answer_model)
                    found.extend(_pending_calls(
                        session.client, annotator.run_id, annotator.config.seed, prefill, state, image, request, shared
                    ))  # fmt: skip
                    raise Pending

                return call

            async with gate:
                try:
                    outcome = await session.annotate(image_id, call_for)
                except Pending:
                    plan.images[ImageStatus.PENDING] += 1
                    plan.pending.update((p.custom_id, p) for p in found)
                    return
                plan.images[outcome.status] += 1

        await asyncio.gather(*(one(image_id) for image_id in image_ids))
        plan.requests = len(plan.pending)
        for cid, pending in plan.pending.items():
            line = lines.get(cid)
            if line is not None:
                results = _results(session, pending, line, config)
                if note_refusal and not plan.noted_refusal:
                    results[0].request_params["shared_prefill_refused"] = True  # the run report reads it
                    plan.noted_refusal = True
                for key, result in zip(pending.keys, results, strict=True):
                    await session.writer.add_call(pending.state, key, pending.prompt, result, line.batch_id, cid)
                    plan.cost_usd += result.cost_usd
                plan.stored += 1
        if fallback_online:
            missing = [p for cid, p in plan.pending.items() if cid not in lines]
            await asyncio.gather(*(_online(session, pending, gate, plan) for pending in missing))
    return plan


async def _online(session: AnnotateSession, pending: PendingCall, gate: asyncio.Semaphore, plan: RoundPlan) -> None:
    """One unanswered line asked online, as the online engine asks it; a transport failure leaves it to the next round."""
    async with gate:
        try:
            results = await session.client.complete_choices(
                pending.keys[0][0], pending.prompt, image=pending.image, answer_model=pending.answer_model,
                temperature=pending.temperature, seed=pending.seed, max_tokens=pending.max_tokens, n=len(pending.keys),
            )
        except (TransientCallError, PermanentCallError):
            return
    for key, result in zip(pending.keys, results, strict=True):
        await session.writer.add_call(pending.state, key, pending.prompt, result)
        plan.cost_usd += result.cost_usd
    plan.online += 1


def _results(session: AnnotateSession, pending: PendingCall, line: Line, config: BatchConfig) -> list[CallResult]:
    """The line's answers (one per choice) as the online client would have read them, priced at the batch rate."""
    completion = ChatCompletion.model_validate(line.body)
    started = datetime.now(UTC)
    results = session.client._results(completion, pending.answer_model, pending.record, pending.max_tokens, 0.0, 1, started)
    prices = session.client.config.prices
    if not config.cache_discount:
        prices = replace(prices, cached_input=prices.input)
    for result in results:
        result.cost_usd = prices.cost_usd(result.tokens_in, result.tokens_cached, result.tokens_out) * config.price_factor
    return results


# --- batches: submit once, wait, read back ---------------------------------------------------------


def request_lines(pending: list[PendingCall]) -> list[bytes]:
    """The OpenAI batch input format, one JSON line per request."""
    return [
        (json.dumps({"custom_id": p.custom_id, "method": "POST", "url": ENDPOINT, "body": p.body}) + "\n").encode()
        for p in pending
    ]


def refuses_n(error_text: str) -> bool:
    """Whether a batch's error file holds a line refused for asking n > 1 choices (HTTP 400 on `n`)."""
    for raw in error_text.splitlines():
        try:
            response = (json.loads(raw) if raw.strip() else {}).get("response") or {}
        except json.JSONDecodeError:
            continue
        body = response.get("body") if isinstance(response.get("body"), dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        if response.get("status_code") == 400 and (error.get("param") == "n" or "'n'" in str(error.get("message"))):
            return True
    return False


def output_lines(text: str, batch_id: str) -> dict[str, Line]:
    """The answered lines of a batch output file (OpenAI's, or vLLM run-batch's: the same format), by custom id."""
    lines: dict[str, Line] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} of batch output {batch_id} is not JSON: {exc}") from exc
        response = row.get("response") or {}
        if response.get("status_code") == 200 and row.get("custom_id"):
            lines[row["custom_id"]] = Line(batch_id, response["body"])
    return lines


class _Parts:
    """A round's request lines, submitted as a batch whenever the next line would pass a per-file limit."""

    def __init__(self, runner: BatchRunner, round_no: int) -> None:
        self.runner, self.round_no = runner, round_no
        self.lines: list[bytes] = []
        self.size = 0
        self.parts = 0

    def add(self, pending: list[PendingCall]) -> None:
        config = self.runner.config
        for line in request_lines(pending):
            if self.lines and (len(self.lines) >= config.max_requests or self.size + len(line) > config.max_bytes):
                self.flush()
            self.lines.append(line)
            self.size += len(line)

    def flush(self) -> None:
        if self.lines:
            self.parts += 1
            self.runner.submit(self.round_no, self.parts, self.lines)
            self.lines, self.size = [], 0


class BatchRunner:
    """One batch-mode run's rounds against one OpenAI-compatible Batch API; every step recorded first."""

    def __init__(
        self,
        annotator: Annotator,
        sessions: sessionmaker[Session],
        client: openai.OpenAI | None,
        config: BatchConfig,
        say: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.annotator, self.sessions, self.config = annotator, sessions, config
        self.say, self.sleep = say, sleep
        self._client = client
        self.run_id = annotator.run_id
        uamc = annotator.config.uamc
        self.max_rounds = uamc.max_samples - initial_samples(uamc) + 3 + config.extra_rounds
        # Set when a batch's error file shows n > 1 refused: from the next round on, one line per sample.
        # A resumed process finds it out again from its first round's errors, once.
        self.n_refused = False
        self._refusal_noted = False

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            raise RuntimeError("this batch runner reads and writes files only: it has no Batch API client")
        return self._client

    # -- rows --

    def _rows(self, *, open_only: bool) -> list[ApiBatch]:
        with self.sessions() as session:
            query = select(ApiBatch).where(ApiBatch.run_id == self.run_id)
            if open_only:
                query = query.where(ApiBatch.status != BatchStatus.IMPORTED.value)
            return list(session.scalars(query.order_by(ApiBatch.round, ApiBatch.part)))

    def _set(self, row_id: int, **values: Any) -> None:
        with self.sessions.begin() as session:
            session.execute(update(ApiBatch).where(ApiBatch.id == row_id).values(**values, updated_at=func.now()))

    def _last_round(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.coalesce(func.max(ApiBatch.round), 0)).where(ApiBatch.run_id == self.run_id)) or 0

    def open_images(self) -> list[int]:
        with self.sessions() as session:
            return list(session.scalars(
                select(RunImage.image_id)
                .where(RunImage.run_id == self.run_id, RunImage.status != ImageStatus.DONE.value)
                .order_by(RunImage.image_id)
            ))

    def plan(
        self, lines: dict[str, Line], *, imported: bool = False, each: Callable[[list[PendingCall]], None] | None = None
    ) -> RoundPlan:
        """Replay the open images `plan_chunk` at a time (request bodies carry their image: memory stays bounded).

        `each` receives each chunk's pending requests; without it, the returned plan keeps them all."""
        total = RoundPlan()
        images = self.open_images()
        fallback = imported and self.config.fallback_online
        for start in range(0, len(images), self.config.plan_chunk):
            chunk = images[start : start + self.config.plan_chunk]
            plan = asyncio.run(plan_round(
                self.annotator, chunk, lines, self.config, fallback_online=fallback, n_refused=self.n_refused,
                note_refusal=self.n_refused and not self._refusal_noted,
            ))  # fmt: skip
            self._refusal_noted |= plan.noted_refusal
            total.images.update(plan.images)
            total.requests += len(plan.pending)
            total.stored += plan.stored
            total.online += plan.online
            total.cost_usd += plan.cost_usd
            if each is not None:
                each(list(plan.pending.values()))
            else:
                total.pending.update(plan.pending)
        return total

    # -- the API --

    def submit(self, round_no: int, part: int, lines: list[bytes]) -> int:
        """Upload, record the intent, create the batch, record its id; returns the row id."""
        name = f"seke-run-{self.run_id}-round-{round_no}-part-{part}.jsonl"
        uploaded = self.client.files.create(file=(name, b"".join(lines)), purpose="batch")
        with self.sessions.begin() as session:
            row = ApiBatch(run_id=self.run_id, round=round_no, part=part, status=BatchStatus.UPLOADED.value,
                           input_file_id=uploaded.id, request_count=len(lines))
            session.add(row)
            session.flush()
            row_id = row.id
        self.create(row_id, uploaded.id, round_no, part)
        return row_id

    def create(self, row_id: int, input_file_id: str, round_no: int, part: int) -> None:
        batch = self.client.batches.create(
            input_file_id=input_file_id,
            endpoint=ENDPOINT,
            completion_window=self.config.completion_window,  # type: ignore[arg-type]
            metadata={"seke_run_id": str(self.run_id), "seke_round": str(round_no), "seke_part": str(part)},
        )
        self._set(row_id, batch_id=batch.id, status=batch.status)

    def find(self, input_file_id: str) -> Any | None:
        """The batch created from `input_file_id`, if any (the API lists newest first)."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == input_file_id:
                return batch
        return None

    def ensure_created(self, row: ApiBatch) -> None:
        """A row recorded before its batch was confirmed: adopt the batch if it exists, else create it."""
        if row.batch_id is not None:
            return
        found = self.find(row.input_file_id)
        if found is not None:
            self.say(f"round {row.round} part {row.part}: found batch {found.id} created before an interruption")
            self._set(row.id, batch_id=found.id, status=found.status)
        else:
            self.create(row.id, row.input_file_id, row.round, row.part)

    def wait(self, rows: list[ApiBatch]) -> dict[str, Line]:
        """Poll every batch until it ends; returns the answered lines of all of them by custom id."""
        lines: dict[str, Line] = {}
        waiting = {row.id: row for row in rows}
        while waiting:
            for row_id, row in list(waiting.items()):
                batch = self.client.batches.retrieve(str(self._batch_id(row_id)))
                counts = batch.request_counts
                done, failed = (counts.completed, counts.failed) if counts else (0, 0)
                self._set(row_id, status=batch.status, completed_count=done, failed_count=failed,
                          output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
                self.say(f"round {row.round} part {row.part}: batch {batch.id} {batch.status}, "
                         f"{done + failed}/{row.request_count} lines back ({failed} failed)")
                if batch.status in TERMINAL:
                    if batch.output_file_id:
                        lines.update(self.read_output(batch.id, batch.output_file_id))
                    if (self.annotator.config.shared_prefill and not self.n_refused and batch.error_file_id
                            and refuses_n(self.client.files.content(batch.error_file_id).text)):
                        self.n_refused = True
                        self.say(f"batch {batch.id}: the Batch API refused n > 1 choices; one line per sample "
                                 "from the next round on")
                    del waiting[row_id]
            if waiting:
                self.sleep(self.config.poll_s)
        return lines

    def _batch_id(self, row_id: int) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(ApiBatch.batch_id).where(ApiBatch.id == row_id))

    def read_output(self, batch_id: str, file_id: str) -> dict[str, Line]:
        return output_lines(self.client.files.content(file_id).text, batch_id)

    # -- offline rounds (vLLM run-batch files) --

    def export_round(self) -> list[bytes]:
        """The next round's request lines, for a batch run elsewhere; images already answered finish here."""
        lines: list[bytes] = []
        self.plan({}, each=lambda pending: lines.extend(request_lines(pending)))
        if not lines:
            with self.sessions.begin() as session:
                close_run(session, self.run_id, stop_reason=None)
        return lines

    def import_round(self, text: str, name: str) -> RoundPlan:
        """Store the answered lines of an output file (idempotent: only calls still missing are stored)."""
        return self.plan(output_lines(text, f"file:{name}"))

    # -- the rounds --

    def run(self) -> str | None:
        """Rounds until every image is done or failed; returns a stop reason, or None when finished."""
        while True:
            open_rows = self._rows(open_only=True)
            if open_rows:
                for row in open_rows:
                    self.ensure_created(row)
                lines = self.wait(open_rows)
                plan = self.plan(lines, imported=True)
                for row in open_rows:
                    self._set(row.id, status=BatchStatus.IMPORTED.value)
                self.say(f"round {open_rows[0].round}: stored {plan.stored} answers, ${plan.cost_usd:.4f}; "
                         + (f"{plan.online} unanswered asked online" if self.config.fallback_online
                            else f"{plan.requests - plan.stored} unanswered go to the next round"))
                continue
            round_no = self._last_round() + 1
            parts = _Parts(self, round_no)
            # Past the last round nothing is submitted: the replay only finishes the images it can.
            plan = self.plan({}, each=parts.add if round_no <= self.max_rounds else lambda pending: None)
            parts.flush()
            images = dict(plan.images)
            if not plan.requests:
                self.say(f"all rounds done ({images.get('done', 0)} images finished in the last round, "
                         f"{images.get('failed', 0)} failed)")
                return None
            if round_no > self.max_rounds:
                return f"batch mode stopped after {self.max_rounds} rounds with {plan.requests} requests unanswered"
            self.say(f"round {round_no}: {plan.requests} requests for {images.get('pending', 0)} images "
                     f"in {parts.parts} batch(es); {images.get('done', 0)} images finished since the last round")


@dataclass(frozen=True)
class BatchSavings:
    """What a run's calls answered by the Batch API cost, against the same tokens at the run's online prices."""

    calls: int
    cost_usd: float
    online_cost_usd: float

    @property
    def saved_usd(self) -> float:
        return self.online_cost_usd - self.cost_usd


def batch_savings(session: Session, run_id: int) -> BatchSavings:
    """From the stored calls that name a provider batch (not imported files) and the run's recorded prices."""
    from models.orm import Run

    endpoint = (session.get(Run, run_id).config or {}).get("endpoint") or {}  # type: ignore[union-attr]
    calls, cost, tokens_in, tokens_cached, tokens_out = session.execute(
        select(func.count(), func.coalesce(func.sum(VLLMCall.cost_usd), 0), func.coalesce(func.sum(VLLMCall.tokens_in), 0),
               func.coalesce(func.sum(VLLMCall.tokens_cached), 0), func.coalesce(func.sum(VLLMCall.tokens_out), 0))
        .where(VLLMCall.run_id == run_id, VLLMCall.batch_id.is_not(None), VLLMCall.batch_id.not_like("file:%"))
    ).one()
    price_in = endpoint.get("price_in_per_mtok", 0)
    prices = Prices(price_in, endpoint.get("price_cached_in_per_mtok") or price_in, endpoint.get("price_out_per_mtok", 0))
    online = prices.cost_usd(tokens_in, tokens_cached, tokens_out)
    return BatchSavings(int(calls), float(cost), float(online))
