"""The SEKE prompts (paper §3.1–3.2), versioned and hashed.

Three stages, each a template with a name and a version:

- prior-sample (`seke-prior`): the prior-knowledge prompt. It embeds the human
  labels the image has and the emotion knowledge of models/knowledge.py, and
  asks only for the missing descriptions (paper Fig. 2: "use the annotated
  expression and valence-arousal to predict the activated AUs").
- summary (`seke-summary`): the self-verification prompt. Prior knowledge +
  every valid UAMC sample + per-task mean/mode and uncertainty → final labels
  and a description that reasons across the three descriptions.
- rewrite (`seke-rewrite`): turns final labels + description into the answer
  to one of 11 question templates; the question carries no answer.

Two layouts (`AnnotateConfig.prompt_layout`):

- paper: one user message per call, text then image, as the paper shows it;
  every call sends role, emotion knowledge and instructions again.
- cached: what never changes first, so a provider's automatic prefix cache
  (vLLM prefix caching, which hashes image content, in 16-token blocks; OpenAI:
  prefixes of 1024+ tokens, in 128-token steps) can serve it: a system message
  (`seke-system`: role, the three kinds of request, the paper layout's emotion
  knowledge word for word, the output keys), then the image, then the
  per-image and per-call text (`seke-*-cached`: known labels, samples,
  question, requested keys). The system text is shared by every call of a run
  and the image by an image's calls. The system prompt is itself a stored,
  hashed prompt; each call's request record names it.

  SEKE's prompts are short: system text and image come to ~650 tokens, under
  OpenAI's 1024-token minimum, so on OpenAI the cache does not engage for
  them (bench/cost.py measures it); padding the system text past 1024 tokens
  would cost more at a 50 % cached discount than it saves.

Every rendered text is hashed (sha256) so each stored call names the exact
prompt it used. Bump a template's version whenever its wording changes; the
snapshot tests in tests/snapshots/ make such changes visible in review.

Machine-readable lines (`<marker><JSON>` on one line, markers below) let the
offline simulator, and anyone auditing a stored prompt, read the prompt's
inputs back without guessing at prose.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from models.knowledge import AU_DESCRIPTIONS, KNOWLEDGE_STATEMENTS
from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels, Task
from models.vocab import Stage

# The stage names are the ones stored in vllm_calls.stage (models/vocab.py).
SAMPLE_STAGE = Stage.SAMPLE
SUMMARY_STAGE = Stage.SUMMARY
REWRITE_STAGE = Stage.REWRITE

#: (name, version) of each template; bump the version when its text changes.
PRIOR_TEMPLATE = ("seke-prior", "1")
SUMMARY_TEMPLATE = ("seke-summary", "1")
REWRITE_TEMPLATE = ("seke-rewrite", "1")
SYSTEM_TEMPLATE = ("seke-system", "1")  # the cached layout's constant head
PRIOR_CACHED_TEMPLATE = ("seke-prior-cached", "1")
SUMMARY_CACHED_TEMPLATE = ("seke-summary-cached", "1")
REWRITE_CACHED_TEMPLATE = ("seke-rewrite-cached", "1")
STAGE_OF_TEMPLATE: Mapping[str, Stage] = {
    PRIOR_TEMPLATE[0]: SAMPLE_STAGE,
    SUMMARY_TEMPLATE[0]: SUMMARY_STAGE,
    REWRITE_TEMPLATE[0]: REWRITE_STAGE,
    PRIOR_CACHED_TEMPLATE[0]: SAMPLE_STAGE,
    SUMMARY_CACHED_TEMPLATE[0]: SUMMARY_STAGE,
    REWRITE_CACHED_TEMPLATE[0]: REWRITE_STAGE,
}

PromptLayout = Literal["paper", "cached"]

# Machine-readable markers: each starts a line followed by the value (JSON unless noted).
PROMPT_ID_MARKER = "Prompt: "  # first line: "Prompt: <name> v<version>" (plain text)
KNOWN_MARKER = "Known human labels (JSON): "  # present only when prior knowledge is used
REQUESTED_MARKER = "Requested descriptions (JSON): "  # list of Task values
SAMPLES_MARKER = "Samples (JSON): "  # list of valid sample answers
STATS_MARKER = "Sample statistics (JSON): "  # {task: {...}} mean/mode and uncertainty
QUESTION_MARKER = "Question (JSON): "  # JSON string
FINAL_MARKER = "Final labels (JSON): "  # complete FaceLabels
DESCRIPTION_MARKER = "Analysis (JSON): "  # JSON string

_ROLE = (
    "You are an expert in facial expression analysis, trained in the Facial Action Coding System (FACS)."
)
_JSON_ONLY = "Answer with a single JSON object and nothing else, with exactly these keys:"


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    version: str
    text: str
    sha256: str
    #: Cached layout: the system message sent before the image and this text (None: the paper's one message).
    system: RenderedPrompt | None = None


def _render(template: tuple[str, str], lines: Sequence[str], system: RenderedPrompt | None = None) -> RenderedPrompt:
    name, version = template
    text = "\n".join([f"{PROMPT_ID_MARKER}{name} v{version}", *lines]).strip() + "\n"
    return RenderedPrompt(name, version, text, hashlib.sha256(text.encode("utf-8")).hexdigest(), system)


def _dumps(value: Any) -> str:
    """One-line JSON with floats rounded to 3 decimals, so prompts (and their hashes) are stable."""
    return json.dumps(_rounded(value), ensure_ascii=False, separators=(", ", ": "))


def _rounded(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, Mapping):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar from the UAMC statistics
        return _rounded(value.item())
    if hasattr(value, "model_dump"):
        return _rounded(value.model_dump(mode="json"))
    raise TypeError(f"cannot render {type(value).__name__} into a prompt; pass plain JSON values")


def labels_json(labels: FaceLabels) -> dict[str, Any]:
    """The present fields of `labels` in FaceLabels JSON shape (no nulls, no empty AU map)."""
    data = labels.model_dump(mode="json", exclude_none=True)
    data["aus"] = {au: labels.aus[au] for au in ACTION_UNITS if au in labels.aus}
    if not data["aus"]:
        del data["aus"]
    return data


def _ordered(tasks: Sequence[Task | str]) -> list[Task]:
    wanted = {Task(t) for t in tasks}
    return [t for t in Task if t in wanted]


def _au_names(with_descriptions: bool) -> str:
    if with_descriptions:
        return "; ".join(f"{au} {AU_DESCRIPTIONS[au]}" for au in ACTION_UNITS)
    return ", ".join(ACTION_UNITS)


def _knowledge_lines() -> list[str]:
    return [
        "Emotion knowledge:",
        *(f"- {statement}" for statement in KNOWLEDGE_STATEMENTS),
        f"Action units (FACS names): {_au_names(with_descriptions=True)}.",
        "",
    ]


def _label_lines(labels: FaceLabels) -> list[str]:
    lines: list[str] = []
    if labels.expression is not None:
        lines.append(f"- expression: {labels.expression}")
    if labels.valence is not None:
        lines.append(f"- valence: {labels.valence:.2f}")
    if labels.arousal is not None:
        lines.append(f"- arousal: {labels.arousal:.2f}")
    present = [au for au in ACTION_UNITS if labels.aus.get(au) is True]
    absent = [au for au in ACTION_UNITS if labels.aus.get(au) is False]
    if present or absent:
        lines.append(f"- action units present: {', '.join(present) or 'none'}")
        lines.append(f"- action units absent: {', '.join(absent) or 'none'}")
    return lines


def _prior_lines(known: FaceLabels) -> list[str]:
    return _knowledge_lines() + _known_lines(known)


def _known_lines(known: FaceLabels) -> list[str]:
    lines = []
    if labels_json(known):
        lines += [
            "Human annotators have already labelled part of this face. Treat their labels as correct and use "
            "them, with the emotion knowledge above and the correlations between expression, valence-arousal "
            "and action units, to infer what is missing:",
            *_label_lines(known),
        ]
    else:
        lines.append("No human labels are available for this face; rely on the image and the emotion knowledge.")
    return [*lines, f"{KNOWN_MARKER}{_dumps(labels_json(known))}", ""]


def _request_lines(missing: Sequence[Task]) -> list[str]:
    lines = []
    for task in missing:
        if task is Task.EXPRESSION:
            lines.append(f"- expression: exactly one of {', '.join(EXPRESSIONS)}.")
        elif task is Task.VA:
            lines.append(
                "- valence and arousal: numbers in [-1, 1]; valence is how pleasant the emotion is "
                "(negative = unpleasant), arousal how activated (negative = calm)."
            )
        else:
            lines.append(
                f"- action units: for each of the 17 action units ({_au_names(with_descriptions=False)}), "
                "true if it is present on this face, false if not."
            )
    return [*lines, f"{REQUESTED_MARKER}{_dumps([t.value for t in missing])}", ""]


def _format_lines(missing: Sequence[Task], extra: Sequence[str] = ()) -> list[str]:
    parts = []
    for task in missing:
        if task is Task.EXPRESSION:
            parts.append('"expression": "<one of the 8 expressions>"')
        elif task is Task.VA:
            parts.append('"valence": <number in [-1, 1]>, "arousal": <number in [-1, 1]>')
        else:
            aus = ", ".join(f'"{au}": <true or false>' for au in ACTION_UNITS)
            parts.append(f'"aus": {{{aus}}}')
    return [_JSON_ONLY, "{" + ", ".join([*parts, *extra]) + "}"]


@cache
def system_prompt(*, use_prior: bool = True) -> RenderedPrompt:
    """The cached layout's system message: the same for every call of a run (no knowledge without `use_prior`)."""
    lines = [
        _ROLE,
        "",
        "You will be shown one face image at a time, followed by one of three requests:",
        "- annotate: describe only the descriptions the request names.",
        "- verify: you get your own independent annotations of the face and their statistics; verify them against "
        "the face and give the final, most reliable labels with a description that reasons across them.",
        "- answer: write the answer to a user's question about the face from its verified labels and an expert "
        "analysis.",
        "",
    ]
    if use_prior:
        lines += _knowledge_lines()  # the paper layout's knowledge, word for word: the science is unchanged
    lines += [
        "Every answer is a single JSON object and nothing else, with exactly the keys its request lists. Keys:",
        f'- "expression": exactly one of {", ".join(EXPRESSIONS)}.',
        '- "valence", "arousal": numbers in [-1, 1]; valence is how pleasant the emotion is (negative = '
        "unpleasant), arousal how activated (negative = calm).",
        f'- "aus": an object with each of the 17 action units ({_au_names(with_descriptions=False)}) as a key, '
        "true if it is present on this face, false if not.",
        '- "description": reasoning across the three descriptions: which action units are active, how they point '
        "to the expression, and how the expression fits the valence and arousal.",
        '- "answer": the answer to the question, as an expert looking at the face; it speaks about the face '
        "itself, never about labels, annotators, samples or this prompt.",
    ]
    return _render(SYSTEM_TEMPLATE, lines)


