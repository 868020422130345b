"""Read a model's benchmark answer into FaceLabels.

Order: a JSON object (in a code fence, in prose, or truncated and repaired
conservatively), then the deterministic prose reader for whatever the JSON
did not give. `parse_with_llm` is the SEKE paper's Appendix C route (an LLM
rewrites the answer into a fixed template), with the client passed in.
Nothing here raises on bad model output: it becomes `problems`.
"""

from __future__ import annotations

import ast
import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, Field

from models.labels import ACTION_UNITS, FaceLabels, normalise_au_name
from tasks.benchmark.prompt import answer_extraction_prompt
from tasks.benchmark.prose import normalise_text, read_action_units, read_expression, read_valence_arousal

ParseMethod = Literal["json", "text", "llm", "none"]


class ParsedAnswer(BaseModel):
    """What could be read from one answer; `problems` says what was guessed, dropped or missing."""

    labels: FaceLabels
    method: ParseMethod
    problems: list[str] = Field(default_factory=list)


_FIELDS = ("expression", "valence", "arousal", "aus")
# Key spellings models use for the same field (compared after _key()).
_EXPRESSION_KEYS = (
    "expression", "emotion", "facial_expression", "basic_expression", "basic_emotion", "label", "class", "category",
)  # fmt: skip
_AU_KEYS = (
    "action_units", "aus", "au", "present_aus", "active_aus", "present_action_units", "action_units_present",
    "facial_action_units",
)  # fmt: skip
_VA_KEYS = ("va", "valence_arousal", "v_a")
_ANSWER_KEYS = frozenset({*_EXPRESSION_KEYS, *_AU_KEYS, *_VA_KEYS, "valence", "arousal"})
_TRUE = frozenset({"true", "yes", "present", "active", "1", "detected", "occurring"})
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.S)


def _key(name: object) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _balanced_objects(text: str) -> Iterator[str]:
    """Each top-level {...} in text, string-aware; an unclosed one runs to the end (truncated)."""
    start, depth, in_string, escaped = -1, 0, False, False
    for i, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            in_string = not (char == '"' and not escaped)
            continue
        if char == '"' and depth:
            in_string = True
        elif char == "{":
            start = i if depth == 0 else start
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]
    if depth:
        yield text[start:]


def _load(candidate: str) -> object:
    """json, then json without trailing commas, then a Python literal (single quotes, True)."""
    for attempt in (candidate, re.sub(r",\s*([}\]])", r"\1", candidate)):
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than any answer
            pass
    try:
        return ast.literal_eval(candidate)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # not a literal
        return None


#: Cuts a truncated object is tried at (latest first): bounds the repair of hostile output to linear work.
MAX_REPAIR_CUTS = 32


def _repair_truncated(fragment: str) -> tuple[dict[str, object], int] | None:
    """Close a cut-off object: end at the last complete value, close the open brackets.

    Cuts are tried at the end (unless it ends inside a string or a number,
    which may itself be cut: "0.6" of "0.65") and then before each comma,
    latest first; the incomplete item is dropped, never completed.
    Returns the object and how many brackets were closed.
    """
    # The open brackets as a linked list (closer, outer): a cut keeps a reference, not a copy, so recording
    # every comma is O(1) and only the last MAX_REPAIR_CUTS (the likely ones, tried latest first) are kept.
    open_brackets: tuple | None = None
    cuts: deque[tuple[int, tuple | None]] = deque(maxlen=MAX_REPAIR_CUTS)
    in_string = escaped = False
    for i, char in enumerate(fragment):
        if in_string:
            escaped = char == "\\" and not escaped
            in_string = not (char == '"' and not escaped)
        elif char == '"':
            in_string = True
        elif char in "{[":
            open_brackets = ("}" if char == "{" else "]", open_brackets)
        elif char in "}]" and open_brackets:
            open_brackets = open_brackets[1]
        elif char == ",":
            cuts.append((i, open_brackets))
    tail = fragment.rstrip()
    if not in_string and not re.search(r"[\d.\-+eE:]$", tail):
        cuts.append((len(tail), open_brackets))
    for cut, brackets in reversed(cuts):
        closers = []
        while brackets:
            closers.append(brackets[0])
            brackets = brackets[1]
        loaded = _load(fragment[:cut] + "".join(closers))
        if isinstance(loaded, dict):
            return loaded, len(closers)
    return None


def _find_fields(obj: dict[str, object], depth: int = 0) -> dict[str, object] | None:
    """The dict that holds the answer: obj itself or one nested in it ({"answer": {...}})."""
    if {_key(k) for k in obj} & _ANSWER_KEYS:
        return obj
    nested = (v for v in obj.values() if isinstance(v, dict)) if depth < 2 else ()
    return next((inner for v in nested if (inner := _find_fields(v, depth + 1)) is not None), None)


