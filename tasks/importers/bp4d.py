"""BP4D(-Spontaneous) importer.

Layout, as distributed::

    AU_OCC/F001_T1.csv     header "0,1,2,4,6,...": the frame column, then AU numbers;
                           one row per frame, values 0 / 1, 9 = not coded
    F001/T1/0001.jpg       frames (or options.frames_dir/F001/T1/; any zero padding)

Only the schema's AUs are kept (BP4D's files carry more columns than the 12
AUs it is usually evaluated on); 9 leaves the AU missing. Every
`options.frame_stride`-th coded frame is imported. Subject: the part of the
file name before the task (F001, M012).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path

from models.labels import FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    dropped,
    frame_index,
    glob_files,
    label_file,
    missing_image,
    open_label_text,
    parse_number,
    refused,
    relative,
    strided,
)
from tasks.importers._demo import write_csv, write_image
from tasks.synthetic import sample_labels

SOURCE = "bp4d"
NOT_CODED = 9


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    occurrence_files, problems = glob_files(root / "AU_OCC", "*.csv", root)
    yield from problems
    if not occurrence_files:
        reason = "no BP4D occurrence files found; expected AU_OCC/<subject>_<task>.csv"
        yield refused(root / "AU_OCC", root, reason, cause="no recognised layout")
    for path in occurrence_files:
        yield from _read_sequence(path, root, options)


def _read_sequence(path: Path, root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    subject, _, task = path.stem.partition("_")
    if not task:
        yield refused(path, root, "file name is not <subject>_<task>.csv (e.g. F001_T1.csv)")
        return
    try:
        with open_label_text(path, root) as handle:
            rows = list(csv.reader(handle))
    except LabelFileError as exc:
        yield exc.problem
        return
    except csv.Error as exc:
        yield refused(path, root, f"malformed CSV ({exc}); file skipped")
        return
    if not rows:
        yield refused(path, root, "empty occurrence file")
        return
    columns = [_schema_au(cell) for cell in rows[0][1:]]
    if not any(columns):
        yield refused(path, root, f"header {','.join(rows[0])!r} names none of the schema's AUs", line=1)
        return
    by_frame: dict[int, dict[str, bool]] = {}
    line_of: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        frame = parse_number(row[0]) if row else None
        if len(row) != len(rows[0]) or frame is None or not frame.is_integer():
            yield refused(path, root, f"expected a frame number and {len(columns)} values, got {','.join(row)!r}", line=line)
            continue
        aus: dict[str, bool] = {}
        for au, cell in zip(columns, row[1:]):
            value = parse_number(cell)
            if au is None or value == NOT_CODED:
                continue
            if value not in (0, 1):
                yield dropped(path, root, f"{cell!r} is not 0, 1 or 9; left missing", line=line, field=au)
                continue
            aus[au] = value == 1
        if aus:
            by_frame[int(frame)] = aus
            line_of[int(frame)] = line
    frames_root = (options.frames_dir or root) / subject / task
    frames, problems = frame_index(frames_root, options.frames_dir or root)
    yield from problems
    source_file = label_file(path, root)
    for frame in strided(sorted(by_frame), options.frame_stride):
        image = frames.get(frame)
        if image is None:
            yield missing_image(frames_root / f"{frame:04d}.jpg", path, root, line=line_of[frame])
            continue
        yield ImportCandidate(
            source=SOURCE,
            subject=subject,
            path=relative(image, root),
            labels=FaceLabels(aus=by_frame[frame]),
            label_files={au: source_file for au in by_frame[frame]},
        )


def _schema_au(cell: str) -> str | None:
    try:
        return normalise_au_name(cell)
    except ValueError:
        return None  # a BP4D AU outside the schema's 17


COLUMNS = (1, 2, 4, 6, 7, 10, 11, 12, 14, 15, 17, 23, 24)  # demo columns; 11 is outside the schema: ignored


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """One task per subject with frame numbers not starting at 1, a non-schema column and one 9 ("not coded")."""
    for s, frames in enumerate(groups):
        subject, task = f"{'FM'[s % 2]}{s // 2 + 1:03d}", f"T{s % 8 + 1}"
        first = rng.randint(1, 900)
        rows = []
        for frame in range(first, first + frames):
            labels = sample_labels(rng)
            write_image(root / f"{subject}/{task}/{frame:04d}.jpg", labels, subject, rng, "JPEG")
            cells = [int(labels.aus.get(f"AU{number}", False)) for number in COLUMNS]
            if frame == first:
                cells[-1] = NOT_CODED
            rows.append([frame, *cells])
        write_csv(root / f"AU_OCC/{subject}_{task}.csv", [0, *COLUMNS], rows)


IMPORTER = Importer(
    name=SOURCE,
    title="BP4D",
    read=read,
    layout="AU_OCC/<subject>_<task>.csv with frames in <subject>/<task>/ (or --frames-dir)",
    order=50,
    demo=write_demo,
    demo_weight=3,
    per_subject=3,
)
