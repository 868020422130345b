"""The SEKE procedure with a fake `call`: no database, no endpoint, no Prefect.

Checks Algorithm 1's stopping law (start with 2 valid samples; while S_n < N,
p_acc = ½ + ½·Ũ_max and one more sample when p < p_acc), that invalid answers
are numbered and counted but never reach UAMC, and what the summary and
rewrite prompts receive.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels, Task
from tasks import prompts
from tasks.prompts import REWRITE_STAGE, SAMPLE_STAGE, SUMMARY_STAGE
from tasks.seke import AnnotateConfig, Answer, CallRequest, ImageFailed, SekeImage, run_seke
from tasks.uamc import UAMCConfig

IMAGE = SekeImage(sha256="ab" * 32, question_seed=7)
KNOWN_VA = FaceLabels(valence=0.4, arousal=-0.2)  # expression and AUs missing


def sample_answer(expression: str, aus_on: int = 0) -> dict:
    return {"expression": expression, "aus": {au: i < aus_on for i, au in enumerate(ACTION_UNITS)}}


class FakeModel:
    """Answers by stage from scripted sample answers; records every request it gets."""

    def __init__(self, samples: list[dict | None]) -> None:
        self._samples = iter(samples)  # None: an invalid answer
        self.requests: list[CallRequest] = []

    async def call(self, request: CallRequest) -> Answer:
        self.requests.append(request)
        if request.stage == SAMPLE_STAGE:
            parsed = next(self._samples)
            return Answer(False, None, "no JSON object found") if parsed is None else Answer(True, parsed, None)
        if request.stage == SUMMARY_STAGE:
            return Answer(True, {**sample_answer("happiness", aus_on=2), "description": "AU1 and AU2 raise the brows"}, None)
        return Answer(True, {"answer": "A happy face."}, None)

    def stages(self) -> list[tuple[str, int]]:
        return [(r.stage, r.index) for r in self.requests]


def run(model: FakeModel, config: AnnotateConfig, known: FaceLabels = KNOWN_VA, seed: int = 0):
    return asyncio.run(run_seke(IMAGE, known, config, model.call, np.random.default_rng(seed)))


def expected_sample_count(p_values: np.random.Generator, p_acc: float, start: int, n_max: int) -> int:
    """Algorithm 1's law, written out independently of tasks.uamc."""
    count = start
    while count < n_max:
        if p_values.random() < p_acc:
            count += 1
        else:
            break
    return count


@pytest.mark.parametrize("seed", range(12))
def test_agreeing_samples_follow_the_stopping_law_with_p_acc_one_half(seed: int) -> None:
    model = FakeModel([sample_answer("happiness")] * 5)
    result = run(model, AnnotateConfig(), seed=seed)
    expected = expected_sample_count(np.random.default_rng(seed), 0.5, start=2, n_max=5)
    assert len(result.sampling.samples) == expected
    steps = result.sampling.steps
    assert [s.valid_samples for s in steps] == list(range(2, expected + 1))
    for step in steps:
        assert step.u_max == 0.0
        if step.decision == "max-reached":
            assert step.valid_samples == 5 and step.p is None
        else:
            assert step.p_acc == 0.5 and step.decision == ("sample" if step.p < step.p_acc else "stop")
    assert steps[-1].decision in ("stop", "max-reached")


def test_maximal_disagreement_samples_up_to_n() -> None:
    # Ũ_max = 1 at every step (AUs split as evenly as S_n allows, attainable normaliser) → p_acc = 1: always one more.
    model = FakeModel([sample_answer(e, aus_on=17 * (i % 2)) for i, e in enumerate(EXPRESSIONS)])
    result = run(model, AnnotateConfig(uamc=UAMCConfig(max_samples=4, normaliser="attainable")))
    assert len(result.sampling.samples) == 4
    assert [s.decision for s in result.sampling.steps] == ["sample", "sample", "max-reached"]
    assert all(s.u_max == 1.0 and s.p_acc == 1.0 for s in result.sampling.steps[:-1])


def test_uamc_off_draws_one_sample() -> None:
    model = FakeModel([sample_answer("sadness")])
    result = run(model, AnnotateConfig(uamc=UAMCConfig(enabled=False)))
    assert len(result.sampling.samples) == 1 and result.sampling.steps == ()
    assert model.stages() == [(SAMPLE_STAGE, 0), (SUMMARY_STAGE, 0), (REWRITE_STAGE, 0)]


def test_summary_gets_the_valid_samples_and_rewrite_the_final_labels() -> None:
    valid = [sample_answer("happiness", aus_on=1), sample_answer("surprise", aus_on=3)]
    model = FakeModel([valid[0], None, valid[1], *[sample_answer("happiness")] * 3])
    result = run(model, AnnotateConfig(uamc=UAMCConfig(max_samples=2)))
    # The invalid answer is call #1 of the sample stage; it is never a sample.
    assert model.stages() == [(SAMPLE_STAGE, 0), (SAMPLE_STAGE, 1), (SAMPLE_STAGE, 2), (SUMMARY_STAGE, 0), (REWRITE_STAGE, 0)]
    assert list(result.sampling.samples) == valid
    summary_request, rewrite_request = model.requests[3], model.requests[4]
    summary_text = summary_request.prompt.text
    assert prompts.read_marked_json(summary_text, prompts.SAMPLES_MARKER) == valid
    stats = prompts.read_marked_json(summary_text, prompts.STATS_MARKER)
    assert set(stats) == {Task.EXPRESSION.value, Task.AU.value}
    assert stats["expression"]["distribution"] == {"happiness": 0.5, "surprise": 0.5}
    assert prompts.known_labels_in(summary_text) == KNOWN_VA
    assert prompts.requested_tasks_in(summary_text) == [Task.EXPRESSION, Task.AU]
    # Final labels: the human VA kept, the summary's expression and AUs; the rewrite sees them and the reasoning.
    final = result.summary.final
    assert (final.valence, final.arousal, final.expression) == (0.4, -0.2, "happiness")
    assert [au for au, on in final.aus.items() if on] == ["AU1", "AU2"]
    rewrite_text = rewrite_request.prompt.text
    assert FaceLabels.model_validate(prompts.read_marked_json(rewrite_text, prompts.FINAL_MARKER)) == final
    assert prompts.read_marked_json(rewrite_text, prompts.DESCRIPTION_MARKER) == "AU1 and AU2 raise the brows"
    assert prompts.read_marked_json(rewrite_text, prompts.QUESTION_MARKER) == result.rewrite.question
    assert result.rewrite.answer == "A happy face." and result.rewrite.call == (REWRITE_STAGE, 0)
    assert result.summary.call == (SUMMARY_STAGE, 0)


def test_every_call_has_its_own_seed_and_replays_identically() -> None:
    answers = [sample_answer("fear")] * 5
    first, second = FakeModel(answers), FakeModel(answers)
    run(first, AnnotateConfig(seed=3), seed=1)
    run(second, AnnotateConfig(seed=3), seed=1)
    assert [(r.stage, r.index, r.seed, r.prompt.sha256) for r in first.requests] == [
        (r.stage, r.index, r.seed, r.prompt.sha256) for r in second.requests
    ]
    seeds = [r.seed for r in first.requests]
    assert len(set(seeds)) == len(seeds)


def test_too_many_invalid_answers_fail_the_image_with_the_steps_so_far() -> None:
    model = FakeModel([sample_answer("anger"), sample_answer("anger"), None, None, None])
    config = AnnotateConfig(uamc=UAMCConfig(max_invalid=3))
    # Find a decision stream whose first p asks for a third sample (p < ½ with agreeing samples).
    seed = next(s for s in itertools.count() if np.random.default_rng(s).random() < 0.5)
    with pytest.raises(ImageFailed, match="3 invalid answers") as failure:
        run(model, config, seed=seed)
    assert [s.decision for s in failure.value.steps] == ["sample"]


def test_all_labels_known_skips_sampling_and_assembles_without_rewrite() -> None:
    known = FaceLabels.from_field_values({"expression": "neutral", "valence": 0.0, "arousal": 0.0, **{au: False for au in ACTION_UNITS}})
    model = FakeModel([])
    result = run(model, AnnotateConfig(rewrite_with_llm=False), known=known)
    assert model.stages() == [(SUMMARY_STAGE, 0)]
    assert result.summary.final == known and result.rewrite.call is None and result.rewrite.answer
