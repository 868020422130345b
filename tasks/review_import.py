"""Reading reviews back from a project seeded by `seke review export`: Label Studio's JSON export, or
the records.json of the folder Argilla's `Dataset.to_disk` writes.

Each exported task (record) carries what seke wrote (`run`, `image_id`) and the answers people gave.
In Label Studio the latest annotation that was not cancelled counts; in Argilla the one user who
answered the record (seke keeps one decision per field, so a record answered by several users is
refused). The answers are compared, field by field, with what the run generated for the image (read
from Postgres, so AUs predicted absent are reviewed too):

- expression, valence, arousal: the same value (numbers within 1e-9) is an accept, another value a
  correction, no value where the run had one a reject;
- each AU: ticked or not in the multi-choice `aus`, an accept when it matches the run, else a correction.

Tasks and records nobody answered are left out (they stay in the review queue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS, EXPRESSIONS
from models.orm import Run
from tasks.review import ReviewDecision, ReviewFileError, generated_annotations

NUMBER_TOLERANCE = 1e-9


#: One reviewed image: where (file, task or record), run, image id, answers, reviewer. Answers are in the
#: Label Studio config's terms: {"expression": [label], "aus": [ticked AUs], "valence": x, "arousal": y}.
Reviewed = tuple[str, str, int, dict[str, Any], str]


@dataclass(frozen=True)
class ReadReviews:
    decisions: list[ReviewDecision]
    unannotated: int  # tasks with no annotation that counts


def _reviewer(annotation: dict[str, Any]) -> str:
    by = annotation.get("completed_by")
    if isinstance(by, dict):
        return str(by.get("email") or f"label-studio-user-{by.get('id')}")
    return f"label-studio-user-{by}"


def _latest(task: dict[str, Any], where: str) -> dict[str, Any] | None:
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise ReviewFileError(f"{where}: 'annotations' is not a list")
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    # ISO times sort as text; the id breaks ties (and orders annotations without times).
    return max(
        kept, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0), default=None
    )


def _answers(annotation: dict[str, Any], where: str) -> dict[str, Any]:
    """{from_name: value} of one annotation's result, in the labeling config's terms."""
    answers: dict[str, Any] = {}
    for item in annotation.get("result", []):
        name, value = item.get("from_name"), item.get("value") or {}
        if name in ("expression", "aus"):
            choices = value.get("choices")
            if not isinstance(choices, list):
                raise ReviewFileError(f"{where}, field {name}: 'choices' is not a list")
            answers[name] = choices
        elif name in ("valence", "arousal"):
            answers[name] = value.get("number")
    _check_answers(answers, where)
    return answers


def _check_answers(answers: dict[str, Any], where: str) -> None:
    unknown = set(answers.get("aus", [])) - set(ACTION_UNITS)
    if unknown:
        raise ReviewFileError(f"{where}, field aus: unknown action unit(s) {', '.join(sorted(map(str, unknown)))}")
    if len(answers.get("expression", [])) > 1:
        raise ReviewFileError(f"{where}, field expression: {len(answers['expression'])} choices where one is expected")
    if answers.get("expression") and answers["expression"][0] not in EXPRESSIONS:
        raise ReviewFileError(f"{where}, field expression: {answers['expression'][0]!r} is not one of {', '.join(EXPRESSIONS)}")


def _decide(where: str, run: str, image_id: int, reviewer: str, field: str, model: Any, given: Any) -> ReviewDecision:
    def decision(kind: str, value: Any = None) -> ReviewDecision:
        return ReviewDecision(where, run, image_id, field, reviewer, kind, value)

    if given is None:
        return decision("reject")
    if isinstance(model, float) and isinstance(given, int | float) and not isinstance(given, bool):
        same = abs(model - given) <= NUMBER_TOLERANCE
    else:
        same = model == given
    return decision("accept") if same else decision("correct", given)


def _json_list(path: Path, kind: str, shape: str) -> list[Any]:
    """The JSON list in `path`; ReviewFileError naming the file when it is unreadable or not a list."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReviewFileError(f"{path}: not a readable {kind} ({error})") from None
    if not isinstance(loaded, list):
        raise ReviewFileError(f"{path}: {shape}")
    return loaded


