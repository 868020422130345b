"""Subject-disjoint split: about 1/10 of each source's subjects go to FEAB (paper §4.1).

A subject's split is decided once and stored on the subject; images follow
their subject. New subjects are placed in the order of a seeded hash, so the
assignment is reproducible and earlier decisions never move when more images
arrive: adding data can only add subjects to either side.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.labels import Split
from models.orm import Image, SourceDataset, Subject


@dataclass(frozen=True)
class SplitCounts:
    source: str
    subjects_feid: int
    subjects_feab: int
    newly_assigned: int


def _rank(seed: int, source: str, subject: str) -> str:
    return hashlib.sha256(f"{seed}:{source}:{subject}".encode()).hexdigest()


def feab_target(total_subjects: int, fraction: float) -> int:
    """How many subjects FEAB should hold; at least one once a source has two subjects."""
    if total_subjects < 2:
        return 0
    return max(1, round(total_subjects * fraction))


def assign_splits(session: Session, *, seed: int = 0, fraction: float = 0.1) -> list[SplitCounts]:
    """Assign every unassigned subject, then copy subject splits onto their images."""
    rows = session.execute(
        select(Subject, SourceDataset.name).join(SourceDataset, Subject.source_id == SourceDataset.id)
    ).all()
    by_source: dict[str, list[Subject]] = defaultdict(list)
    for subject, source in rows:
        by_source[source].append(subject)

    counts = []
    for source, subjects in sorted(by_source.items()):
        feab = sum(s.split == Split.FEAB for s in subjects)
        target = feab_target(len(subjects), fraction)
        new = sorted((s for s in subjects if s.split is None), key=lambda s: _rank(seed, source, s.external_id))
        for subject in new:
            if feab < target:
                subject.split = Split.FEAB.value
                feab += 1
            else:
                subject.split = Split.FEID.value
        counts.append(SplitCounts(source, len(subjects) - feab, feab, len(new)))
    session.flush()
    session.execute(
        update(Image)
        .where(Image.subject_id == Subject.id, Image.split.is_distinct_from(Subject.split))
        .values(split=Subject.split)
    )
    return counts