def _unit(name: str, value: object, problems: list[str]) -> float | None:
    if value is None:
        return None
    try:
        number = float(normalise_text(str(value)).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not -1.0 <= number <= 1.0:
        problems.append(f"{name} {value!r} is not a number in [-1, 1]; ignored")
        return None
    return number


def _flag(value: object) -> bool:
    """AU occurrence from true/1/"present"/"yes"; a number (probability, intensity) counts from 0.5."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value >= 0.5
    return str(value).strip().lower() in _TRUE


def _json_aus(value: object, problems: list[str]) -> dict[str, bool] | None:
    """AU occurrence from a list of present AUs, a {AU: bool} map or a string; None if unreadable."""
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "no", "[]"):
            return {au: False for au in ACTION_UNITS}
        return read_action_units(normalise_text(value), problems) or None
    if isinstance(value, dict):
        keyed = {_key(k): v for k, v in value.items()}
        if "present" in keyed or "absent" in keyed:
            return _json_aus(keyed.get("present") or [], problems)
        items = [(k, _flag(v)) for k, v in value.items()]
    elif isinstance(value, list):
        items = []
        for item in value:
            if isinstance(item, dict):  # [{"au": "AU6", "present": true}]
                fields = {_key(k): v for k, v in item.items()}
                name = next((fields[k] for k in ("au", "name", "id", "code", "action_unit") if k in fields), None)
                flag = next((fields[k] for k in ("present", "occurrence", "active", "value") if k in fields), True)
                items.append((name, _flag(flag)))
            else:
                items.append((item, True))
    else:
        return None
    present: dict[str, bool] = {}
    for name, flag in items:
        code = re.match(r"\s*(?:AU)?\s*(\d+)", str(name), re.I)
        if code is None:  # a FACS name ("cheek raiser") or prose
            present.update({au: flag for au, seen in read_action_units(str(name), problems).items() if seen})
            continue
        try:
            present[normalise_au_name(code.group(1))] = flag
        except ValueError:
            problems.append(f"AU{code.group(1)} is not one of the 17 schema AUs; ignored")
    # The prompt asks for the present AUs only, so every AU not named present is absent.
    return {au: present.get(au, False) for au in ACTION_UNITS}


def _labels_from_json(obj: dict[str, object], truncated_depth: int, problems: list[str]) -> dict[str, object]:
    fields = {_key(k): v for k, v in (_find_fields(obj) or {}).items()}
    found: dict[str, object] = {}
    exp_value = next((fields[k] for k in _EXPRESSION_KEYS if fields.get(k) is not None), None)
    if exp_value is not None:
        found["expression"] = read_expression(str(exp_value), problems)
        if found["expression"] is None:
            problems.append(f"expression {exp_value!r} is not one of the 8 classes; ignored")
    va = next((fields[k] for k in _VA_KEYS if fields.get(k) is not None), None)
    if isinstance(va, dict):
        fields = {**{_key(k): v for k, v in va.items()}, **fields}
    elif isinstance(va, list) and len(va) == 2:
        fields = {"valence": va[0], "arousal": va[1], **fields}
    for name in ("valence", "arousal"):
        found[name] = _unit(name, fields.get(name), problems)
    au_key = next((k for k in _AU_KEYS if k in fields), None)
    if au_key is not None:
        aus = _json_aus(fields[au_key], problems)
        if aus is not None and truncated_depth >= 2 and list(fields)[-1] == au_key:
            problems.append("the AU list was cut off; AUs not named are left unknown")
            aus = {au: True for au, seen in aus.items() if seen}
        found["aus"] = aus or {}
    return {k: v for k, v in found.items() if v not in (None, {})}


def _read_json(text: str) -> tuple[dict[str, object], tuple[int, int], list[str]] | None:
    """The first JSON object in text that carries any label, its span and its problems."""
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    for candidate in [obj for block in fenced for obj in _balanced_objects(block)] + list(_balanced_objects(text)):
        problems: list[str] = []
        loaded, closed = _load(candidate), 0
        if not isinstance(loaded, dict):
            repaired = _repair_truncated(candidate)
            if repaired is None:
                continue
            loaded, closed = repaired
            problems.append("JSON was cut off or malformed; kept its complete part")
        found = _labels_from_json(loaded, closed, problems)
        if found:
            start = text.find(candidate)
            return found, (start, start + len(candidate)), problems
    return None


def _read_prose(text: str, wanted: set[str], problems: list[str]) -> dict[str, object]:
    """The wanted label fields ("expression", "valence", "arousal", "aus") that the prose states."""
    found: dict[str, object] = {}
    if "expression" in wanted:
        found["expression"] = read_expression(text, problems)
    if wanted & {"valence", "arousal"}:
        found["valence"], found["arousal"] = read_valence_arousal(text, problems)
    if "aus" in wanted:
        found["aus"] = read_action_units(text, problems)
    return {k: v for k, v in found.items() if k in wanted and v not in (None, {})}


def parse_answer(text: str) -> ParsedAnswer:
    """Labels read from one answer: JSON first, then prose for the fields the JSON left out."""
    text = normalise_text(text)
    json_reading = _read_json(text)
    if json_reading is None:
        problems: list[str] = []
        values = _read_prose(text, set(_FIELDS), problems)
        method: ParseMethod = "text" if values else "none"
    else:
        values, (start, end), problems = json_reading
        method = "json"
        if missing := set(_FIELDS) - values.keys():
            from_prose = _read_prose(text[:start] + " " + text[end:], missing, problems)
            if from_prose:
                problems.append(f"{', '.join(f for f in _FIELDS if f in from_prose)} read from prose outside the JSON")
            values.update(from_prose)
    if method == "none":
        problems.append("no expression, valence/arousal or action units could be read")
    return ParsedAnswer(labels=FaceLabels.model_validate(values), method=method, problems=problems)


def parse_with_llm(text: str, complete: Callable[[str], str]) -> ParsedAnswer:
    """Let an LLM rewrite the answer into the fixed JSON template (SEKE paper §4.2 / Appendix C).

    `complete` sends one user message and returns the reply text (the caller
    wires an OpenAI-compatible client and retries, and records the call with
    `answer_extraction_prompt(text)`'s name, version and sha256). Only
    the reply's JSON is trusted; a reply without one gives method "none".
    """
    reply = complete(answer_extraction_prompt(text).text)
    json_reading = _read_json(normalise_text(reply))
    if json_reading is None:
        problem = f"the LLM parser's reply has no JSON with labels: {reply[:200]!r}"
        return ParsedAnswer(labels=FaceLabels(), method="none", problems=[problem])
    values, _, problems = json_reading
    return ParsedAnswer(labels=FaceLabels.model_validate(values), method="llm", problems=problems)