def read_label_studio(session: Session, path: Path, reviewer: str | None = None) -> ReadReviews:
    """The decisions of a Label Studio JSON export; ReviewFileError naming the file, task and field."""
    tasks = _json_list(path, "Label Studio JSON export", "a Label Studio JSON export is a list of tasks")
    annotated: list[Reviewed] = []
    for number, task in enumerate(tasks, start=1):
        where = f"{path.name}: task {task.get('id', f'#{number}') if isinstance(task, dict) else f'#{number}'}"
        if not isinstance(task, dict):
            raise ReviewFileError(f"{where}: not a JSON object")
        data = task.get("data") or {}
        run, image_id = data.get("run"), data.get("image_id")
        if not isinstance(run, str) or not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ReviewFileError(f"{where}: data.run and data.image_id (written by seke review export) are missing")
        annotation = _latest(task, where)
        if annotation is not None:
            annotated.append((where, run, image_id, _answers(annotation, where), reviewer or _reviewer(annotation)))
    return ReadReviews(_decisions(session, annotated), len(tasks) - len(annotated))


def _decisions(session: Session, annotated: list[Reviewed]) -> list[ReviewDecision]:
    """Each reviewed image's answers compared, field by field, with what its run generated."""
    runs: dict[str, int] = dict(
        session.execute(select(Run.name, Run.id).where(Run.name.in_({a[1] for a in annotated}))).all()
    )
    generated = generated_annotations(
        session, {(runs[run], image_id) for _, run, image_id, *_ in annotated if run in runs}
    )
    decisions: list[ReviewDecision] = []
    for where, run, image_id, answers, who in annotated:
        rows = generated.get((runs.get(run, -1), image_id))
        if not rows:
            raise ReviewFileError(f"{where}: run {run!r} generated no labels for image {image_id}")
        for row in rows:
            if row.field in ACTION_UNITS:
                given: Any = row.field in answers.get("aus", [])
            elif row.field == "expression":
                given = (answers.get("expression") or [None])[0]
            else:
                given = answers.get(row.field)
            decisions.append(_decide(where, run, image_id, who, row.field, row.value, given))
    return decisions


def _argilla_number(value: Any, where: str, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReviewFileError(f"{where}, field {field}: {value!r} is not a number") from None
    if not -1.0 <= number <= 1.0:
        raise ReviewFileError(f"{where}, field {field}: {number:g} is outside [-1, 1]")
    return number


def _argilla_reviewer(user_id: object) -> str:
    """`argilla-` and the first 12 hex digits of the user's UUID: reviewer names fit MAX_REVIEWER (25)."""
    return f"argilla-{str(user_id).replace('-', '')[:12]}"


def read_argilla(session: Session, path: Path, reviewer: str | None = None) -> ReadReviews:
    """The decisions in an Argilla dataset folder (or its records.json); ReviewFileError naming the record and field."""
    records_file = path / "records.json" if path.is_dir() else path
    records = _json_list(records_file, "Argilla records.json", "Argilla's records.json is a list of records")
    annotated: list[Reviewed] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ReviewFileError(f"{records_file.name}: record #{number}: not a JSON object")
        where = f"{records_file.name}: record {record.get('id') or f'#{number}'}"
        metadata = record.get("metadata") or {}
        run, image_id = metadata.get("run"), metadata.get("image_id")
        if not isinstance(run, str) or not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ReviewFileError(f"{where}: metadata.run and metadata.image_id (written by seke review export) are missing")
        responses = record.get("responses") or {}
        if not isinstance(responses, dict):
            raise ReviewFileError(f"{where}: 'responses' is not an object of questions")
        users = {r.get("user_id") for answers in responses.values() for r in (answers or []) if isinstance(r, dict)}
        if not users:
            continue
        if len(users) > 1:
            raise ReviewFileError(
                f"{where}: answered by {len(users)} users; seke keeps one decision per field, so keep one user's responses"
            )
        answers: dict[str, Any] = {}
        for field, given in responses.items():
            value = given[0].get("value") if given else None
            if value is None:
                continue
            if field in ("valence", "arousal"):
                answers[field] = _argilla_number(value, where, field)
            elif field == "expression":
                answers[field] = [value]
            elif field == "aus":
                if not isinstance(value, list):
                    raise ReviewFileError(f"{where}, field aus: {value!r} is not a list of action units")
                answers[field] = value
        _check_answers(answers, where)
        annotated.append((where, run, image_id, answers, reviewer or _argilla_reviewer(users.pop())))
    return ReadReviews(_decisions(session, annotated), len(records) - len(annotated))
