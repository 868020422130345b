"""Ingest: validate importer candidates, store the bytes, record images and human labels.

Per image: bytes are validated (tasks.images) before anything is written,
the object goes to the store under its sha256 key (idempotent, atomic), then
one database transaction records the image and its human labels. A refused
file is reported and skipped; the import goes on. Re-importing the same bytes
is a no-op.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from models.orm import HumanLabel, Image, SourceDataset, Subject, label_columns
from models.schemas import ImportCandidate, ImportProblem
from core.store import ObjectStore, image_key
from tasks.images import ImageInfo, InvalidImage, load_candidate_bytes, validate_image


@dataclass
class IngestReport:
    imported: int = 0
    already_present: int = 0
    labels: int = 0
    problems: list[ImportProblem] = field(default_factory=list)
    per_source: Counter[str] = field(default_factory=Counter)

    @property
    def refused(self) -> list[ImportProblem]:
        """Files and records not imported."""
        return [problem for problem in self.problems if problem.kind == "refused"]

    @property
    def dropped(self) -> list[ImportProblem]:
        """Values left missing on images that were imported."""
        return [problem for problem in self.problems if problem.kind == "dropped"]

    def refused_by_cause(self) -> Counter[str]:
        return Counter(problem.cause for problem in self.refused)


def _get_or_create_source(session: Session, name: str) -> int:
    session.execute(insert(SourceDataset).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalar(select(SourceDataset.id).where(SourceDataset.name == name))  # type: ignore[return-value]


def _get_or_create_subject(session: Session, source_id: int, external_id: str) -> Subject:
    session.execute(
        insert(Subject)
        .values(source_id=source_id, external_id=external_id)
        .on_conflict_do_nothing(index_elements=["source_id", "external_id"])
    )
    return session.scalars(
        select(Subject).where(Subject.source_id == source_id, Subject.external_id == external_id)
    ).one()


def _record(session: Session, candidate: ImportCandidate, info: ImageInfo, byte_size: int) -> int | None:
    """Insert the image and its labels; None when these bytes are already in the database."""
    source_id = _get_or_create_source(session, candidate.source)
    subject = _get_or_create_subject(session, source_id, candidate.subject)
    # An explicit split from the source layout (folder train/test) wins only for a new subject.
    if subject.split is None and candidate.split is not None:
        subject.split = candidate.split.value
    image_id = session.scalar(
        insert(Image)
        .values(
            sha256=info.sha256,
            object_key=image_key(info.sha256, info.format),
            width=info.width,
            height=info.height,
            format=info.format,
            byte_size=byte_size,
            original_path=candidate.path.as_posix(),  # relative to the import root
            source_id=source_id,
            subject_id=subject.id,
            split=subject.split,
        )
        .on_conflict_do_nothing(index_elements=["sha256"])
        .returning(Image.id)
    )
    if image_id is None:
        return None
    for name, value in candidate.labels.field_values().items():
        session.add(
            HumanLabel(
                image_id=image_id,
                field=name,
                source_file=candidate.label_files.get(name, candidate.path.as_posix()),
                **label_columns(value),
            )
        )
    return image_id


def ingest(
    items: Iterable[ImportCandidate | ImportProblem],
    root: Path,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    *,
    on_item: Callable[[], None] | None = None,
) -> IngestReport:
    """Import every candidate; problems (from the importer or validation) are collected, not raised."""
    report = IngestReport()
    for item in items:
        if on_item is not None:
            on_item()
        if isinstance(item, ImportProblem):
            report.problems.append(item)
            continue
        try:
            data = load_candidate_bytes(item, root)
            info = validate_image(data, name=str(item.path))
        except InvalidImage as exc:
            report.problems.append(ImportProblem(item.path, exc.reason, "refused", cause=exc.cause))
            continue
        key = image_key(info.sha256, info.format)
        # Object first: if the transaction below fails, the stored object is complete
        # and unreferenced, and the next import finds it and records it.
        if not store.exists(key):
            store.put_bytes(key, data)
        with sessions.begin() as session:
            image_id = _record(session, item, info, len(data))
        if image_id is None:
            report.already_present += 1
        else:
            report.imported += 1
            report.labels += len(item.labels.field_values())
            report.per_source[item.source] += 1
    return report