def prior_prompt(
    known: FaceLabels, missing: Sequence[Task], *, use_prior: bool = True, layout: PromptLayout = "paper"
) -> RenderedPrompt:
    """The prior-knowledge sampling prompt (paper §3.1); asks only for `missing`.

    Without `use_prior` (the paper's "no Prior" ablation, Table 4) neither the
    human labels nor the emotion knowledge are shown.
    """
    tasks = _ordered(missing)
    if not tasks:
        raise ValueError("prior_prompt needs at least one missing task; an image with all labels needs no samples")
    if layout == "cached":
        lines = ["Request: annotate the face in the image.", ""]
        if use_prior:
            lines += _known_lines(known)
        lines += ["Describe only the following:", *_request_lines(tasks), *_format_lines(tasks)]
        return _render(PRIOR_CACHED_TEMPLATE, lines, system_prompt(use_prior=use_prior))
    lines = [_ROLE, "Look carefully at the face in the image.", ""]
    if use_prior:
        lines += _prior_lines(known)
    lines += ["Describe only the following:", *_request_lines(tasks)]
    lines += _format_lines(tasks)
    return _render(PRIOR_TEMPLATE, lines)


def summary_prompt(
    known: FaceLabels,
    missing: Sequence[Task],
    samples: Sequence[Mapping[str, Any]],
    stats: Mapping[Task, Mapping[str, Any]],
    *,
    use_prior: bool = True,
    layout: PromptLayout = "paper",
) -> RenderedPrompt:
    """The self-verification summary prompt (paper §3.2, Algorithm 1 line 15).

    `samples` are the valid sample answers; `stats` maps each missing task to
    its aggregate (e.g. {"mode": ..., "uncertainty": ...} or {"mean": ...}).
    """
    tasks = _ordered(missing)
    cached = layout == "cached"
    lines = [
        *(["Request: verify."] if cached else [_ROLE]),
        "You annotated the face in the image several times independently. Verify those annotations against "
        "the face and give the final, most reliable labels.",
        "",
    ]
    if use_prior:
        lines += _known_lines(known) if cached else _prior_lines(known)
    lines += [
        f"Your {len(samples)} independent annotations, one JSON object each:",
        f"{SAMPLES_MARKER}{_dumps([dict(s) for s in samples])}",
        "Their statistics per description: the mean or most frequent answer, and the uncertainty "
        "(0 = all annotations agree, 1 = maximal disagreement):",
        f"{STATS_MARKER}{_dumps({Task(t).value: dict(v) for t, v in stats.items()})}",
        "",
        "Keep answers the annotations agree on; where they are uncertain, look at the face again and decide "
        "with the emotion knowledge and the consistency between expression, valence-arousal and action units.",
    ]
    if tasks:
        lines += ["Give final labels for:", *_request_lines(tasks)]
    else:
        lines += [f"{REQUESTED_MARKER}[]", ""]
    lines += [
        "Then write a description that reasons across the three descriptions: which action units are active, "
        "how they point to the expression, and how the expression fits the valence and arousal.",
        *_format_lines(tasks, ['"description": "<your reasoning>"']),
    ]
    if cached:
        return _render(SUMMARY_CACHED_TEMPLATE, lines, system_prompt(use_prior=use_prior))
    return _render(SUMMARY_TEMPLATE, lines)


