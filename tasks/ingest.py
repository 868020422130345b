"""Ingest: validate importer candidates, store the bytes, record images and human labels.

Candidates are taken in batches. Per batch: each file is read (confined to
the import root, size-capped), hashed and fully decoded (tasks.images) — in a
process pool when `workers` > 1 — then the objects of images the database
does not hold yet go to the store under their sha256 key (idempotent, atomic;
in parallel threads), and only then one transaction records the batch's
images, subjects and human labels with multi-row inserts. A refused file is
reported and skipped; the import goes on; per-file validation is the same
whatever the batch size or worker count.

Resumable: an import killed at any point leaves whole batches recorded and,
at worst, stored objects of the unfinished batch without rows. Re-running
the import stores them again (a no-op) and records them; `seke store gc`
removes those left by an import that is never re-run. Several processes may
import into one database at once (`shard`): a sha256 is recorded once,
whoever comes first.

The same bytes from a second source keep that source's labels next to the
first's (see models.orm.HumanLabel); no subject is created for an image that
is already present.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.store import ObjectStore, image_key
from models.orm import HumanLabel, Image, SourceDataset, Subject, label_columns
from models.schemas import ImportCandidate, ImportProblem
from tasks.images import MAX_FILE_BYTES, ImageInfo, InvalidImage, load_candidate_bytes, validate_image
from tasks.importers import bad_text

MAX_SUBJECT = 200  # subjects.external_id
#: Deadlocks between concurrent importers (two inserting one subject) are retried this often.
DEADLOCK_RETRIES = 5
#: Candidates per task sent to a pool worker.
POOL_CHUNK = 32


@dataclass
class IngestReport:
    imported: int = 0
    already_present: int = 0
    labels: int = 0
    #: labels a second source added to an image another source imported first
    merged_labels: int = 0
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


@dataclass(frozen=True)
class _Prepared:
    info: ImageInfo
    data: bytes


def prepare(
    candidate: ImportCandidate, root: Path, extra_roots: Sequence[Path], max_bytes: int
) -> _Prepared | ImportProblem:
    """Read (confined), validate and hash one candidate; the unit of work of a pool worker."""
    try:
        data = load_candidate_bytes(candidate, root, extra_roots=extra_roots, max_bytes=max_bytes)
        info = validate_image(data, name=str(candidate.path))
    except InvalidImage as exc:
        return ImportProblem(candidate.path, exc.reason, "refused", cause=exc.cause)
    return _Prepared(info, data)


def prepare_many(
    candidates: list[ImportCandidate], root: Path, extra_roots: Sequence[Path], max_bytes: int
) -> list[_Prepared | ImportProblem]:
    """`prepare` for a chunk: one round trip to a pool worker per chunk, not per image."""
    return [prepare(candidate, root, extra_roots, max_bytes) for candidate in candidates]


def in_shard(candidate: ImportCandidate, shard: tuple[int, int]) -> bool:
    """Whether `candidate` is this process's to import when an import is split `shard` = (index, count) ways.

    Split by subject: two processes never create (and lock) the same subject row at once.
    """
    index, count = shard
    key = f"{candidate.source}/{candidate.subject}".encode("utf-8", "surrogateescape")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index


def _text_problem(candidate: ImportCandidate) -> ImportProblem | None:
    """Names the database cannot store (any importer): a long subject, invalid UTF-8 or NUL in a name."""
    if len(candidate.subject) > MAX_SUBJECT:
        reason = f"subject {candidate.subject[:40]!r}... is {len(candidate.subject)} characters, more than {MAX_SUBJECT}"
        return ImportProblem(candidate.path, reason, "refused", field="subject", cause="invalid text")
    for what, text in (
        ("subject", candidate.subject),
        ("file name", candidate.path.as_posix()),
        *(("label file name", name) for name in candidate.label_files.values()),
    ):
        why = bad_text(text)
        if why:
            return ImportProblem(candidate.path, f"the {what} {why}", "refused", cause="invalid text")
    return None


def ingest(
    items: Iterable[ImportCandidate | ImportProblem],
    root: Path,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    *,
    extra_roots: Sequence[Path] = (),
    workers: int = 1,
    upload_threads: int = 8,
    batch_size: int = 512,
    max_bytes: int = MAX_FILE_BYTES,
    shard: tuple[int, int] = (0, 1),
    on_item: Callable[[int], None] | None = None,
) -> IngestReport:
    """Import every candidate; problems (from the importer or validation) are collected, not raised.

    `extra_roots`: folders besides the import base that files may be read from
    (an explicit frames folder). `workers` > 1 reads, hashes and decodes in
    that many processes; `upload_threads` store objects at once. `shard`
    (index, count) imports only this process's share, for several processes
    sharing one database. `on_item(k)` is called as k more candidates are done.
    """
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    report = IngestReport()
    writer = _BatchWriter(sessions, store, report)
    pool: Executor | None = None
    if workers > 1:
        # fork, where there is one: a spawned worker re-imports the CLI or script that started it (seconds
        # each). The pool starts before this call's own threads, and its workers touch only files, hashlib
        # and Pillow, never a lock another thread of the parent might hold (database, S3 client, console).
        methods = multiprocessing.get_all_start_methods()
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork" if "fork" in methods else "spawn"))
    uploads = ThreadPoolExecutor(max(1, upload_threads), thread_name_prefix="ingest-upload")
    # One writer thread stores and records batch k while this thread (or the pool) prepares batch k + 1:
    # the database round trips and store writes wait on I/O, overlapping the decoding.
    writes = ThreadPoolExecutor(1, thread_name_prefix="ingest-write")
    work = (root, tuple(extra_roots), max_bytes)
    # At most two batches in flight: one being prepared while the previous one is written.
    pending: deque[tuple[list[ImportCandidate], list[Future[list[_Prepared | ImportProblem]]]]] = deque()
    writing: Future[None] | None = None
    try:
        for batch in _batches(items, report, shard, batch_size):
            if pool is None:
                done: Future[list[_Prepared | ImportProblem]] = Future()
                done.set_result(prepare_many(batch, *work))
                pending.append((batch, [done]))
            else:
                chunks = [batch[i : i + POOL_CHUNK] for i in range(0, len(batch), POOL_CHUNK)]
                pending.append((batch, [pool.submit(prepare_many, chunk, *work) for chunk in chunks]))
            if len(pending) > 1:
                writing = _write_next(pending.popleft(), writer, uploads, writes, writing, on_item)
        while pending:
            writing = _write_next(pending.popleft(), writer, uploads, writes, writing, on_item)
        if writing is not None:
            writing.result()
    finally:
        writes.shutdown(wait=True, cancel_futures=True)
        uploads.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return report


def _batches(
    items: Iterable[ImportCandidate | ImportProblem], report: IngestReport, shard: tuple[int, int], size: int
) -> Iterator[list[ImportCandidate]]:
    batch: list[ImportCandidate] = []
    for item in items:
        if isinstance(item, ImportProblem):
            report.problems.append(item)
            continue
        if shard[1] > 1 and not in_shard(item, shard):
            continue
        problem = _text_problem(item)
        if problem is not None:
            report.problems.append(problem)
            continue
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_next(
    entry: tuple[list[ImportCandidate], list[Future[list[_Prepared | ImportProblem]]]],
    writer: _BatchWriter,
    uploads: ThreadPoolExecutor,
    writes: ThreadPoolExecutor,
    writing: Future[None] | None,
    on_item: Callable[[int], None] | None,
) -> Future[None]:
    """Hand a prepared batch to the writer thread, after the batch before it is written (order, bounded memory)."""
    batch, futures = entry
    outcomes = [outcome for future in futures for outcome in future.result()]
    prepared: list[tuple[ImportCandidate, _Prepared]] = []
    for candidate, outcome in zip(batch, outcomes):
        if isinstance(outcome, ImportProblem):
            writer.report.problems.append(outcome)
        else:
            prepared.append((candidate, outcome))
    if writing is not None:
        writing.result()  # re-raises a failed write here

    def write() -> None:
        writer.write(prepared, uploads)
        if on_item is not None:
            on_item(len(batch))

    return writes.submit(write)


class _BatchWriter:
    """Stores and records prepared batches: objects first, then one transaction per batch."""

    def __init__(self, sessions: sessionmaker[Session], store: ObjectStore, report: IngestReport) -> None:
        self.sessions = sessions
        self.store = store
        self.report = report
        self._source_ids: dict[str, int] = {}

    def write(self, prepared: list[tuple[ImportCandidate, _Prepared]], uploads: ThreadPoolExecutor) -> None:
        if not prepared:
            return
        with self.sessions() as session:
            present = dict(
                session.execute(
                    select(Image.sha256, Image.id).where(Image.sha256.in_({p.info.sha256 for _, p in prepared}))
                ).all()
            )
        # Object first: if the transaction below never commits, the object is complete and
        # unreferenced, and the next import (or `seke store gc`) finds it.
        new: dict[str, _Prepared] = {p.info.sha256: p for _, p in prepared if p.info.sha256 not in present}
        for future in [uploads.submit(self._put, p) for p in new.values()]:
            future.result()
        source_ids = {c.source: self._source_id(c.source) for c, _ in prepared}
        for attempt in range(DEADLOCK_RETRIES):
            try:
                with self.sessions.begin() as session:
                    counts = self._record(session, prepared, source_ids)
                break
            except OperationalError as exc:  # a deadlock with a concurrent importer: the batch is retried whole
                if "deadlock" not in str(exc.orig).lower() or attempt == DEADLOCK_RETRIES - 1:
                    raise
        imported, present_count, labels, merged, per_source = counts
        self.report.imported += imported
        self.report.already_present += present_count
        self.report.labels += labels
        self.report.merged_labels += merged
        self.report.per_source.update(per_source)

    def _put(self, prepared: _Prepared) -> None:
        self.store.put_bytes(image_key(prepared.info.sha256, prepared.info.format), prepared.data)

    def _source_id(self, name: str) -> int:
        """The source's id, committed on its own (so a retried batch never holds a rolled-back id)."""
        if name not in self._source_ids:
            with self.sessions.begin() as session:
                session.execute(insert(SourceDataset).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
                self._source_ids[name] = session.scalar(select(SourceDataset.id).where(SourceDataset.name == name))  # type: ignore[assignment]
        return self._source_ids[name]

    def _record(
        self, session: Session, prepared: list[tuple[ImportCandidate, _Prepared]], source_ids: dict[str, int]
    ) -> tuple[int, int, int, int, Counter[str]]:
        """Record one batch; returns (imported, already present, labels, merged labels, imported per source)."""
        shas = {p.info.sha256 for _, p in prepared}
        existing = dict(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(shas))).all())
        # The first candidate of each new sha256 in the batch creates the image.
        owners: dict[str, tuple[ImportCandidate, _Prepared]] = {}
        for candidate, p in prepared:
            if p.info.sha256 not in existing:
                owners.setdefault(p.info.sha256, (candidate, p))
        subject_ids = self._subjects(session, [c for c, _ in owners.values()], source_ids)
        created: dict[str, int] = {}
        if owners:
            rows = [
                {
                    "sha256": p.info.sha256,
                    "object_key": image_key(p.info.sha256, p.info.format),
                    "width": p.info.width,
                    "height": p.info.height,
                    "format": p.info.format,
                    "byte_size": len(p.data),
                    "original_path": c.path.as_posix(),  # relative to the import root
                    "source_id": source_ids[c.source],
                    "subject_id": subject_ids[(c.source, c.subject)][0],
                    "split": subject_ids[(c.source, c.subject)][1],
                }
                for c, p in sorted(owners.values(), key=lambda item: item[1].info.sha256)
            ]
            statement = insert(Image).on_conflict_do_nothing(index_elements=["sha256"]).returning(Image.sha256, Image.id)
            created = dict(session.execute(statement, rows).all())
            missing = shas - existing.keys() - created.keys()
            if missing:  # recorded by a concurrent importer since we looked
                existing.update(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(missing))).all())
        image_ids = {**existing, **created}
        label_rows: list[dict[str, Any]] = []
        for candidate, p in prepared:  # owners first, so the first source's labels get the lowest ids
            for name, value in candidate.labels.field_values().items():
                label_rows.append(
                    {
                        "image_id": image_ids[p.info.sha256],
                        "source_id": source_ids[candidate.source],
                        "field": name,
                        "source_file": candidate.label_files.get(name, candidate.path.as_posix()),
                        **label_columns(value),
                    }
                )
        inserted: list[int] = []
        if label_rows:
            statement = (
                insert(HumanLabel)
                .on_conflict_do_nothing(index_elements=["image_id", "source_id", "field"])
                .returning(HumanLabel.image_id)
            )
            inserted = list(session.scalars(statement, label_rows))
        new_ids = set(created.values())
        labels = sum(1 for image_id in inserted if image_id in new_ids)
        per_source = Counter(c.source for sha, (c, _) in owners.items() if sha in created)
        imported = len(created)
        return imported, len(prepared) - imported, labels, len(inserted) - labels, per_source

    def _subjects(
        self, session: Session, candidates: list[ImportCandidate], source_ids: dict[str, int]
    ) -> dict[tuple[str, str], tuple[int, str | None]]:
        """{(source, subject): (id, split)} for the subjects of new images, created as needed.

        An explicit split from the source layout (folder train/test) is set only on a subject
        that has none yet. Keys are inserted in sorted order, so concurrent importers lock
        them in one order.
        """
        wanted: dict[tuple[str, str], str | None] = {}
        for candidate in candidates:
            key = (candidate.source, candidate.subject)
            if wanted.get(key) is None:
                wanted[key] = candidate.split.value if candidate.split is not None else None
        if not wanted:
            return {}
        rows = [{"source_id": source_ids[s], "external_id": e} for s, e in sorted(wanted)]
        session.execute(insert(Subject).on_conflict_do_nothing(index_elements=["source_id", "external_id"]), rows)
        by_source: dict[int, list[str]] = {}
        for source, external in wanted:
            by_source.setdefault(source_ids[source], []).append(external)
        names = {source_id: source for source, source_id in source_ids.items()}
        found: dict[tuple[str, str], tuple[int, str | None]] = {}
        for source_id, externals in by_source.items():
            for subject_id, external, split in session.execute(
                select(Subject.id, Subject.external_id, Subject.split).where(
                    Subject.source_id == source_id, Subject.external_id.in_(externals)
                )
            ):
                key = (names[source_id], external)
                if split is None and wanted[key] is not None:
                    session.execute(
                        update(Subject).where(Subject.id == subject_id, Subject.split.is_(None)).values(split=wanted[key])
                    )
                    split = wanted[key]
                found[key] = (subject_id, split)
        return found


@dataclass
class GcReport:
    #: image objects in the store that no image row references, old enough to be no import's work in progress
    orphans: list[str] = field(default_factory=list)
    #: of those, removed (none on a dry run)
    removed: int = 0
    #: unreferenced objects younger than the grace period, left alone
    recent: int = 0


def collect_garbage(
    sessions: sessionmaker[Session], store: ObjectStore, *, grace_s: float = 3600.0, dry_run: bool = False, now: float | None = None
) -> GcReport:
    """Find (and unless `dry_run`, remove) stored images no row references: what a killed, never re-run import left.

    An import stores an object moments before it records its row, so objects
    younger than `grace_s` are left alone: they may be a running import's.
    """
    now = time.time() if now is None else now
    report = GcReport()
    listed = store.list_objects("images/")
    while objects := list(islice(listed, 1000)):
        with sessions() as session:
            known = set(session.scalars(select(Image.object_key).where(Image.object_key.in_([k for k, _ in objects]))))
        for key, modified in objects:
            if key in known:
                continue
            if now - modified < grace_s:
                report.recent += 1
                continue
            report.orphans.append(key)
            if not dry_run:
                store.delete(key)
                report.removed += 1
    return report
