"""Read-only summaries of what the database holds, for the CLI and artifacts."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS
from models.orm import HumanLabel, Image, SourceDataset


def image_stats(session: Session) -> list[tuple[str, str, int, int, int, int, int]]:
    """(source, split, images, subjects, with expression, with valence+arousal, with any AU) rows."""

    def labelled(*fields: str, all_of: bool = False):
        have = (
            select(func.count(func.distinct(HumanLabel.field)))
            .where(HumanLabel.image_id == Image.id, HumanLabel.field.in_(fields))
            .scalar_subquery()
        )
        needed = len(fields) if all_of else 1
        return func.count().filter(have >= needed)

    query = (
        select(
            SourceDataset.name,
            func.coalesce(Image.split, "unsplit"),
            func.count(),
            func.count(func.distinct(Image.subject_id)),
            labelled("expression"),
            labelled("valence", "arousal", all_of=True),
            labelled(*ACTION_UNITS),
        )
        .join(SourceDataset, Image.source_id == SourceDataset.id)
        .group_by(SourceDataset.name, Image.split)
        .order_by(SourceDataset.name, Image.split)
    )
    return [tuple(row) for row in session.execute(query).all()]  # type: ignore[misc]