#: 11 questions (paper §3.1, Appendix A has the originals; these are our own wording).
#: None names an expression class or an action unit number: the question carries no answer.
QUESTION_TEMPLATES: tuple[str, ...] = (
    "What emotion does this face express? Give the basic expression, the valence and arousal values, and the "
    "facial action units that are active, and explain how they relate.",
    "Analyse the facial expression in this image: which basic emotion is shown, where does it lie in valence "
    "and arousal, and which action units support your judgement?",
    "Describe this person's emotional state at three levels: the discrete expression, the valence-arousal "
    "values, and the activated facial action units.",
    "Which facial action units are activated in this face, and what do they tell you about the expression and "
    "about its valence and arousal?",
    "Looking at this face, estimate the valence and arousal, name the expression, and list the action units "
    "that are present. How do these cues fit together?",
    "Please give a complete facial emotion analysis of this image, covering the expression category, valence, "
    "arousal and action units, with your reasoning.",
    "What is the facial expression here? Support your answer with the visible action units and with the "
    "valence and arousal the face conveys.",
    "From the muscle movements visible in this face, infer which action units are active, then the emotion "
    "category and its valence and arousal.",
    "How would you characterise the emotion on this face in terms of its category, its valence and arousal, "
    "and the facial action units involved?",
    "Identify the emotion displayed in the image. Report valence and arousal on a scale from -1 to 1 and the "
    "action units you can see, and explain the link between them.",
    "Explain the emotion this face conveys: which expression it is, its valence and arousal (how pleasant and "
    "how activated it is), and which action units reveal it.",
)


