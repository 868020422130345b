"""Benchmark prompt snapshot and answer parsing on messy, real-looking model outputs."""

from __future__ import annotations

import json
import random

import pytest

from models.labels import ACTION_UNITS
from tasks.benchmark.parse import ParsedAnswer, parse_answer, parse_with_llm
from tasks.benchmark.prompt import answer_extraction_prompt, benchmark_prompt

ALL = frozenset(ACTION_UNITS)

# (answer, method, expression, valence, arousal, AUs present, AUs stated absent: "rest" = all others)
CASES = [
    pytest.param(
        '```json\n{"expression": "happiness", "valence": 0.7, "arousal": 0.4, "action_units": ["AU6", "AU12", "AU25"]}\n```',
        "json", "happiness", 0.7, 0.4, {"AU6", "AU12", "AU25"}, "rest", id="fenced-json",
    ),
    pytest.param(
        'Sure! Here is my analysis:\n{"expression": "Happy", "valence": "0.6", "arousal": 0.3, '
        '"action_units": ["AU6 (cheek raiser)", "lip corner puller"]}\nHope this helps.',
        "json", "happiness", 0.6, 0.3, {"AU6", "AU12"}, "rest", id="json-in-prose-synonyms-facs-names",
    ),
    pytest.param(
        '{"expression": "sadness", "valence": -0.5, "arousal": -0.2, "action_units": ["AU1", "AU4", "AU1',
        "json", "sadness", -0.5, -0.2, {"AU1", "AU4"}, set(), id="truncated-in-au-list-leaves-rest-unknown",
    ),
    pytest.param(
        '{"expression": "anger", "valence": -0.6, "arousal": 0.65',
        "json", "anger", -0.6, None, set(), set(), id="truncated-number-dropped",
    ),
    pytest.param(
        "{'expression': 'fear', 'valence': -0.4, 'arousal': 0.7, "
        "'action_units': {'AU1': True, 'AU2': 1, 'AU4': 'present', 'AU12': False}}",
        "json", "fear", -0.4, 0.7, {"AU1", "AU2", "AU4"}, "rest", id="python-dict-au-map",
    ),
    pytest.param(
        '{"expression": "surprise", "valence": 0.1, "arousal": 0.8, "action_units": ["AU1", "AU2", "AU26",],}',
        "json", "surprise", 0.1, 0.8, {"AU1", "AU2", "AU26"}, "rest", id="trailing-commas",
    ),
    pytest.param(
        'Result: {"emotion": "fear", "va": [-0.5, 0.8], "aus": "AU1, AU2, AU4, AU5, AU20"}',
        "json", "fear", -0.5, 0.8, {"AU1", "AU2", "AU4", "AU5", "AU20"}, "rest", id="alt-keys-va-pair-au-string",
    ),
    pytest.param(
        '{"answer": {"expression": "sadness", "valence": -0.4, "arousal": -0.3, "action_units": []}}',
        "json", "sadness", -0.4, -0.3, set(), "rest", id="nested-json-empty-au-list",
    ),
    pytest.param(
        '{"expression": "disgust", "action_units": ["AU9", "AU10"]}\nValence is about -0.7 and arousal 0.3.',
        "json", "disgust", -0.7, 0.3, {"AU9", "AU10"}, "rest", id="json-plus-prose-fills-va",
    ),
    pytest.param(
        "The person appears surprised. Valence: 0.2, arousal: 0.8. Active AUs: AU1, AU2, AU5 and AU26.",
        "text", "surprise", 0.2, 0.8, {"AU1", "AU2", "AU5", "AU26"}, "rest", id="prose-au-list",
    ),
    pytest.param(
        "This face is not happy; it looks sad. The valence is around \u22120.6 and the arousal of -0.3. "
        "I see AU 1 and AU 4, plus AU15 (lip corner depressor). There is no AU12.",
        "text", "sadness", -0.6, -0.3, {"AU1", "AU4", "AU15"}, "rest", id="negation-unicode-minus-no-au",
    ),
    pytest.param(
        "Expression: neutral\nV=0.05, A=-0.1\nNo action units are active.",
        "text", "neutral", 0.05, -0.1, set(), "rest", id="v-equals-and-no-action-units",
    ),
    pytest.param(
        "Valence and arousal: (0.6, 0.3). The expression is happiness with AUs 6, 12 and 25 present. AU4 is absent.",
        "text", "happiness", 0.6, 0.3, {"AU6", "AU12", "AU25"}, "rest", id="va-pair-aus-list",
    ),
    pytest.param(
        "The emotion is disgust. Action units 9 and 10 are visible, AU15 too; AU45 blinking. Valence -0.7 and arousal 0.4.",
        "text", "disgust", -0.7, 0.4, {"AU9", "AU10", "AU15"}, "rest", id="action-units-words-unknown-au",
    ),
    pytest.param(
        "**Expression:** Anger\n**Valence:** -0.65 (on a scale from -1 to 1)\n**Arousal:** 0.7\n"
        "**AUs:** AU4 (brow lowerer), AU7 (lid tightener), AU23",
        "text", "anger", -0.65, 0.7, {"AU4", "AU7", "AU23"}, "rest", id="markdown-with-scale-statement",
    ),
    pytest.param(
        "The cheek raiser and lip corner puller are engaged and the lips parted, showing joy. "
        "Valence is positive (about 0.8), arousal moderate at 0.4.",
        "text", "happiness", 0.8, 0.4, {"AU6", "AU12", "AU25"}, "rest", id="facs-names-only",
    ),
    pytest.param(
        "Expression: contempt (unilateral smirk). VA = (-0.3, 0.1). AU12: 1, AU14: 1, AU4: 0.",
        "text", "contempt", -0.3, 0.1, {"AU12", "AU14"}, "rest", id="au-status-values",
    ),
    pytest.param(
        "Neither happy nor sad, the face is calm and neutral. valence 0.0, arousal -0.2. "
        "AU4: absent, AU6: absent, AU25: present",
        "text", "neutral", 0.0, -0.2, {"AU25"}, "rest", id="neither-nor-and-au-absent-words",
    ),
    pytest.param(
        "Arousal and valence are 0.4 and -0.2 respectively; the man seems angry, not fearful. "
        "AU4 and AU7 are present but not AU5.",
        "text", "anger", -0.2, 0.4, {"AU4", "AU7"}, "rest", id="reversed-va-pair-but-not",
    ),
    pytest.param(
        "Expression: surprise. Valence: 1.5. Arousal: 80%.",
        "text", "surprise", None, None, set(), set(), id="out-of-range-va-ignored",
    ),
    pytest.param(
        "I'm sorry, but I can't help with identifying people in images.",
        "none", None, None, None, set(), set(), id="refusal",
    ),
]


