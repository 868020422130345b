"""The SEKE procedure for one image (paper §3, Algorithm 1) as plain typed functions.

    prior → UAMC sampling → summarise → rewrite, composed by `run_seke`.

Nothing here touches a database, an endpoint or Prefect: every model call goes
through the `call` argument, an async function that answers a `CallRequest`.
The annotate engine (tasks/annotate.py) supplies one that replays a stored
answer when the run has it and otherwise asks the endpoint and persists the
answer; a test supplies a fake one. Each request carries its stage and its
index within the stage (invalid answers included), so the same procedure over
the same stored answers asks for exactly the same calls: resume is replay.

Async because the engine drives hundreds of images at once on one event loop;
a fake `call` that never awaits anything runs the whole procedure in
microseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from models.answers import RewriteAnswer, labels_from_answer, sample_answer_model, summary_answer_model
from models.labels import FaceLabels, Task
from models.vocab import Decision, Stage
from tasks.config import AnnotateConfig
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
from tasks.uamc import Sample, Step, UAMCConfig, decide, initial_samples, normalised_uncertainties, task_statistics


def sub_seed(*parts: object) -> int:
    """A 32-bit seed derived from `parts` (the same in every process and on every resume)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


# --- what flows through `call` -----------------------------------------------------------------


@dataclass(frozen=True)
class CallRequest:
    """One model call the procedure needs: the `index`-th call of `stage` for this image."""

    stage: Stage
    index: int
    prompt: RenderedPrompt
    answer_model: type[BaseModel]
    seed: int


@dataclass(frozen=True)
class Answer:
    """What the procedure needs of an answer, stored or new: valid with its parsed object, or why not."""

    valid: bool
    parsed: dict[str, Any] | None
    error: str | None


Call = Callable[[CallRequest], Awaitable[Answer]]

#: A call by its place in the image's procedure, (stage, index): unique per (run, image) in the database.
CallKey = tuple[Stage, int]


class ImageFailed(Exception):
    """Ends one image with a reason (the run goes on); `steps` are the UAMC decisions taken before."""

    def __init__(self, reason: str, steps: tuple[Step, ...] = ()) -> None:
        super().__init__(reason)
        self.steps = steps


@dataclass(frozen=True)
class SekeImage:
    """What the procedure needs to know of the image itself: its content hash (seeds each call) and
    the seed that picks the rewrite's question template."""

    sha256: str
    question_seed: int


# --- the stages --------------------------------------------------------------------------------


class Caller:
    """Numbers the calls of one image per stage and asks until an answer is valid.

    The image fails once `max_invalid` answers of any stage were invalid (stored ones included).
    """

    def __init__(self, call: Call, image: SekeImage, config: AnnotateConfig) -> None:
        self._call = call
        self._image = image
        self._seed = config.seed
        self._max_invalid = config.uamc.max_invalid
        self._next_index = {SAMPLE_STAGE: 0, SUMMARY_STAGE: 0, REWRITE_STAGE: 0}
        self.invalid: list[str] = []
        self.steps: list[Step] = []  # UAMC decisions so far, for an ImageFailed raised mid-way

    async def valid_answer(self, stage: Stage, prompt: RenderedPrompt, answer_model: type[BaseModel]) -> tuple[dict[str, Any], CallKey]:
        while True:
            index = self._next_index[stage]
            self._next_index[stage] = index + 1
            seed = sub_seed(self._seed, self._image.sha256, stage, index)
            try:
                answer = await self._call(CallRequest(stage, index, prompt, answer_model, seed))
            except ImageFailed as exc:  # the endpoint gave up: keep the decisions taken so far
                raise ImageFailed(str(exc), tuple(self.steps)) from exc
            if answer.valid:
                return answer.parsed or {}, (stage, index)
            self.invalid.append(f"{stage}#{index}: {answer.error}")
            if len(self.invalid) >= self._max_invalid:
                raise ImageFailed(f"{len(self.invalid)} invalid answers (last: {self.invalid[-1]})", tuple(self.steps))


def prior(known: FaceLabels, missing: list[Task], config: AnnotateConfig) -> tuple[RenderedPrompt, type[BaseModel]]:
    """The prior-knowledge sampling prompt (§3.1) and the answer shape it asks for."""
    return prior_prompt(known, missing, use_prior=config.use_prior, layout=config.prompt_layout), sample_answer_model(missing)