def choose_question(seed: int) -> tuple[int, str]:
    """(index, text) of the question template for this seed (e.g. derived from run and image)."""
    index = random.Random(seed).randrange(len(QUESTION_TEMPLATES))
    return index, QUESTION_TEMPLATES[index]


def rewrite_prompt(
    question: str, final: FaceLabels, description: str, *, use_prior: bool = True, layout: PromptLayout = "paper"
) -> RenderedPrompt:
    """Asks for the instruction's answer from the final labels and the summary's reasoning.

    `use_prior` only chooses the cached layout's system message (the paper's rewrite prompt has no knowledge)."""
    cached = layout == "cached"
    lines = [
        "Request: answer." if cached else _ROLE,
        "You are writing one answer of a facial emotion instruction dataset. A user showed the face in the "
        "image and asked this question:",
        f"{QUESTION_MARKER}{_dumps(question)}",
        "",
        "The verified labels of this face:",
        *_label_lines(final),
        f"{FINAL_MARKER}{_dumps(labels_json(final))}",
        "An expert analysis of how these labels relate:",
        f"{DESCRIPTION_MARKER}{_dumps(description)}",
        "",
        "Write the answer to the question as an expert looking at the face: state the expression, the valence "
        "and arousal values and the active action units, and explain how they support each other. Speak about "
        "the face itself; do not mention labels, annotators, samples or this prompt.",
        _JSON_ONLY,
        '{"answer": "<the answer>"}',
    ]
    if cached:
        return _render(REWRITE_CACHED_TEMPLATE, lines, system_prompt(use_prior=use_prior))
    return _render(REWRITE_TEMPLATE, lines)


