"""What the vision LLM must return, as pydantic models built from the label schema.

A sample answer holds exactly the requested descriptions (paper §3.1: the
prior-knowledge prompt asks only for what the human labels lack); a summary
answer adds a `description` that reasons across expression, valence/arousal
and AUs; a rewrite answer is the instruction's answer text. Output that does
not validate is data about the model: callers store it with the reason
(STYLE.md §2), they never crash on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from models.labels import ACTION_UNITS, Expression, FaceLabels, Task, Unit, normalise_au_name

class _AUBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _normalise_keys(cls, value: object) -> object:
        """Accept 'au12' / '12' spellings of the 17 AUs; any other key is an error naming it."""
        if not isinstance(value, dict):
            return value
        normalised: dict[str, object] = {}
        for key, occurrence in value.items():
            name = normalise_au_name(key)
            if name in normalised:
                raise ValueError(f"{name} is given twice (as {key!r} and another spelling)")
            normalised[name] = occurrence
        return normalised


#: All 17 schema AUs, each required and present (true) or absent (false).
AUOccurrence: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "AUOccurrence",
    __base__=_AUBase,
    **{au: (bool, Field(description=f"true if {au} is present")) for au in ACTION_UNITS},
)


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


#: Checked by a validator, not `min_length`: strict structured output rejects minLength in schemas.
NonEmptyText = Annotated[str, AfterValidator(_non_empty)]


class _AnswerBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _task_fields(tasks: Iterable[Task]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    wanted = set(tasks)
    if Task.EXPRESSION in wanted:
        fields["expression"] = (Expression, Field(description="one of the 8 basic expressions"))
    if Task.VA in wanted:
        fields["valence"] = (Unit, Field(description="valence in [-1, 1]; negative is unpleasant"))
        fields["arousal"] = (Unit, Field(description="arousal in [-1, 1]; negative is calm"))
    if Task.AU in wanted:
        # A bare $ref (no sibling description): strict structured output rejects keywords beside $ref.
        fields["aus"] = (AUOccurrence, ...)
    return fields


def _normalise_tasks(tasks: Iterable[Task | str]) -> frozenset[Task]:
    try:
        return frozenset(Task(t) for t in tasks)
    except ValueError as exc:
        raise ValueError(f"{exc}; tasks are {', '.join(t.value for t in Task)}") from exc


def sample_answer_model(tasks: Iterable[Task | str]) -> type[BaseModel]:
    """The `SampleAnswer` model for exactly these tasks (at least one)."""
    return _sample_answer_model(_normalise_tasks(tasks))


@cache
def _sample_answer_model(tasks: frozenset[Task]) -> type[BaseModel]:
    if not tasks:
        raise ValueError("a sample answer needs at least one requested task (expression, va, au)")
    return create_model("SampleAnswer", __base__=_AnswerBase, **_task_fields(tasks))  # type: ignore[call-overload]


def summary_answer_model(missing: Iterable[Task | str]) -> type[BaseModel]:
    """The `SummaryAnswer` model: final labels of the missing tasks + a cross-description reasoning."""
    return _summary_answer_model(_normalise_tasks(missing))


@cache
def _summary_answer_model(missing: frozenset[Task]) -> type[BaseModel]:
    fields = _task_fields(missing)
    fields["description"] = (
        NonEmptyText,
        Field(description="reasoning that links the expression, valence/arousal and action units of this face"),
    )
    return create_model("SummaryAnswer", __base__=_AnswerBase, **fields)  # type: ignore[call-overload]


class RewriteAnswer(_AnswerBase):
    """The instruction's answer: all three descriptions and the reasoning that links them."""

    answer: NonEmptyText = Field(description="the answer to the question, in fluent prose")


@cache  # built once per answer model: rebuilding it cost ~2 ms per call (bench/README.md); callers must not mutate it
def json_schema_for(model: type[BaseModel], *, strict: bool = True) -> dict[str, Any]:
    """`response_format` for OpenAI-compatible structured output (type json_schema)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": strict},
    }


def labels_from_answer(answer: BaseModel | Mapping[str, Any]) -> FaceLabels:
    """The labels an answer (or its `model_dump()`) carries; other keys (description) are ignored."""
    data = answer.model_dump() if isinstance(answer, BaseModel) else dict(answer)
    return FaceLabels(
        expression=data.get("expression"),
        valence=data.get("valence"),
        arousal=data.get("arousal"),
        aus=dict(data.get("aus") or {}),
    )


# --- reading the answer object out of model output ---

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()
#: Characters of parsing allowed per character of output: bounds the whole scan to O(len(text)).
_SCAN_BUDGET_PER_CHAR = 8
#: First window decoded at each `{`; doubled while the object runs past it.
_WINDOW = 2048


def _decode_at(text: str, start: int) -> tuple[object, int]:
    """(the JSON value starting at `start`, or None; characters of work it took).

    Decoding a window rather than the whole text keeps a failure's cost bounded:
    a JSONDecodeError counts the lines before its position, so decoding the whole
    text at every `{` would be quadratic. The window doubles while the error is at
    its end (the value may go on past it).
    """
    window, cost = _WINDOW, 0
    while True:
        chunk = text[start : start + window]  # a copy of at most `window` characters: constant per `{`
        try:
            value, end = _DECODER.raw_decode(chunk)
            return value, cost + end
        except json.JSONDecodeError as exc:
            cut = exc.pos >= len(chunk) - 1 or exc.msg.startswith("Unterminated string")
            if not cut or start + window >= len(text):
                return None, cost + exc.pos + 1
            cost += len(chunk)
            window *= 2
        except RecursionError:
            return None, cost + len(chunk)  # nesting too deep for the decoder: no answer object


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The answer object in `text`: the whole text, a fenced block, or the first `{` at which an object parses.

    Linear in len(text): each `{` is decoded in a window that grows only while
    the object does, and the work of all attempts is charged to a budget of a few
    times the text's length (output that exhausts it, e.g. thousands of nested
    unclosed objects, has no readable answer anyway).
    """
    for candidate in (text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))):
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    budget = _SCAN_BUDGET_PER_CHAR * len(text) + 4 * _WINDOW
    start = text.find("{")
    while start != -1 and budget > 0:
        value, cost = _decode_at(text, start)
        if isinstance(value, dict):
            return value
        budget -= cost
        start = text.find("{", start + 1)
    return None


#: Longest model output stored verbatim (`raw_text` of calls and benchmark answers); answers are a few KB.
MAX_RAW_TEXT = 65_536


def bounded_raw_text(text: str) -> str:
    """`text`, or its first MAX_RAW_TEXT characters and a marker saying how many were not stored."""
    if len(text) <= MAX_RAW_TEXT:
        return text
    return text[:MAX_RAW_TEXT] + f"\n[seke: output truncated, {len(text) - MAX_RAW_TEXT} more characters not stored]"
