"""The review queue: a run's generated labels, most uncertain first (UAMC's normalised uncertainty).

Reads the `review_queue` view (migration 0009), which leaves out fields already reviewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.db import in_ids
from models.labels import ACTION_UNITS, LABEL_FIELDS, FaceLabels
from models.orm import Annotation, HumanLabel, Review, Run, SourceDataset, label_columns

#: CLI field groups and the label fields each one covers.
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "expression": ("expression",),
    "va": ("valence", "arousal"),
    "aus": ACTION_UNITS,
}


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    sha256: str
    source: str
    field: str
    value: str | float | bool | None
    uncertainty: float | None
    call_id: int | None
    flags: list[Any]


def review_queue(
    session: Session,
    run_name: str,
    top: int,
    field_group: str | None = None,
    source: str | None = None,
    inconsistent: bool = False,
) -> list[QueueItem]:
    """The `top` unreviewed generated fields of a run, most uncertain first (ties by image, field)."""
    if field_group is not None and field_group not in FIELD_GROUPS:
        raise ValueError(f"unknown field group {field_group!r}; expected one of {', '.join(FIELD_GROUPS)}")
    if session.execute(text("SELECT 1 FROM runs WHERE name = :n"), {"n": run_name}).first() is None:
        raise ValueError(f"no run named {run_name!r}")
    where = ["run_name = :run"]
    params: dict[str, Any] = {"run": run_name, "top": top}
    if field_group is not None:
        where.append("field = ANY(:fields)")
        params["fields"] = list(FIELD_GROUPS[field_group])
    if source is not None:
        where.append("source = :source")
        params["source"] = source
    if inconsistent:
        where.append("inconsistent")
    rows = session.execute(
        text(
            "SELECT image_id, sha256, source, field, value_text, value_number, value_bool, uncertainty,"
            " summary_call_id, consistency_flags FROM review_queue WHERE "
            + " AND ".join(where)
            + " ORDER BY uncertainty DESC NULLS LAST, image_id, field LIMIT :top"
        ),
        params,
    ).all()
    return [
        QueueItem(
            image_id=r.image_id,
            sha256=r.sha256,
            source=r.source,
            field=r.field,
            value=next((v for v in (r.value_text, r.value_number, r.value_bool) if v is not None), None),
            uncertainty=r.uncertainty,
            call_id=r.summary_call_id,
            flags=list(r.consistency_flags),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ReviewDecision:
    """One person's verdict on one generated field, as read from a review tool's export.

    `where` names the item in the file it came from (e.g. "task 12"), so errors can point at it.
    """

    where: str
    run_name: str
    image_id: int
    field: str
    reviewer: str
    decision: str  # accept | correct | reject
    corrected_value: str | float | bool | None = None


class ReviewFileError(ValueError):
    """A review file that cannot be stored; the message names the item and field."""


def _check_value(d: ReviewDecision) -> None:
    if d.decision not in ("accept", "correct", "reject"):
        raise ReviewFileError(f"{d.where}, field {d.field}: decision {d.decision!r} is not accept, correct or reject")
    if d.decision != "correct":
        return
    value = d.corrected_value
    try:
        FaceLabels.from_field_values({d.field: value})
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise ReviewFileError(f"{d.where}, field {d.field}: corrected value {value!r}: {reason}") from None
    if d.field in ACTION_UNITS and not isinstance(value, bool):
        raise ReviewFileError(f"{d.where}, field {d.field}: corrected value {value!r} is not true/false")
    if d.field in ("valence", "arousal") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ReviewFileError(f"{d.where}, field {d.field}: corrected value {value!r} is not a number")


def generated_annotations(session: Session, items: set[tuple[int, int]]) -> dict[tuple[int, int], list[Annotation]]:
    """The generated annotations of each (run id, image id), ordered by field: one query for a whole file."""
    by_item: dict[tuple[int, int], list[Annotation]] = {}
    if not items:
        return by_item
    rows = session.scalars(
        select(Annotation)
        .where(
            Annotation.run_id.in_({run_id for run_id, _ in items}),
            in_ids(Annotation.image_id, sorted({image_id for _, image_id in items})),
            Annotation.provenance == "generated",
        )
        .order_by(Annotation.field)
    )
    for annotation in rows:
        if (annotation.run_id, annotation.image_id) in items:
            by_item.setdefault((annotation.run_id, annotation.image_id), []).append(annotation)
    return by_item


def record_reviews(session: Session, decisions: list[ReviewDecision]) -> int:
    """Store decisions in `reviews` and their human labels (a later decision on the same field replaces both).

    A `correct` writes the corrected value as a human label of the image, from the source
    `review:<reviewer>`, linked to the review (`human_labels.review_id`, and so to the reviewed
    summary call). An `accept` writes the model's value the same way: a person confirmed it, so the
    next run version embeds it as known and exports mark it reviewed. A `reject` removes the label
    this review had written, if any: the field is left to be generated again.

    Every decision is checked against the run's generated annotations before anything is written,
    and the writes run in a savepoint of the caller's transaction, so a bad file raises
    ReviewFileError and leaves the tables as they were. Returns the decisions stored.
    """
    runs: dict[str, int] = {name: id_ for name, id_ in session.execute(text("SELECT name, id FROM runs"))}
    for d in decisions:
        if d.field not in LABEL_FIELDS:
            raise ReviewFileError(f"{d.where}: unknown field {d.field!r}")
        if d.run_name not in runs:
            raise ReviewFileError(f"{d.where}: no run named {d.run_name!r}")
        if not d.reviewer.strip():
            raise ReviewFileError(f"{d.where}, field {d.field}: no reviewer")
        if len(d.reviewer) > MAX_REVIEWER:
            raise ReviewFileError(f"{d.where}, field {d.field}: reviewer name longer than {MAX_REVIEWER} characters")
        _check_value(d)
    generated = generated_annotations(session, {(runs[d.run_name], d.image_id) for d in decisions})
    found: dict[tuple[str, int, str], Annotation] = {}
    for d in decisions:
        annotation = next((a for a in generated.get((runs[d.run_name], d.image_id), ()) if a.field == d.field), None)
        if annotation is None:
            raise ReviewFileError(
                f"{d.where}, field {d.field}: run {d.run_name!r} generated no {d.field} for image {d.image_id}"
            )
        found[(d.run_name, d.image_id, d.field)] = annotation
    with session.begin_nested():  # a refusal met while writing undoes this call's writes, and only them
        for d in decisions:
            annotation = found[(d.run_name, d.image_id, d.field)]
            row = {
                "run_id": annotation.run_id,
                "image_id": d.image_id,
                "field": d.field,
                "model_value": annotation.value,
                "uncertainty": annotation.uncertainty,
                "reviewer": d.reviewer,
                "decision": d.decision,
                "corrected_value": d.corrected_value if d.decision == "correct" else None,
                "call_id": annotation.summary_call_id,
                "reviewed_at": func.now(),
            }
            statement = insert(Review).values(**row)
            review_id = session.scalar(
                statement.on_conflict_do_update(
                    constraint="uq_reviews_run_id_image_id_field",
                    set_={k: statement.excluded[k] for k in row if k not in ("run_id", "image_id", "field")},
                ).returning(Review.id)
            )
            value = {"correct": d.corrected_value, "accept": annotation.value}.get(d.decision)
            _write_label(session, d, review_id, value)
    return len(decisions)


#: Longest reviewer name: its labels' source `review:<reviewer>` fits source_datasets.name (32).
MAX_REVIEWER = 25


def review_source(session: Session, reviewer: str) -> int:
    """The id of the source dataset `review:<reviewer>`, created on first use."""
    name = f"review:{reviewer}"
    session.execute(insert(SourceDataset).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(SourceDataset.id).where(SourceDataset.name == name)).one()


def _used_by(session: Session, label_id: int) -> list[str]:
    """Runs whose annotations took this label as known (their provenance must keep pointing at it)."""
    return list(
        session.scalars(
            select(Run.name).join(Annotation, Annotation.run_id == Run.id).where(Annotation.human_label_id == label_id).distinct()
        )
    )


def _remove_label(session: Session, d: ReviewDecision, label: HumanLabel) -> None:
    used = _used_by(session, label.id)
    if used:
        raise ReviewFileError(
            f"{d.where}, field {d.field}: the label an earlier decision wrote is a known label of run(s) "
            f"{', '.join(used)}; it cannot be withdrawn now: record a new decision on a later version instead"
        )
    session.delete(label)
    session.flush()


def _write_label(session: Session, d: ReviewDecision, review_id: int, value: str | float | bool | None) -> None:
    """Make the review's human label say `value` (None: remove it).

    The reviewer's source holds one label per image and field: the latest decision on it owns it,
    whichever run it reviewed."""
    own = session.scalars(select(HumanLabel).where(HumanLabel.review_id == review_id)).one_or_none()
    if value is None:
        if own is not None:
            _remove_label(session, d, own)
        return
    source_id = review_source(session, d.reviewer)
    target = session.scalars(
        select(HumanLabel).where(
            HumanLabel.image_id == d.image_id, HumanLabel.source_id == source_id, HumanLabel.field == d.field
        )
    ).one_or_none()
    if own is not None and own is not target:  # the review changed hands: the earlier reviewer's label goes
        _remove_label(session, d, own)
    columns = {"review_id": review_id, "source_file": f"review of run {d.run_name}, {d.where}", **label_columns(value)}
    if target is None:
        session.add(HumanLabel(image_id=d.image_id, source_id=source_id, field=d.field, **columns))
    else:
        for name, column_value in columns.items():
            setattr(target, name, column_value)
    session.flush()