def _level(value: float, low: str, mid: str, high: str) -> str:
    return low if value < -0.2 else high if value > 0.2 else mid


def deterministic_answer(final: FaceLabels, description: str) -> str:
    """The answer text used when the rewrite call is configured off: the three descriptions + the reasoning."""
    parts = []
    if final.expression is not None:
        parts.append(f"The face shows {final.expression}.")
    if final.valence is not None and final.arousal is not None:
        parts.append(
            f"Its valence is {final.valence:.2f} ({_level(final.valence, 'unpleasant', 'neutral', 'pleasant')}) "
            f"and its arousal {final.arousal:.2f} ({_level(final.arousal, 'calm', 'moderate', 'activated')})."
        )
    if final.aus:
        present = [f"{au} ({AU_DESCRIPTIONS[au]})" for au in ACTION_UNITS if final.aus.get(au)]
        parts.append(
            f"Active action units: {', '.join(present)}." if present else "No action unit is clearly active."
        )
    if description.strip():
        parts.append(description.strip())
    return " ".join(parts)


# --- readers of the machine-readable lines (used by the simulator and audits) ---


def read_marked_json(text: str, marker: str) -> Any | None:
    """The JSON value after `marker` at the start of a line, or None when the prompt has no such line."""
    for line in text.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    return None


def prompt_stage(text: str) -> Stage | None:
    """The stage ('prior-sample', 'summary' or 'rewrite') from the prompt's first line; None for a foreign prompt."""
    first = text.split("\n", 1)[0]
    if not first.startswith(PROMPT_ID_MARKER):
        return None
    name = first[len(PROMPT_ID_MARKER) :].rsplit(" v", 1)[0]
    return STAGE_OF_TEMPLATE.get(name)


def known_labels_in(text: str) -> FaceLabels | None:
    """The human labels the prompt gives as prior knowledge; None when it gives none (no-prior ablation)."""
    data = read_marked_json(text, KNOWN_MARKER)
    return None if data is None else FaceLabels.model_validate(data)


def requested_tasks_in(text: str) -> list[Task]:
    return [Task(t) for t in read_marked_json(text, REQUESTED_MARKER) or []]
