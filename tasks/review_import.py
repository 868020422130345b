"""Reading reviews back: Label Studio's JSON export of a project seeded by `seke review export`.

Each exported task carries the `data` seke wrote (`run`, `image_id`) and the annotations people made.
Per task the latest annotation that was not cancelled counts; it is compared, field by field, with what
the run generated for the image (read from Postgres, so AUs predicted absent are reviewed too):

- expression, valence, arousal: the same value (numbers within 1e-9) is an accept, another value a
  correction, no value where the run had one a reject;
- each AU: ticked or not in the multi-choice `aus`, an accept when it matches the run, else a correction.

Tasks nobody annotated are left out (they stay in the review queue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS
from models.orm import Run
from tasks.review import ReviewDecision, ReviewFileError, generated_annotations

NUMBER_TOLERANCE = 1e-9


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
    unknown = set(answers.get("aus", [])) - set(ACTION_UNITS)
    if unknown:
        raise ReviewFileError(f"{where}, field aus: unknown action unit(s) {', '.join(sorted(unknown))}")
    if len(answers.get("expression", [])) > 1:
        raise ReviewFileError(f"{where}, field expression: {len(answers['expression'])} choices where one is expected")
    return answers


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


def read_label_studio(session: Session, path: Path, reviewer: str | None = None) -> ReadReviews:
    """The decisions of a Label Studio JSON export; ReviewFileError naming the file, task and field."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReviewFileError(f"{path}: not a readable Label Studio JSON export ({error})") from None
    if not isinstance(tasks, list):
        raise ReviewFileError(f"{path}: a Label Studio JSON export is a list of tasks")
    annotated: list[tuple[str, str, int, dict[str, Any], str]] = []  # where, run, image, answers, reviewer
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
    return ReadReviews(decisions, len(tasks) - len(annotated))
