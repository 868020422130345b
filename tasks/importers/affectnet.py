"""AffectNet (manually annotated part) importer.

Layout, as distributed::

    Manually_Annotated_file_lists/training.csv, validation.csv   (or *.csv in the root)
    Manually_Annotated_Images/<subDirectory_filePath>              (or the path relative to the root)

CSV header: subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal.

Expression: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
6 anger, 7 contempt; 8 none and 9 uncertain leave it missing; 10 (no face)
refuses the image, which is not a face. Valence / arousal in [-1, 1];
-2 marks "not annotated". Any other code or value is reported and left
missing. With `crop_faces`, the face box becomes the candidate's crop box.

AffectNet publishes no subject ids (web images), so each image stem is its
own subject.
"""

from __future__ import annotations

import csv
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import Expression, FaceLabels
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import label_file, missing_image, parse_number, problem

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "affectnet"
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
CODES: dict[int, Expression] = {
    0: "neutral",
    1: "happiness",
    2: "sadness",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
}
NO_EXPRESSION_CODES = (8, 9)  # none, uncertain: a valid image with no expression label
NO_FACE_CODE = 10
VA_NOT_ANNOTATED = -2.0


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    lists = sorted(root.glob("*.csv")) + sorted(root.glob("Manually_Annotated_file_lists/*.csv"))
    if not lists:
        yield problem(root, root, "no AffectNet CSV found (expected Manually_Annotated_file_lists/*.csv or *.csv)")
    for csv_path in lists:
        yield from _read_list(csv_path, root, options)


def _read_list(csv_path: Path, root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c != "facial_landmarks"]
        if missing:
            yield problem(csv_path, root, f"not an AffectNet list: missing columns {', '.join(missing)}", line=1)
            return
        source_file = label_file(csv_path, root)
        for row in reader:
            line = reader.line_num
            name = row["subDirectory_filePath"] or ""
            image = _image_for(root, name)
            if image is None:
                yield missing_image(root / "Manually_Annotated_Images" / name, csv_path, root, line=line)
                continue
            code = parse_number(row["expression"] or "")
            if code == NO_FACE_CODE:
                yield problem(csv_path, root, "AffectNet marks this image as 'no face' (code 10); not imported", line=line)
                continue
            values: dict[str, object] = {}
            if code is not None and code.is_integer() and int(code) in CODES:
                values["expression"] = CODES[int(code)]
            elif code is None or code not in NO_EXPRESSION_CODES:
                reason = f"code {row['expression']!r} is not one of 0-10; left missing"
                yield problem(csv_path, root, reason, line=line, field="expression")
            for field in ("valence", "arousal"):
                value = yield from _va(row[field] or "", csv_path, root, line, field)
                if value is not None:
                    values[field] = value
            crop_box = (yield from _face_box(row, csv_path, root, line)) if options.crop_faces else None
            yield ImportCandidate(
                source=SOURCE,
                subject=image.stem,
                path=image.relative_to(root),
                labels=FaceLabels.from_field_values(values),
                label_files={field: source_file for field in values},
                crop_box=crop_box,
            )


def _image_for(root: Path, name: str) -> Path | None:
    if not name:
        return None
    for candidate in (root / "Manually_Annotated_Images" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def _va(text: str, path: Path, root: Path, line: int, field: str) -> Generator[ImportProblem, None, float | None]:
    value = parse_number(text)
    if value == VA_NOT_ANNOTATED:
        return None
    if value is None or not -1.0 <= value <= 1.0:
        yield problem(path, root, f"{text!r} is not in [-1, 1] (nor -2, not annotated); left missing", line=line, field=field)
        return None
    return value


def _face_box(
    row: dict[str, str], path: Path, root: Path, line: int
) -> Generator[ImportProblem, None, tuple[int, int, int, int] | None]:
    numbers = [parse_number(row[c] or "") for c in ("face_x", "face_y", "face_width", "face_height")]
    ints = [int(n) for n in numbers if n is not None and n.is_integer()]
    if len(ints) != 4 or ints[2] <= 0 or ints[3] <= 0:
        reason = "face box is not four integers with positive size; the whole image is kept"
        yield problem(path, root, reason, line=line, field="face_x")
        return None
    x, y, width, height = ints
    return (x, y, x + width, y + height)
