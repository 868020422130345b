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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    frame_index,
    label_file,
    missing_image,
    parse_number,
    problem,
    relative,
    strided,
)

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "bp4d"
NOT_CODED = 9


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    occurrence_files = sorted((root / "AU_OCC").glob("*.csv"))
    if not occurrence_files:
        yield problem(root / "AU_OCC", root, "no BP4D occurrence files found; expected AU_OCC/<subject>_<task>.csv")
    for path in occurrence_files:
        yield from _read_sequence(path, root, options)


def _read_sequence(path: Path, root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    subject, _, task = path.stem.partition("_")
    if not task:
        yield problem(path, root, "file name is not <subject>_<task>.csv (e.g. F001_T1.csv)")
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        yield problem(path, root, "empty occurrence file")
        return
    columns = [_schema_au(cell) for cell in rows[0][1:]]
    if not any(columns):
        yield problem(path, root, f"header {','.join(rows[0])!r} names none of the schema's AUs", line=1)
        return
    by_frame: dict[int, dict[str, bool]] = {}
    line_of: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        frame = parse_number(row[0]) if row else None
        if len(row) != len(rows[0]) or frame is None or not frame.is_integer():
            yield problem(path, root, f"expected a frame number and {len(columns)} values, got {','.join(row)!r}", line=line)
            continue
        aus: dict[str, bool] = {}
        for au, cell in zip(columns, row[1:]):
            value = parse_number(cell)
            if au is None or value == NOT_CODED:
                continue
            if value not in (0, 1):
                yield problem(path, root, f"{cell!r} is not 0, 1 or 9; left missing", line=line, field=au)
                continue
            aus[au] = value == 1
        if aus:
            by_frame[int(frame)] = aus
            line_of[int(frame)] = line
    frames_root = (options.frames_dir or root) / subject / task
    frames = frame_index(frames_root)
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
