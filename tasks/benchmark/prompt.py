"""The benchmark prompts: the FEAB question, and the answer-extraction prompt of `parse_with_llm`.

The question names the 8 classes and the 17 AUs (with FACS names, so a model
that does not know the codes can still answer) but gives no emotion
knowledge: the benchmark measures the model, not the prompt. JSON is asked
for; prose is tolerated by `tasks.benchmark.parse`.

Both follow tasks/prompts.py: a RenderedPrompt (name, version, text, sha256)
whose first line names the prompt, so stored calls and the simulator can tell
which prompt was sent (the simulator answers it as a "foreign" prompt, with a
full annotation). Bump the version whenever the wording changes.
"""

from __future__ import annotations

import hashlib

from models.knowledge import AU_DESCRIPTIONS
from models.labels import ACTION_UNITS, EXPRESSIONS
from tasks.prompts import PROMPT_ID_MARKER, RenderedPrompt

BENCHMARK_TEMPLATE = ("feab-benchmark", "1")
ANSWER_EXTRACTION_TEMPLATE = ("feab-answer-extraction", "1")


def _rendered(template: tuple[str, str], body: str) -> RenderedPrompt:
    name, version = template
    text = f"{PROMPT_ID_MARKER}{name} v{version}\n{body}\n"
    return RenderedPrompt(name, version, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


def benchmark_prompt() -> RenderedPrompt:
    """The one FEAB question: expression, valence/arousal and AU occurrence, as JSON."""
    au_lines = "\n".join(f"- {au}: {AU_DESCRIPTIONS[au]}" for au in ACTION_UNITS)
    return _rendered(
        BENCHMARK_TEMPLATE,
        f"""Analyse the facial emotion of the person in this image and give three descriptions.

1. Expression: exactly one of {", ".join(EXPRESSIONS)}.
2. Valence (unpleasant -1 to pleasant 1) and arousal (calm -1 to excited 1), each a number in [-1, 1].
3. Action units: which of these 17 facial action units (FACS) are present.
{au_lines}

Answer with one JSON object and nothing else, in this form:
{{"expression": "<one of the classes>", "valence": <number>, "arousal": <number>, "action_units": ["AU<n>", ...]}}
List only the action units that are present; an empty list means none is present.""",
    )


def answer_extraction_prompt(answer: str) -> RenderedPrompt:
    """SEKE paper §4.2 / Appendix C: an LLM rewrites a model's answer into one fixed JSON template.

    It must copy, not judge: anything the answer does not state stays null.
    """
    return _rendered(
        ANSWER_EXTRACTION_TEMPLATE,
        f"""Below is a model's answer about the facial emotion in an image. Rewrite what it states into one JSON object:
{{"expression": <one of {", ".join(EXPRESSIONS)}, or null>, "valence": <number in [-1, 1] or null>, \
"arousal": <number in [-1, 1] or null>, "action_units": <list of the present AUs from {", ".join(ACTION_UNITS)}, or null>}}
Copy only what the answer states. Map synonyms to the class names (e.g. "happy" -> "happiness") and FACS names \
to AU codes (e.g. "cheek raiser" -> "AU6"). Use null for anything the answer does not state; do not infer it from \
other descriptions. Reply with the JSON object only.

Answer:
{answer}""",
    )
