"""Annotating one image: prior-knowledge samples → UAMC → summary → rewrite (SEKE §3, Algorithm 1).

Every call is persisted, with its prompt, in its own transaction as soon as it
returns; every UAMC decision likewise. Resume is replay: the procedure runs
from the start, and each call it would make is first looked up by
(run, image, stage, index). A stored call is reused, a missing one is made.
Because UAMC's p values come from a stream seeded per (run, image), the replay
takes exactly the decisions the interrupted run took, so no completed call is
paid for twice and none is duplicated.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from models.answers import RewriteAnswer, labels_from_answer, sample_answer_model, summary_answer_model
from models.labels import FaceLabels, Task, fields_of, task_of
from models.orm import Annotation, HumanLabel, Image, Instruction, Prompt, RunImage, UAMCStep, VLLMCall, label_columns
from core.store import ObjectStore, StoreError
from tasks.config import AnnotateConfig
from tasks.consistency import consistency_flags
from tasks.images import InvalidImage, validate_image
from tasks.prompts import (
    REWRITE_STAGE,
    SAMPLE_STAGE,
    SUMMARY_STAGE,
    RenderedPrompt,
    choose_question,
    deterministic_answer,
    prior_prompt,
    rewrite_prompt,
    summary_prompt,
)
from tasks.uamc import Step, decide, image_rng, initial_samples, normalised_uncertainties, task_statistics
from tasks.vllm import CallResult, PermanentCallError, TransientCallError, VLLMClient

#: Stage names as stored in vllm_calls.stage.
DB_STAGE = {SAMPLE_STAGE: "prior-sample", SUMMARY_STAGE: "summary", REWRITE_STAGE: "rewrite"}


class Budget:
    """Calls and dollars spent by a run, shared by its threads; new images start only while under the caps."""

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


@dataclass(frozen=True)
class StoredCall:
    """What the procedure needs of a persisted call (a plain object, safe across threads)."""

    id: int
    stage: str
    sample_index: int
    valid: bool
    parsed: dict[str, Any] | None
    error: str | None


class ImageFailed(Exception):
    """Ends one image with a reason; the run goes on."""


def store_prompt(session: Session, prompt: RenderedPrompt) -> None:
    """A rendered prompt, stored once under its sha256 (calls and benchmark runs refer to it)."""
    session.execute(
        insert(Prompt)
        .values(sha256=prompt.sha256, name=prompt.name, version=prompt.version, text=prompt.text)
        .on_conflict_do_nothing(index_elements=["sha256"])
    )


def _sub_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass
class _ImageState:
    """Stored calls of one image in one run, consumed in order by the replay."""

    calls: dict[tuple[str, int], StoredCall]
    steps: set[int]
    next_index: dict[str, int] = field(default_factory=lambda: {s: 0 for s in DB_STAGE.values()})
    marked_sampling: bool = False


class Annotator:
    """Runs the per-image procedure for one run. Thread-safe: each image uses its own sessions."""

    def __init__(
        self,
        *,
        run_id: int,
        run_name: str,
        config: AnnotateConfig,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        client: VLLMClient,
        budget: Budget,
    ) -> None:
        self.run_id = run_id
        self.run_name = run_name
        self.config = config
        self.sessions = sessions
        self.store = store
        self.client = client
        self.budget = budget
        self._known_prompts: set[str] = set()

    # -- persistence -------------------------------------------------------------------------

    def _load(self, image_id: int) -> tuple[Image, FaceLabels, dict[str, int], _ImageState]:
        with self.sessions() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise ImageFailed(f"image {image_id} is not in the database")
            labels = session.scalars(select(HumanLabel).where(HumanLabel.image_id == image_id)).all()
            calls = session.execute(
                select(
                    VLLMCall.id, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.valid, VLLMCall.parsed, VLLMCall.error
                ).where(VLLMCall.run_id == self.run_id, VLLMCall.image_id == image_id)
            ).all()
            steps = session.scalars(
                select(UAMCStep.step).where(UAMCStep.run_id == self.run_id, UAMCStep.image_id == image_id)
            ).all()
        masked = {f for task in self.config.tasks_to_mask for f in fields_of(task)}
        kept = [label for label in labels if label.field not in masked]
        known = FaceLabels.from_field_values({label.field: label.value for label in kept})
        state = _ImageState(
            calls={(c.stage, c.sample_index): StoredCall(*c) for c in calls}, steps=set(steps), marked_sampling=bool(calls)
        )
        return image, known, {label.field: label.id for label in kept}, state

    def _persist_call(
        self, image_id: int, stage: str, index: int, prompt: RenderedPrompt, result: CallResult, state: _ImageState
    ) -> StoredCall:
        """The call (and its prompt, the first time this process sees it) in one transaction (style guide §7).

        Core inserts, not ORM objects: this runs for every call and was a measured
        share of the flow's client CPU (bench/README.md).
        """
        with self.sessions.begin() as session:
            if prompt.sha256 not in self._known_prompts:
                store_prompt(session, prompt)
            call_id = session.execute(
                insert(VLLMCall)
                .values(
                    run_id=self.run_id,
                    image_id=image_id,
                    stage=stage,
                    sample_index=index,
                    prompt_sha256=prompt.sha256,
                    request_params=result.request_params,
                    raw_text=result.raw_text,
                    parsed=result.parsed,
                    valid=result.valid,
                    error=result.error,
                    tokens_in=result.tokens_in,
                    tokens_out=result.tokens_out,
                    cost_usd=Decimal(str(round(result.cost_usd, 6))),
                    latency_s=result.latency_s,
                    attempts=result.attempts,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                )
                .returning(VLLMCall.id)
            ).scalar_one()
            if not state.marked_sampling:
                session.execute(
                    update(RunImage)
                    .where(RunImage.run_id == self.run_id, RunImage.image_id == image_id, RunImage.status == "pending")
                    .values(status="sampling")
                )
        self._known_prompts.add(prompt.sha256)  # set.add is atomic under the GIL; a race only repeats an upsert
        state.marked_sampling = True
        return StoredCall(call_id, stage, index, result.valid, result.parsed, result.error)

    def _persist_step(self, image_id: int, step: Step, state: _ImageState) -> None:
        if step.step in state.steps:
            return
        with self.sessions.begin() as session:
            session.execute(
                insert(UAMCStep)
                .values(
                    run_id=self.run_id,
                    image_id=image_id,
                    step=step.step,
                    valid_samples=step.valid_samples,
                    uncertainties={t.value: round(u, 6) for t, u in step.uncertainties.items()},
                    u_max=step.u_max,
                    p_acc=step.p_acc,
                    p=step.p,
                    decision=step.decision,
                )
                .on_conflict_do_nothing(index_elements=["run_id", "image_id", "step"])
            )
        state.steps.add(step.step)

    # -- calls -----------------------------------------------------------------------------

    def _call(
        self, image: Image, data: bytes, state: _ImageState, stage: str, prompt: RenderedPrompt, answer_model: type[BaseModel]
    ) -> tuple[StoredCall, bool]:
        """The next call of `stage` for this image: the stored one if the replay has it, else a new one."""
        db_stage = DB_STAGE[stage]
        index = state.next_index[db_stage]
        state.next_index[db_stage] = index + 1
        stored = state.calls.get((db_stage, index))
        if stored is not None:
            return stored, False
        temperature, max_tokens = self.client.config.stage_params(stage)
        try:
            result = self.client.complete(
                stage,
                prompt,
                image=data,
                answer_model=answer_model,
                temperature=temperature,
                seed=_sub_seed(self.config.seed, image.sha256, db_stage, index),
                max_tokens=max_tokens,
            )
        except TransientCallError as exc:
            raise ImageFailed(f"{db_stage} call {index}: {exc}") from exc
        except PermanentCallError as exc:
            self.budget.abort(f"endpoint refused a request: {exc}")
            raise ImageFailed(f"{db_stage} call {index}: {exc}") from exc
        self.budget.add(result)
        return self._persist_call(image.id, db_stage, index, prompt, result, state), True

    def _valid_answer(
        self, image: Image, data: bytes, state: _ImageState, stage: str, prompt: RenderedPrompt, answer_model: type[BaseModel], invalid: list[str]
    ) -> tuple[StoredCall, int]:
        """Calls until a valid answer; the image fails after `max_invalid` invalid answers of any stage."""
        new_calls = 0
        while True:
            call, made = self._call(image, data, state, stage, prompt, answer_model)
            new_calls += made
            if call.valid:
                return call, new_calls
            invalid.append(f"{call.stage}#{call.sample_index}: {call.error}")
            if len(invalid) >= self.config.uamc.max_invalid:
                raise ImageFailed(f"{len(invalid)} invalid answers (last: {invalid[-1]})")

    # -- the procedure ---------------------------------------------------------------------

    def annotate(self, image_id: int) -> ImageOutcome:
        """Annotate one image end to end; never raises for a problem of this image."""
        try:
            return self._annotate(image_id)
        except ImageFailed as exc:
            self._mark(image_id, "failed", str(exc))
            return ImageOutcome(image_id, "failed", reason=str(exc))

    def _annotate(self, image_id: int) -> ImageOutcome:
        image, known, human_ids, state = self._load(image_id)
        try:
            data = self.store.get_bytes(image.object_key)
            validate_image(data, name=image.object_key)
        except (StoreError, InvalidImage) as exc:  # a missing or broken object fails this image alone
            raise ImageFailed(f"cannot read image {image.object_key}: {exc}") from exc

        missing = known.missing_tasks()
        invalid: list[str] = []
        new_calls = 0
        samples: list[dict[str, Any]] = []
        last_step: Step | None = None
        if missing:
            prompt = prior_prompt(known, missing, use_prior=self.config.use_prior)
            answer_model = sample_answer_model(missing)
            uamc = self.config.uamc

            def draw() -> None:
                nonlocal new_calls
                call, made = self._valid_answer(image, data, state, SAMPLE_STAGE, prompt, answer_model, invalid)
                new_calls += made
                samples.append(call.parsed or {})

            for _ in range(initial_samples(uamc)):
                draw()
            if uamc.enabled:
                rng = image_rng(self.config.seed, self.run_name, image.sha256)
                step_number = 0
                while True:
                    last_step = decide(step_number, missing, samples, uamc, rng)
                    self._persist_step(image.id, last_step, state)
                    if last_step.decision != "sample":
                        break
                    draw()
                    step_number += 1

        stats = task_statistics(missing, samples) if samples else {}
        summary_call, made = self._valid_answer(
            image,
            data,
            state,
            SUMMARY_STAGE,
            summary_prompt(known, missing, samples, {Task(t): v for t, v in stats.items()}, use_prior=self.config.use_prior),
            summary_answer_model(missing),
            invalid,
        )
        new_calls += made
        summary = summary_call.parsed or {}
        generated = labels_from_answer(summary)
        final = FaceLabels.from_field_values({**generated.field_values(), **known.field_values()})
        description = str(summary.get("description", ""))

        template_id, question = choose_question(_sub_seed(self.config.seed, self.run_name, image.sha256, "question"))
        rewrite_call: StoredCall | None = None
        if self.config.rewrite_with_llm:
            rewrite_call, made = self._valid_answer(
                image, data, state, REWRITE_STAGE, rewrite_prompt(question, final, description), RewriteAnswer, invalid
            )
            new_calls += made
            answer = str((rewrite_call.parsed or {}).get("answer", ""))
        else:
            answer = deterministic_answer(final, description)

        if last_step is not None:
            uncertainty = last_step.uncertainties
        else:  # UAMC off: the spread of the sample(s) drawn, if there are two to compare
            uncertainty = normalised_uncertainties(missing, samples) if len(samples) > 1 else {}
        self._finish(
            image.id,
            final=final,
            human_ids=human_ids,
            summary_call_id=summary_call.id,
            uncertainty=uncertainty,
            samples_used=len(samples),
            instruction=(template_id, question, answer, description, rewrite_call.id if rewrite_call else None),
        )
        return ImageOutcome(image.id, "done", samples_used=len(samples), new_calls=new_calls)

    def _finish(
        self,
        image_id: int,
        *,
        final: FaceLabels,
        human_ids: dict[str, int],
        summary_call_id: int,
        uncertainty: dict[Task, float],
        samples_used: int,
        instruction: tuple[int, str, str, str, int | None],
    ) -> None:
        """Final annotations, the instruction and the image's status: one transaction, so all or nothing."""
        template_id, question, answer, description, rewrite_call_id = instruction
        with self.sessions.begin() as session:
            rows = [
                {
                    "run_id": self.run_id,
                    "image_id": image_id,
                    "field": name,
                    "provenance": "human" if name in human_ids else "generated",
                    "human_label_id": human_ids.get(name),
                    "summary_call_id": None if name in human_ids else summary_call_id,
                    "uncertainty": None if name in human_ids else uncertainty.get(task_of(name)),
                    "samples_used": None if name in human_ids else samples_used,
                    **label_columns(value),
                }
                for name, value in final.field_values().items()
            ]
            # One executemany of a statement compiled once (SQLAlchemy batches it into a multi-row INSERT):
            # 20 single-row ORM inserts per image were a measured hot spot.
            session.execute(
                insert(Annotation).on_conflict_do_nothing(index_elements=["run_id", "image_id", "field"]), rows
            )
            session.execute(
                insert(Instruction)
                .values(
                    run_id=self.run_id,
                    image_id=image_id,
                    template_id=template_id,
                    question=question,
                    answer=answer,
                    description=description,
                    rewrite_call_id=rewrite_call_id,
                )
                .on_conflict_do_nothing(index_elements=["run_id", "image_id"])
            )
            session.execute(
                update(RunImage)
                .where(RunImage.run_id == self.run_id, RunImage.image_id == image_id)
                .values(
                    status="done",
                    samples_used=samples_used,
                    failure_reason=None,
                    consistency_flags=consistency_flags(final),
                )
            )

    def _mark(self, image_id: int, status: str, reason: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(RunImage)
                .where(RunImage.run_id == self.run_id, RunImage.image_id == image_id)
                .values(status=status, failure_reason=reason)
            )


def spent(session: Session, run_id: int) -> tuple[int, float]:
    """(calls, dollars) a run has spent so far, from the database (the budget's starting point)."""
    calls, cost = session.execute(
        select(func.count(VLLMCall.id), func.coalesce(func.sum(VLLMCall.cost_usd), 0)).where(VLLMCall.run_id == run_id)
    ).one()
    return int(calls), float(cost)