@dataclass(frozen=True)
class Sampling:
    samples: tuple[Sample, ...]
    steps: tuple[Step, ...]  # empty with UAMC off
    uncertainty: dict[Task, float]  # at the last step (UAMC off: the spread of the samples, if two or more)


async def sample_until_certain(
    missing: list[Task], prompt: RenderedPrompt, answer_model: type[BaseModel], uamc: UAMCConfig, caller: Caller, rng: np.random.Generator
) -> Sampling:
    """Algorithm 1, lines 2-13: `start_samples` valid samples, then one more while p < p_acc, up to N."""
    samples: list[Sample] = []
    for _ in range(initial_samples(uamc)):
        samples.append((await caller.valid_answer(SAMPLE_STAGE, prompt, answer_model))[0])
    if not uamc.enabled:
        spread = normalised_uncertainties(missing, samples) if len(samples) > 1 else {}
        return Sampling(tuple(samples), (), spread)
    while True:
        step = decide(len(caller.steps), missing, samples, uamc, rng)
        caller.steps.append(step)
        if step.decision != Decision.SAMPLE:
            return Sampling(tuple(samples), tuple(caller.steps), step.uncertainties)
        samples.append((await caller.valid_answer(SAMPLE_STAGE, prompt, answer_model))[0])


@dataclass(frozen=True)
class Summary:
    final: FaceLabels  # human labels where known, the summary's elsewhere
    description: str
    call: CallKey


async def summarise(
    known: FaceLabels, missing: list[Task], samples: tuple[Sample, ...], config: AnnotateConfig, caller: Caller
) -> Summary:
    """Self-verification (§3.2, Algorithm 1 line 15): prior + samples + their statistics → final labels."""
    stats = task_statistics(missing, samples, config.uamc.normaliser) if samples else {}
    prompt = summary_prompt(
        known, missing, samples, {Task(t): v for t, v in stats.items()}, use_prior=config.use_prior, layout=config.prompt_layout
    )
    answer, key = await caller.valid_answer(SUMMARY_STAGE, prompt, summary_answer_model(missing))
    generated = labels_from_answer(answer)
    final = FaceLabels.from_field_values({**generated.field_values(), **known.field_values()})
    return Summary(final, str(answer.get("description", "")), key)


@dataclass(frozen=True)
class Rewrite:
    template_id: int
    question: str
    answer: str
    call: CallKey | None  # None when assembled without the LLM


async def rewrite(summary: Summary, question_seed: int, config: AnnotateConfig, caller: Caller) -> Rewrite:
    """The instruction's answer to one of the question templates (§3.1), by the LLM or assembled."""
    template_id, question = choose_question(question_seed)
    if not config.rewrite_with_llm:
        return Rewrite(template_id, question, deterministic_answer(summary.final, summary.description), None)
    prompt = rewrite_prompt(question, summary.final, summary.description, use_prior=config.use_prior, layout=config.prompt_layout)
    answer, key = await caller.valid_answer(REWRITE_STAGE, prompt, RewriteAnswer)
    return Rewrite(template_id, question, str(answer.get("answer", "")), key)


# --- the whole procedure -------------------------------------------------------------------------


@dataclass(frozen=True)
class SekeResult:
    missing: tuple[Task, ...]
    sampling: Sampling
    summary: Summary
    rewrite: Rewrite


async def run_seke(image: SekeImage, known: FaceLabels, config: AnnotateConfig, call: Call, rng: np.random.Generator) -> SekeResult:
    """SEKE for one image: raises ImageFailed after too many invalid answers (or when `call` does)."""
    caller = Caller(call, image, config)
    missing = known.missing_tasks()
    if missing:
        prompt, answer_model = prior(known, missing, config)
        sampling = await sample_until_certain(missing, prompt, answer_model, config.uamc, caller, rng)
    else:  # every description is known: nothing to sample, the summary still writes the reasoning
        sampling = Sampling((), (), {})
    summary = await summarise(known, missing, sampling.samples, config, caller)
    return SekeResult(tuple(missing), sampling, summary, await rewrite(summary, image.question_seed, config, caller))
