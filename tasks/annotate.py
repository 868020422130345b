"""The annotate engine: SEKE (tasks/seke.py) over many images at once on one event loop, every call persisted.

Per image: one round trip reads its stored state (image, human labels, the
run's stored calls and UAMC steps); the image is read and encoded once; then
`run_seke` runs with a `call` that replays a stored answer when the run has
one (resume is replay: UAMC's p values come from a stream seeded per (run,
image), so the replay asks for exactly the calls the interrupted run made)
and otherwise asks the endpoint and hands the row to the run's writer.

The writer (`RunWriter`) commits call rows, UAMC steps and final rows in
batches: a batch is committed when it holds half of `rows` call rows, when
its oldest row is `ms` milliseconds old, or at once when an image waits for
its final rows; producers wait while `rows` call rows are uncommitted. So a SIGKILL costs at most the calls in flight plus `rows`
calls, each paid again on resume (SEKE_WRITE_BUFFER_ROWS / _MS). An image is
counted done only once its final rows are committed: `annotate` returns after
the batch holding them commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from enum import StrEnum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel
from sqlalchemy import Integer, bindparam, case, func, literal_column, null, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core.redact import redact_text
from core.store import ObjectStore, StoreError
from models.answers import bounded_raw_text
from models.labels import FaceLabels, task_of
from models.orm import Annotation, HumanLabel, Image, Instruction, Prompt, RunImage, UAMCStep, VLLMCall, label_columns
from models.vocab import ImageStatus, Stage
from tasks.consistency import consistency_flags
from tasks.images import InvalidImage, validate_image
from tasks.prompts import SAMPLE_STAGE, RenderedPrompt
from tasks.ratelimit import RateLimiter
from tasks.config import AnnotateConfig
from tasks.seke import Answer, CallKey, CallRequest, ImageFailed, SekeImage, SekeResult, run_seke, sub_seed
from tasks.uamc import Step, image_rng, initial_samples
from tasks.vllm import (
    AsyncVLLMClient, CallResult, ChoicesRefused, EncodedImage, PermanentCallError, TransientCallError, VLLMConfig,
    parse_answer,
)  # fmt: skip

logger = logging.getLogger(__name__)


class Budget:
    """Calls and dollars spent by a run, shared by its coroutines; new images start only while under the caps."""

    def __init__(self, calls: int, cost_usd: float, max_calls: int | None, max_cost_usd: float | None) -> None:
        self._lock = threading.Lock()
        self.calls = calls
        self.cost_usd = cost_usd
        self.max_calls = max_calls
        self.max_cost_usd = max_cost_usd
        self.abort_reason: str | None = None

    def add(self, result: CallResult) -> None:
        with self._lock:
            self.calls += 1
            self.cost_usd += result.cost_usd

    def abort(self, reason: str) -> None:
        with self._lock:
            self.abort_reason = self.abort_reason or reason

    def stop_reason(self) -> str | None:
        """Why no new image may start, or None."""
        with self._lock:
            if self.abort_reason:
                return self.abort_reason
            if self.max_calls is not None and self.calls >= self.max_calls:
                return f"call budget reached: {self.calls} calls ≥ --max-calls {self.max_calls}"
            if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
                return f"cost budget reached: ${self.cost_usd:.4f} ≥ --max-cost {self.max_cost_usd}"
            return None


@dataclass
class ImageOutcome:
    image_id: int
    status: str  # done | failed | skipped
    samples_used: int = 0
    reason: str | None = None
    new_calls: int = 0


# Attempts at a batch's transaction when PostgreSQL aborts it to break a deadlock.
DEADLOCK_RETRIES = 5


@dataclass(frozen=True)
class WriteBuffer:
    """How long call rows may wait uncommitted: at most `rows` at once, at most `ms` milliseconds each."""

    rows: int = 256
    ms: float = 100.0


def store_prompt(session: Session, prompt: RenderedPrompt) -> None:
    """A rendered prompt, stored once under its sha256 (calls and benchmark runs refer to it)."""
    session.execute(_prompt_insert(), [_prompt_row(prompt)])


def _prompt_insert():  # noqa: ANN202 (a SQLAlchemy Insert)
    return insert(Prompt).on_conflict_do_nothing(index_elements=["sha256"])


def _prompt_row(prompt: RenderedPrompt) -> dict[str, str]:
    return {"sha256": prompt.sha256, "name": prompt.name, "version": prompt.version, "text": prompt.text}


def spent(session: Session, run_id: int) -> tuple[int, float]:
    """(calls, dollars) a run has spent so far, from the database (the budget's starting point)."""
    calls, cost = session.execute(
        select(func.count(VLLMCall.id), func.coalesce(func.sum(VLLMCall.cost_usd), 0)).where(VLLMCall.run_id == run_id)
    ).one()
    return int(calls), float(cost)


# --- an image's stored state: one round trip ----------------------------------------------------


@dataclass(frozen=True)
class StoredCall:
    valid: bool
    parsed: dict[str, Any] | None
    error: str | None
    raw_text: str | None = None  # as stored, for a call read back from the database

    def answer(self, answer_model: type[BaseModel]) -> Answer:
        """The answer exactly as the client parsed it when the call was made. A read-back call is parsed again
        from its raw text: samples show in the summary prompt, which a resumed run must send as an
        uninterrupted one does, and JSONB keeps neither key order nor -0.0. A raw text cut at its stored
        bound no longer parses; its stored object, in the answer model's key order, stands in."""
        parsed = self.parsed
        if self.raw_text is not None and self.valid:
            parsed = parse_answer(self.raw_text, answer_model)[0]
            if parsed is None and self.parsed is not None:
                parsed = answer_model.model_validate(self.parsed).model_dump(mode="json")
        return Answer(self.valid, parsed, self.error)


@dataclass
class ImageState:
    """What the run has stored for one image; `call_ids` grows as the writer commits new calls."""

    image_id: int
    sha256: str
    object_key: str
    known: FaceLabels
    human_ids: dict[str, int]
    calls: dict[CallKey, StoredCall]
    call_ids: dict[CallKey, int]
    steps: set[int]
    new_calls: int = 0


def _state_query():  # noqa: ANN202 (a SQLAlchemy Select)
    """Image, human labels, stored calls and stored steps of one image in one run, as one row."""
    image_id, run_id = bindparam("image_id", type_=Integer), bindparam("run_id", type_=Integer)
    labels = (
        # The preferred label last, so it wins in _image_state: a review's, else the first-importing source's.
        select(func.json_agg(aggregate_order_by(
            func.json_build_array(HumanLabel.id, HumanLabel.field, HumanLabel.value_text, HumanLabel.value_number,
                                  HumanLabel.value_bool),
            *HumanLabel.preferred_last(),
        )))
        .where(HumanLabel.image_id == image_id)
        .scalar_subquery()
    )
    calls = (
        select(func.json_agg(func.json_build_array(VLLMCall.id, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.valid,
                                                   VLLMCall.parsed, VLLMCall.error,
                                                   case((VLLMCall.valid, VLLMCall.raw_text), else_=null()))))
        .where(VLLMCall.run_id == run_id, VLLMCall.image_id == image_id)
        .scalar_subquery()
    )
    steps = (
        select(func.array_agg(UAMCStep.step))
        .where(UAMCStep.run_id == run_id, UAMCStep.image_id == image_id)
        .scalar_subquery()
    )
    return select(Image.sha256, Image.object_key, labels, calls, steps).where(Image.id == image_id)


# The hot statements run through psycopg directly (pipelined executemany, no per-statement SQLAlchemy
# overhead), as SQL compiled once from the ORM's tables: the schema stays defined in one place.
_DIALECT = postgresql.psycopg.dialect()  # type: ignore[attr-defined]


def _sql(statement: Any) -> str:
    return str(statement.compile(dialect=_DIALECT))


def _word(value: StrEnum) -> Any:
    return literal_column(f"'{value.value}'")  # a vocabulary word, inlined (never user input)


def _bound(table: Any, *skip: str) -> dict[str, Any]:
    return {c.name: bindparam(c.name, type_=c.type) for c in table.columns if c.name not in ("id", "created_at", *skip)}


_STATE_SQL = _sql(_state_query())
_PROMPT_SQL = _sql(insert(Prompt).inline().values(_bound(Prompt.__table__)).on_conflict_do_nothing(index_elements=["sha256"]))
_CALL_SQL = _sql(insert(VLLMCall).values(_bound(VLLMCall.__table__)).returning(VLLMCall.id))
_STEP_SQL = _sql(
    insert(UAMCStep).inline().values(_bound(UAMCStep.__table__)).on_conflict_do_nothing(index_elements=["run_id", "image_id", "step"])
)
_ANNOTATION_SQL = _sql(
    insert(Annotation).inline().values(_bound(Annotation.__table__)).on_conflict_do_nothing(index_elements=["run_id", "image_id", "field"])
)
_INSTRUCTION_SQL = _sql(
    insert(Instruction).inline().values(_bound(Instruction.__table__)).on_conflict_do_nothing(index_elements=["run_id", "image_id"])
)
_SAMPLING_SQL = _sql(
    update(RunImage)
    .where(RunImage.run_id == bindparam("run_id"), RunImage.image_id == bindparam("image_id"),
           RunImage.status == _word(ImageStatus.PENDING))
    .values(status=_word(ImageStatus.SAMPLING))
)
_DONE_SQL = _sql(
    update(RunImage)
    .where(RunImage.run_id == bindparam("run_id"), RunImage.image_id == bindparam("image_id"))
    .values(status=_word(ImageStatus.DONE), samples_used=bindparam("samples_used"), failure_reason=null(),
            consistency_flags=bindparam("flags", type_=RunImage.__table__.c.consistency_flags.type))
)
_FAILED_SQL = _sql(
    update(RunImage)
    .where(RunImage.run_id == bindparam("run_id"), RunImage.image_id == bindparam("image_id"))
    .values(status=_word(ImageStatus.FAILED), failure_reason=bindparam("reason"))
)


def conninfo(database_url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL (postgresql+psycopg://…)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _image_state(image_id: int, row: Any, config: AnnotateConfig) -> ImageState:
    sha256, object_key, labels, calls, steps = row
    masked = config.masked_fields
    kept = [(label_id, name, next(v for v in values if v is not None))
            for label_id, name, *values in labels or () if name not in masked]
    stored = {(Stage(stage), index): (call_id, StoredCall(valid, parsed, error, raw_text))
              for call_id, stage, index, valid, parsed, error, raw_text in calls or ()}
    return ImageState(
        image_id=image_id,
        sha256=sha256,
        object_key=object_key,
        known=FaceLabels.from_field_values({name: value for _, name, value in kept}),
        human_ids={name: label_id for label_id, name, _ in kept},
        calls={key: call for key, (_, call) in stored.items()},
        call_ids={key: call_id for key, (call_id, _) in stored.items()},
        steps=set(steps or ()),
    )


# --- the writer ----------------------------------------------------------------------------------


@dataclass
class _Batch:
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: list[tuple[ImageState, CallKey, dict[str, Any]]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    sampling: set[int] = field(default_factory=set)
    finals: list[tuple[ImageState, SekeResult]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    committed: list[asyncio.Future[None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.calls or self.steps or self.finals or self.failures)


class RunWriter:
    """Batches one run's rows into few transactions (see the module docstring for the bounds)."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], run_id: int, buffer: WriteBuffer) -> None:
        self._connection = connection
        self._run_id = run_id
        self._buffer = buffer
        self._batch = _Batch()
        self._uncommitted = 0  # call rows added and not yet committed (pending + flushing)
        self._known_prompts: set[str] = set()
        self._pending = asyncio.Event()  # set when rows were added (or on close)
        self._due = asyncio.Event()  # set when the batch should be committed now
        self._space = asyncio.Condition()
        self._oldest: float | None = None
        self._failure: BaseException | None = None
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name=f"run-{run_id}-writer")

    def _check(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the run's database writer failed: {self._failure}") from self._failure

    async def add_call(
        self, state: ImageState, key: CallKey, prompt: RenderedPrompt, result: CallResult,
        batch_id: str | None = None, custom_id: str | None = None,
    ) -> None:
        """Queue a call row; waits while `rows` call rows are uncommitted (batch mode: with its batch line)."""
        self._check()
        if self._uncommitted >= self._buffer.rows:
            async with self._space:
                await self._space.wait_for(lambda: self._uncommitted < self._buffer.rows or self._failure is not None)
            self._check()
        batch = self._batch
        for part in (prompt, prompt.system):
            if part is not None and part.sha256 not in self._known_prompts:
                batch.prompts[part.sha256] = _prompt_row(part)
        if not state.call_ids and not state.calls:
            batch.sampling.add(state.image_id)
        stage, index = key
        batch.calls.append((state, key, {
            "run_id": self._run_id,
            "image_id": state.image_id,
            "stage": stage.value,
            "sample_index": index,
            "prompt_sha256": prompt.sha256,
            "request_params": Jsonb(result.request_params),
            "raw_text": bounded_raw_text(result.raw_text),
            "parsed": None if result.parsed is None else Jsonb(result.parsed),
            "valid": result.valid,
            "error": result.error,
            "tokens_in": result.tokens_in,
            "tokens_out": result.tokens_out,
            "tokens_cached": result.tokens_cached,
            "cost_usd": Decimal(str(round(result.cost_usd, 6))),
            "latency_s": result.latency_s,
            "attempts": result.attempts,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "batch_id": batch_id,
            "custom_id": custom_id,
        }))
        self._uncommitted += 1
        self._added(len(batch.calls) * 2 >= self._buffer.rows)

    def add_steps(self, state: ImageState, steps: tuple[Step, ...]) -> None:
        self._check()
        for step in steps:
            if step.step in state.steps:
                continue
            state.steps.add(step.step)
            self._batch.steps.append({
                "run_id": self._run_id,
                "image_id": state.image_id,
                "step": step.step,
                "valid_samples": step.valid_samples,
                "uncertainties": Jsonb({t.value: round(u, 6) for t, u in step.uncertainties.items()}),
                "u_max": step.u_max,
                "p_acc": step.p_acc,
                "p": step.p,
                "decision": step.decision.value,
            })
        self._added(False)

    async def finish(self, state: ImageState, result: SekeResult) -> None:
        """Queue the image's final rows and wait until they are committed."""
        self._check()
        self.add_steps(state, result.sampling.steps)
        self._batch.finals.append((state, result))
        await self._committed()

    async def fail(self, state_or_id: ImageState | int, reason: str, steps: tuple[Step, ...]) -> None:
        """Queue the image's failure (and the decisions taken before it) and wait until committed."""
        self._check()
        if isinstance(state_or_id, ImageState):
            self.add_steps(state_or_id, steps)
            image_id = state_or_id.image_id
        else:
            image_id = state_or_id
        self._batch.failures.append((image_id, reason))
        await self._committed()

    async def _committed(self) -> None:
        # An image waits for its own commit: flush now (rows queued meanwhile join the next batch).
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.committed.append(future)
        self._added(True)
        await future

    def _added(self, full: bool) -> None:
        if self._oldest is None:
            self._oldest = asyncio.get_running_loop().time()
        self._pending.set()
        if full:
            self._due.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not (self._closing and self._oldest is None):
                await self._pending.wait()
                self._pending.clear()
                if self._oldest is None:
                    continue
                delay = self._oldest + self._buffer.ms / 1000 - loop.time()
                if delay > 0 and not self._closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._due.wait(), delay)
                await self._flush()
        except BaseException as exc:  # every waiter must hear of it, then the error ends the writer
            self._failure = exc
            for future in self._batch.committed:
                if not future.done():
                    future.set_exception(RuntimeError(f"the run's database writer failed: {exc}"))
            async with self._space:
                self._space.notify_all()
            raise

    async def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._oldest = None
        self._due.clear()
        if batch.prompts or batch:
            try:
                await self._commit(batch)
            except BaseException as exc:
                for future in batch.committed:
                    if not future.done():
                        future.set_exception(RuntimeError(f"the run's database writer failed: {exc}"))
                raise
        self._known_prompts.update(batch.prompts)
        self._uncommitted -= len(batch.calls)
        async with self._space:
            self._space.notify_all()
        for future in batch.committed:
            if not future.done():
                future.set_result(None)
        if self._oldest is not None:  # rows added while this batch was being written
            self._pending.set()

    async def _commit(self, batch: _Batch) -> None:
        """Write the batch in one transaction, again if PostgreSQL broke a deadlock by aborting it.

        Each row of an executemany is its own statement, so the summary-table triggers lock their
        rows in the batch's order, and the writers of other shards and workers can meet this one in
        a cycle. The transaction rolled back whole, so writing it again is safe.
        """
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                async with self._connection.transaction():
                    await self._write(self._connection.cursor(), batch)
                return
            except psycopg.errors.DeadlockDetected:
                if attempt == DEADLOCK_RETRIES:
                    raise
                await asyncio.sleep(random.uniform(0.0, 0.05 * attempt))  # the other side commits meanwhile

    async def _write(self, cursor: psycopg.AsyncCursor[Any], batch: _Batch) -> None:
        """One transaction; each executemany is pipelined by psycopg (one round trip per statement kind)."""
        if batch.prompts:
            await cursor.executemany(_PROMPT_SQL, list(batch.prompts.values()))
        if batch.calls:
            # By stage, so every writer takes the per-stage summary rows in one order.
            batch.calls.sort(key=lambda call: call[2]["stage"])
            await cursor.executemany(_CALL_SQL, [row for _, _, row in batch.calls], returning=True)
            for state, key, _ in batch.calls:  # one result set per row, in order
                state.call_ids[key] = (await cursor.fetchone())[0]  # type: ignore[index]
                cursor.nextset()
        if batch.steps:
            await cursor.executemany(_STEP_SQL, batch.steps)
        if batch.sampling:
            await cursor.executemany(_SAMPLING_SQL, [{"run_id": self._run_id, "image_id": i} for i in sorted(batch.sampling)])
        if batch.finals:
            await self._write_finals(cursor, batch.finals)
        if batch.failures:
            await cursor.executemany(
                _FAILED_SQL, [{"run_id": self._run_id, "image_id": i, "reason": reason} for i, reason in batch.failures]
            )

    async def _write_finals(self, cursor: psycopg.AsyncCursor[Any], finals: list[tuple[ImageState, SekeResult]]) -> None:
        """Final annotations, instructions and statuses of finished images: in the batch's transaction, so an
        image is done exactly when its rows exist."""
        annotations, instructions, statuses = [], [], []
        for state, result in finals:
            final = result.summary.final
            summary_call_id = state.call_ids[result.summary.call]
            samples_used = len(result.sampling.samples)
            for name, value in final.field_values().items():
                human = name in state.human_ids
                annotations.append({
                    "run_id": self._run_id,
                    "image_id": state.image_id,
                    "field": name,
                    "provenance": "human" if human else "generated",
                    "human_label_id": state.human_ids.get(name),
                    "summary_call_id": None if human else summary_call_id,
                    "uncertainty": None if human else result.sampling.uncertainty.get(task_of(name)),
                    "samples_used": None if human else samples_used,
                    **label_columns(value),
                })
            rewrite = result.rewrite
            instructions.append({
                "run_id": self._run_id,
                "image_id": state.image_id,
                "template_id": rewrite.template_id,
                "question": rewrite.question,
                "answer": rewrite.answer,
                "description": result.summary.description,
                "rewrite_call_id": state.call_ids[rewrite.call] if rewrite.call else None,
            })
            statuses.append({
                "run_id": self._run_id,
                "image_id": state.image_id,
                "samples_used": samples_used,
                "flags": Jsonb(consistency_flags(final)),
            })
        await cursor.executemany(_ANNOTATION_SQL, annotations)
        await cursor.executemany(_INSTRUCTION_SQL, instructions)
        await cursor.executemany(_DONE_SQL, statuses)

    async def close(self) -> None:
        """Commit what is left and stop; raises if the writer failed."""
        self._closing = True
        self._due.set()
        self._pending.set()
        try:
            await self._task
        finally:
            self._check()


# --- the engine ---------------------------------------------------------------------------------


class Annotator:
    """One run's engine settings: not bound to an event loop. `open()` starts the loop-bound parts."""

    def __init__(
        self,
        *,
        run_id: int,
        run_name: str,
        config: AnnotateConfig,
        database_url: str,
        store: ObjectStore,
        vllm: VLLMConfig,
        budget: Budget,
        buffer: WriteBuffer = WriteBuffer(),
        limiter: RateLimiter | None = None,
    ) -> None:
        self.run_id = run_id
        self.run_name = run_name
        self.config = config
        self.database_url = database_url
        self.store = store
        self.vllm = vllm
        self.budget = budget
        self.buffer = buffer
        self.limiter = limiter  # None: the client's own, from the endpoint's configured caps
        self.shared_prefill = SharedPrefill(initial_samples(config.uamc) if config.shared_prefill else 1)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AnnotateSession]:
        """Endpoint client, database connections and writer on the running event loop; all committed on exit.

        Two connections: the writer's, and one in autocommit mode shared by every image's read (a single
        statement each; psycopg serialises them, ~1 ms apiece, far below the rate images start).
        """
        dsn = conninfo(self.database_url)
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as reads,
            await psycopg.AsyncConnection.connect(dsn) as writes,
            AsyncVLLMClient(self.vllm, limiter=self.limiter) as client,
        ):
            writer = RunWriter(writes, self.run_id, self.buffer)
            try:
                yield AnnotateSession(self, reads, client, writer)
            finally:
                await writer.close()


class AnnotateSession:
    """The open engine of one run on one event loop: `annotate(image_id)` for as many images at once as wanted."""

    def __init__(
        self, annotator: Annotator, reads: psycopg.AsyncConnection[Any], client: AsyncVLLMClient, writer: RunWriter
    ) -> None:
        self._annotator = annotator
        self._reads = reads
        self._client = client
        self._writer = writer
        self.budget = annotator.budget

    @property
    def writer(self) -> RunWriter:
        return self._writer

    @property
    def client(self) -> AsyncVLLMClient:
        return self._client

    async def annotate(self, image_id: int, call_for: CallFor | None = None) -> ImageOutcome:
        """Annotate one image end to end, committed; never raises for a problem of this image.

        `call_for` supplies the procedure's `call` (batch mode); by default a `_Replay` on the endpoint.
        Whatever else the call raises (batch mode's "answer not back yet") ends the image uncommitted."""
        annotator = self._annotator
        state: ImageState | int = image_id
        try:
            state = await self._load(image_id)
            image = await asyncio.to_thread(self._encoded_image, state.object_key)
            call = (
                call_for(state, image)
                if call_for
                else _Replay(state, image, self._client, self._writer, self.budget, annotator.shared_prefill).call
            )
            result = await run_seke(
                SekeImage(state.sha256, sub_seed(annotator.config.seed, annotator.run_name, state.sha256, "question")),
                state.known,
                annotator.config,
                call,
                image_rng(annotator.config.seed, annotator.run_name, state.sha256),
            )
        except ImageFailed as exc:
            reason = redact_text(str(exc))  # stored, logged and shown: no credentials from a URL
            await self._writer.fail(state, reason, exc.steps)
            new_calls = state.new_calls if isinstance(state, ImageState) else 0
            return ImageOutcome(image_id, ImageStatus.FAILED, reason=reason, new_calls=new_calls)
        await self._writer.finish(state, result)
        return ImageOutcome(image_id, ImageStatus.DONE, samples_used=len(result.sampling.samples), new_calls=state.new_calls)

    async def _load(self, image_id: int) -> ImageState:
        cursor = await self._reads.execute(_STATE_SQL, {"image_id": image_id, "run_id": self._annotator.run_id})
        row = await cursor.fetchone()
        if row is None:
            raise ImageFailed(f"image {image_id} is not in the database")
        return _image_state(image_id, row, self._annotator.config)

    def _encoded_image(self, object_key: str) -> EncodedImage:
        """The image as sent, read and encoded once (in a worker thread: an S3 read must not stall the loop)."""
        try:
            data = self._annotator.store.get_bytes(object_key)
            validate_image(data, name=object_key)
            return EncodedImage.of(data, self._client.config.image_max_side)
        except (StoreError, InvalidImage, ValueError) as exc:  # a missing or broken object fails this image alone
            raise ImageFailed(f"cannot read image {object_key}: {exc}") from exc


#: Batch mode's source of an image's `call`, given its stored state and its image as sent.
CallFor = Callable[[ImageState, EncodedImage], Callable[[CallRequest], Awaitable[Answer]]]


@dataclass
class SharedPrefill:
    """UAMC's first `start` samples of an image as one request for n choices, until the endpoint refuses n.

    Each choice is stored as the sample it stands for, so resume replays it like any stored answer;
    a choice never stored is asked again on its own, with its own seed, as without shared prefill."""

    start: int  # initial_samples(uamc) when on; 1: off
    refused: bool = False  # the endpoint answered n > 1 with 400: one call per sample from now on

    def indexes(self, request: CallRequest, calls: Mapping[CallKey, Any]) -> list[int]:
        """The sample indexes one request answers: the asked one, and the first samples not stored yet."""
        if request.stage != SAMPLE_STAGE or self.refused:
            return [request.index]
        return [request.index, *(i for i in range(request.index + 1, self.start) if (SAMPLE_STAGE, i) not in calls)]


class _Replay:
    """The `call` of one image's procedure: the stored answer when the run has it, else a new call, queued for writing."""

    def __init__(
        self, state: ImageState, image: EncodedImage, client: AsyncVLLMClient, writer: RunWriter, budget: Budget,
        prefill: SharedPrefill,
    ) -> None:  # fmt: skip
        self._state = state
        self._image = image
        self._client = client
        self._writer = writer
        self._budget = budget
        self._prefill = prefill

    async def call(self, request: CallRequest) -> Answer:
        key = (request.stage, request.index)
        stored = self._state.calls.get(key)
        if stored is not None:
            return stored.answer(request.answer_model)
        indexes = self._prefill.indexes(request, self._state.calls)
        try:
            try:
                results = await self._ask(request, len(indexes))
            except ChoicesRefused:
                logger.warning("the endpoint refuses n > 1 choices: one call per sample for the rest of the run")
                self._prefill.refused = True
                indexes, results = [request.index], await self._ask(request, 1)
                results[0].request_params["shared_prefill_refused"] = True  # the run report reads it
        except TransientCallError as exc:
            raise ImageFailed(f"{request.stage} call {request.index}: {exc}") from exc
        except PermanentCallError as exc:
            self._budget.abort(redact_text(f"endpoint refused a request: {exc}"))
            raise ImageFailed(f"{request.stage} call {request.index}: {exc}") from exc
        for index, result in zip(indexes, results, strict=True):
            self._budget.add(result)
            self._state.new_calls += 1
            await self._writer.add_call(self._state, (request.stage, index), request.prompt, result)
            self._state.calls[(request.stage, index)] = StoredCall(result.valid, result.parsed, result.error)
        first = results[0]
        return Answer(first.valid, first.parsed, first.error)

    async def _ask(self, request: CallRequest, n: int) -> list[CallResult]:
        temperature, max_tokens = self._client.config.stage_params(request.stage)
        return await self._client.complete_choices(
            request.stage, request.prompt, image=self._image, answer_model=request.answer_model,
            temperature=temperature, seed=request.seed, max_tokens=max_tokens, n=n,
        )  # fmt: skip


# --- driving many images --------------------------------------------------------------------------

#: Where the images to annotate come from: each call returns the next batch of image ids, or None when
#: there are no more. The only place that decides which image is worked on next.
Claim = Callable[[], Awaitable[list[int] | None]]


def claim_from(image_ids: list[int], per_claim: int = 1) -> Claim:
    """A Claim over a fixed list, `per_claim` ids at a time."""
    batches = iter([image_ids[i : i + per_claim] for i in range(0, len(image_ids), per_claim)])

    async def claim() -> list[int] | None:
        return next(batches, None)

    return claim


async def drive(
    claim: Claim,
    work: Callable[[list[int]], Awaitable[list[ImageOutcome]]],
    concurrency: int,
    slots: asyncio.Semaphore | None = None,
) -> list[ImageOutcome]:
    """`concurrency` workers, each claiming a batch and awaiting `work` on it until `claim` runs dry.

    With `slots`, shared by drives running at once, a worker holds a slot from its claim to the end
    of its work: together they never have more than the slots' count of batches in hand.
    """
    outcomes: list[ImageOutcome] = []
    slot = slots if slots is not None else contextlib.nullcontext()

    async def worker() -> None:
        while True:
            async with slot:
                batch = await claim()
                if batch is None:
                    return
                outcomes.extend(await work(batch))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes
