"""Prompt texts are snapshot-tested: any wording change shows up in review (STYLE.md §8)."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from pathlib import Path

import pytest

from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels, Task, task_of
from tasks import prompts

SNAPSHOTS = Path(__file__).parents[1] / "snapshots"
UPDATE = os.environ.get("SEKE_UPDATE_SNAPSHOTS") == "1"

HAPPY = FaceLabels(
    expression="happiness", valence=0.72, arousal=0.35, aus={au: au in ("AU6", "AU12") for au in ACTION_UNITS}
)
BP4D_LIKE = FaceLabels(aus={au: au == "AU4" for au in ACTION_UNITS[:12]})  # 12 of 17 AUs known


def _cases() -> dict[str, prompts.RenderedPrompt]:
    known = FaceLabels(expression="happiness", valence=0.71234, arousal=0.35)
    samples = [
        {"aus": {au: au in ("AU6", "AU12") for au in ACTION_UNITS}},
        {"aus": {au: au in ("AU6", "AU12", "AU25") for au in ACTION_UNITS}},
    ]
    stats = {Task.AU: {"uncertainty": 0.0588, "present_fraction": {"AU6": 1.0, "AU12": 1.0, "AU25": 0.5}}}
    return {
        "prior_au_given_expression_va": prompts.prior_prompt(known, [Task.AU]),
        "prior_expression_va_given_partial_aus": prompts.prior_prompt(BP4D_LIKE, [Task.EXPRESSION, Task.VA, Task.AU]),
        "prior_all_missing_no_prior": prompts.prior_prompt(FaceLabels(), list(Task), use_prior=False),
        "summary_au_given_expression_va": prompts.summary_prompt(known, [Task.AU], samples, stats),
        "rewrite": prompts.rewrite_prompt(
            prompts.QUESTION_TEMPLATES[0], HAPPY, "AU6 and AU12 form the happiness pattern; valence is high."
        ),
        "cached_system": prompts.system_prompt(use_prior=True),
        "cached_system_no_prior": prompts.system_prompt(use_prior=False),
        "cached_prior_au_given_expression_va": prompts.prior_prompt(known, [Task.AU], layout="cached"),
        "cached_summary_au_given_expression_va": prompts.summary_prompt(known, [Task.AU], samples, stats, layout="cached"),
        "cached_rewrite": prompts.rewrite_prompt(
            prompts.QUESTION_TEMPLATES[0], HAPPY, "AU6 and AU12 form the happiness pattern; valence is high.",
            layout="cached",
        ),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_prompt_snapshot(name: str) -> None:
    rendered = _cases()[name]
    assert rendered.sha256 == hashlib.sha256(rendered.text.encode()).hexdigest()
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        path.write_text(rendered.text, encoding="utf-8")
    if not path.exists():
        pytest.fail(f"no snapshot {path}; create it on purpose with SEKE_UPDATE_SNAPSHOTS=1 pytest tests/tasks/test_prompts.py")
    assert rendered.text == path.read_text(encoding="utf-8"), (
        f"the text of prompt {rendered.name} v{rendered.version} changed. If intended: bump its version in "
        f"tasks/prompts.py, then rewrite the snapshots with SEKE_UPDATE_SNAPSHOTS=1 pytest tests/tasks/test_prompts.py "
        "and review the diff."
    )


def _subsets() -> list[list[Task]]:
    return [list(c) for r in (1, 2, 3) for c in itertools.combinations(Task, r)]


@pytest.mark.parametrize("missing", _subsets(), ids=lambda m: "+".join(t.value for t in m))
@pytest.mark.parametrize("use_prior", [True, False])
def test_prior_prompt_asks_only_for_missing_and_is_machine_readable(missing: list[Task], use_prior: bool) -> None:
    known = FaceLabels.from_field_values({f: v for f, v in HAPPY.field_values().items() if task_of(f) not in missing})
    text = prompts.prior_prompt(known, missing, use_prior=use_prior).text
    assert prompts.prompt_stage(text) == prompts.SAMPLE_STAGE
    assert prompts.requested_tasks_in(text) == missing
    format_line = text.rstrip().splitlines()[-1]
    assert ('"expression"' in format_line) == (Task.EXPRESSION in missing)
    assert ('"valence"' in format_line) == (Task.VA in missing)
    assert ('"aus"' in format_line) == (Task.AU in missing)
    if use_prior:
        assert prompts.known_labels_in(text) == known
        assert "Happiness is marked by AU6" in text
    else:
        assert prompts.known_labels_in(text) is None
        assert "Happiness is marked" not in text and "cheek raiser" not in text


def test_prior_prompt_needs_a_missing_task() -> None:
    with pytest.raises(ValueError, match="at least one missing task"):
        prompts.prior_prompt(HAPPY, [])


def test_summary_prompt_carries_samples_and_statistics() -> None:
    samples = [{"expression": "fear"}, {"expression": "surprise"}]
    stats = {Task.EXPRESSION: {"mode": "fear", "uncertainty": 0.5714}}
    text = prompts.summary_prompt(FaceLabels(valence=-0.5, arousal=0.7), [Task.EXPRESSION], samples, stats).text
    assert prompts.prompt_stage(text) == prompts.SUMMARY_STAGE
    assert prompts.read_marked_json(text, prompts.SAMPLES_MARKER) == samples
    assert prompts.read_marked_json(text, prompts.STATS_MARKER) == {"expression": {"mode": "fear", "uncertainty": 0.571}}
    assert '"description"' in text.rstrip().splitlines()[-1]


def test_rewrite_prompt_and_stage() -> None:
    text = prompts.rewrite_prompt("How does this face feel?", HAPPY, "reasoning").text
    assert prompts.prompt_stage(text) == prompts.REWRITE_STAGE
    assert prompts.read_marked_json(text, prompts.QUESTION_MARKER) == "How does this face feel?"
    assert FaceLabels.model_validate(prompts.read_marked_json(text, prompts.FINAL_MARKER)) == HAPPY
    # Floats are rounded to 3 decimals so that prompts, and their hashes, do not depend on float noise.
    rounded = prompts.prior_prompt(FaceLabels(valence=0.71234, arousal=-0.1), [Task.AU]).text
    assert prompts.known_labels_in(rounded) == FaceLabels(valence=0.712, arousal=-0.1)
    assert prompts.prompt_stage("Describe this face.") is None


def test_eleven_question_templates_without_answers() -> None:
    assert len(prompts.QUESTION_TEMPLATES) == 11
    assert len(set(prompts.QUESTION_TEMPLATES)) == 11
    for question in prompts.QUESTION_TEMPLATES:
        lowered = question.lower()
        assert not [e for e in EXPRESSIONS if e in lowered], question
        assert not re.search(r"\bau\s*\d", lowered), question
        # Each asks for all three descriptions: the discrete emotion, valence/arousal and the AUs.
        assert "expression" in lowered or "emotion" in lowered, question
        assert "valence" in lowered and "arousal" in lowered and "action units" in lowered, question


def test_choose_question_is_seeded_and_covers_all_templates() -> None:
    assert prompts.choose_question(42) == prompts.choose_question(42)
    picks = {prompts.choose_question(seed)[0] for seed in range(300)}
    assert picks == set(range(11))
    index, text = prompts.choose_question(7)
    assert prompts.QUESTION_TEMPLATES[index] == text


def test_deterministic_answer_has_all_three_descriptions_and_the_reasoning() -> None:
    answer = prompts.deterministic_answer(HAPPY, "AU6 with AU12 is the happiness pattern.")
    assert "happiness" in answer
    assert "0.72" in answer and "0.35" in answer
    assert "AU6 (cheek raiser)" in answer and "AU12 (lip corner puller)" in answer
    assert answer.endswith("AU6 with AU12 is the happiness pattern.")


def test_prompt_hash_changes_with_content() -> None:
    a = prompts.prior_prompt(FaceLabels(expression="fear"), [Task.AU])
    b = prompts.prior_prompt(FaceLabels(expression="anger"), [Task.AU])
    assert (a.name, a.version) == (b.name, b.version) and a.sha256 != b.sha256


@pytest.mark.parametrize("use_prior", [True, False])
def test_the_cached_layout_asks_the_same_with_the_same_knowledge_in_one_system_text(use_prior: bool) -> None:
    known = FaceLabels(expression="happiness", valence=0.7, arousal=0.35)
    paper = prompts.prior_prompt(known, [Task.AU], use_prior=use_prior)
    cached = prompts.prior_prompt(known, [Task.AU], use_prior=use_prior, layout="cached")
    assert cached.system == prompts.system_prompt(use_prior=use_prior) and paper.system is None
    for read in (prompts.prompt_stage, prompts.requested_tasks_in, prompts.known_labels_in):
        assert read(cached.text) == read(paper.text)  # the simulator and audits read the call text alone
    assert paper.text.rstrip().splitlines()[-2:] == cached.text.rstrip().splitlines()[-2:]  # the same answer format
    summary = prompts.summary_prompt(known, [Task.AU], [], {}, use_prior=use_prior, layout="cached")
    rewrite = prompts.rewrite_prompt("Q?", HAPPY, "d", use_prior=use_prior, layout="cached")
    assert summary.system is rewrite.system is cached.system  # one system text for every stage of a run
    if use_prior:  # the paper layout's knowledge, word for word, moved to the system text
        knowledge = paper.text[paper.text.index("Emotion knowledge:") : paper.text.index("Human annotators")]
        assert knowledge in cached.system.text and "Happiness is marked" not in cached.text
    else:
        assert "cheek raiser" not in cached.system.text and "Happiness is marked" not in cached.system.text