@pytest.mark.parametrize(("text", "method", "expression", "valence", "arousal", "present", "absent"), CASES)
def test_parse_answer(
    text: str, method: str, expression: str | None, valence: float | None, arousal: float | None,
    present: set[str], absent: set[str] | str,
) -> None:
    parsed = parse_answer(text)
    assert parsed.method == method, parsed.problems
    labels = parsed.labels
    assert (labels.expression, labels.valence, labels.arousal) == (expression, valence, arousal), parsed.problems
    assert {au for au, on in labels.aus.items() if on} == present
    expected_absent = ALL - present if absent == "rest" else absent
    assert {au for au, on in labels.aus.items() if not on} == expected_absent


def test_problems_say_what_was_guessed_or_dropped() -> None:
    assert any("AU45" in p for p in parse_answer("AU6, AU12 and AU45 are active.").problems)
    assert any("cut off" in p for p in parse_answer('{"expression": "anger", "valence": -0.6, "ar').problems)
    assert any("1.5" in p for p in parse_answer("Valence: 1.5, arousal: 0.2").problems)
    assert any("prose" in p for p in parse_answer('{"expression": "fear"} Valence -0.5, arousal 0.7.').problems)
    assert parse_answer("nothing to see").problems == ["no expression, valence/arousal or action units could be read"]
    ambiguous = parse_answer("The expression could be fear or surprise.")
    assert ambiguous.labels.expression == "fear" and ambiguous.problems


def test_parser_never_raises_on_cut_or_corrupted_output() -> None:
    rng = random.Random(0)
    for case in CASES:
        text = case.values[0]
        variants = [text[:cut] for cut in range(0, len(text), 3)]
        for _ in range(20):
            chars = list(text)
            for i in rng.sample(range(len(chars)), k=min(5, len(chars))):
                chars[i] = rng.choice("{}[]\",:0.5- AUnot'")
            variants.append("".join(chars))
        for variant in variants:
            assert isinstance(parse_answer(variant), ParsedAnswer)


def test_parse_with_llm_sends_fixed_prompt_and_reads_reply() -> None:
    sent: list[str] = []

    def complete(prompt: str) -> str:
        sent.append(prompt)
        return '```json\n{"expression": "happiness", "valence": 0.5, "arousal": null, "action_units": ["AU6"]}\n```'

    parsed = parse_with_llm("She is beaming, clearly joyful; cheeks raised.", complete)
    assert sent == [answer_extraction_prompt("She is beaming, clearly joyful; cheeks raised.").text]
    assert parsed.method == "llm"
    assert (parsed.labels.expression, parsed.labels.valence, parsed.labels.arousal) == ("happiness", 0.5, None)
    assert parsed.labels.aus["AU6"] and not parsed.labels.aus["AU12"]

    failed = parse_with_llm("whatever", lambda _: "I could not find anything.")
    assert failed == ParsedAnswer(labels=failed.labels, method="none", problems=failed.problems)
    assert failed.labels.field_values() == {}


def test_prompt_snapshots() -> None:
    """Prompt texts change only on purpose: bump the version in tasks/benchmark/prompt.py, then these hashes."""
    question = benchmark_prompt()
    assert question.text.startswith("Prompt: feab-benchmark v1\nAnalyse the facial emotion of the person")
    assert "exactly one of neutral, happiness, sadness, surprise, fear, disgust, anger, contempt." in question.text
    assert all(f"- {au}: " in question.text for au in ACTION_UNITS) and "- AU12: lip corner puller" in question.text
    assert question.sha256 == "c78cefc3834fa47d4bc35f1bdbeaa76b94e8398450fb2d5955916326d48e61eb", "benchmark prompt text changed"
    extraction = answer_extraction_prompt("She looks happy.")
    assert extraction.text.startswith("Prompt: feab-answer-extraction v1\n")
    assert extraction.text.endswith("Answer:\nShe looks happy.\n")
    assert extraction.sha256 == "c4dee535342d79be9d0a4b00ffb67bb36e48ca971a26839fed6fdfdef693d3f6", "answer-extraction prompt text changed"


def test_benchmark_prompt_example_is_what_the_parser_reads() -> None:
    example = {"expression": "anger", "valence": -0.5, "arousal": 0.6, "action_units": ["AU4", "AU7", "AU23"]}
    assert '"action_units": ["AU<n>", ...]' in benchmark_prompt().text
    parsed = parse_answer(json.dumps(example))
    assert parsed.method == "json" and not parsed.problems and parsed.labels.missing_tasks() == []
