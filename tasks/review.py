"""The review queue: a run's generated labels, most uncertain first (UAMC's normalised uncertainty).

Reads the `review_queue` view (migration 0009), which leaves out fields already reviewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS

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
