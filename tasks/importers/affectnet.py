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
own subject. An image path with '..' or an absolute path is refused.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Generator, Iterator
from pathlib import Path

from models.labels import Expression, FaceLabels
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    dropped,
    glob_files,
    label_file,
    missing_image,
    open_label_text,
    parse_number,
    refused,
    safe_relative,
)
from tasks.importers._demo import write_csv, write_image
from tasks.synthetic import sample_labels

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
    top, problems = glob_files(root, "*.csv", root)
    nested, more = glob_files(root / "Manually_Annotated_file_lists", "*.csv", root)
    yield from problems + more
    if not top + nested:
        reason = "no AffectNet CSV found (expected Manually_Annotated_file_lists/*.csv or *.csv)"
        yield refused(root, root, reason, cause="no recognised layout")
    for csv_path in top + nested:
        yield from _read_list(csv_path, root, options)


def _rows(reader: csv.DictReader) -> Iterator[dict[str, str] | csv.Error]:
    """The reader's rows; a malformed row (e.g. a field over the csv module's limit) comes as its error."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc


def _read_list(csv_path: Path, root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    try:
        handle = open_label_text(csv_path, root)
    except LabelFileError as exc:
        yield exc.problem
        return
    with handle:
        reader = csv.DictReader(handle)
        try:
            fieldnames = reader.fieldnames or []
        except csv.Error as exc:
            yield refused(csv_path, root, f"unreadable CSV header: {exc}", line=1)
            return
        missing = [c for c in COLUMNS if c not in fieldnames and c != "facial_landmarks"]
        if missing:
            yield refused(csv_path, root, f"not an AffectNet list: missing columns {', '.join(missing)}", line=1)
            return
        source_file = label_file(csv_path, root)
        for row in _rows(reader):
            line = reader.line_num
            if isinstance(row, csv.Error):  # the failing line is consumed but not yet counted in line_num
                yield refused(csv_path, root, f"malformed CSV row ({row}); row skipped", line=line + 1)
                continue
            name = row["subDirectory_filePath"] or ""
            relative_name = safe_relative(name)
            if relative_name is None:
                reason = f"image path {name!r} is empty, absolute or leaves the import root; row skipped"
                yield refused(csv_path, root, reason, line=line, field="subDirectory_filePath", cause="path escapes the import root")
                continue
            image = _image_for(root, str(relative_name))
            if image is None:
                yield missing_image(root / "Manually_Annotated_Images" / name, csv_path, root, line=line)
                continue
            code = parse_number(row["expression"] or "")
            if code == NO_FACE_CODE:
                reason = "AffectNet marks this image as 'no face' (code 10); not imported"
                yield refused(csv_path, root, reason, line=line, cause="not a face")
                continue
            values: dict[str, object] = {}
            if code is not None and code.is_integer() and int(code) in CODES:
                values["expression"] = CODES[int(code)]
            elif code is None or code not in NO_EXPRESSION_CODES:
                reason = f"code {row['expression']!r} is not one of 0-10; left missing"
                yield dropped(csv_path, root, reason, line=line, field="expression")
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
    for candidate in (root / "Manually_Annotated_Images" / name, root / name):
        if candidate.is_file():
            return candidate
    return None


def _va(text: str, path: Path, root: Path, line: int, field: str) -> Generator[ImportProblem, None, float | None]:
    value = parse_number(text)
    if value == VA_NOT_ANNOTATED:
        return None
    if value is None or not -1.0 <= value <= 1.0:
        yield dropped(path, root, f"{text!r} is not in [-1, 1] (nor -2, not annotated); left missing", line=line, field=field)
        return None
    return value


def _face_box(
    row: dict[str, str], path: Path, root: Path, line: int
) -> Generator[ImportProblem, None, tuple[int, int, int, int] | None]:
    numbers = [parse_number(row[c] or "") for c in ("face_x", "face_y", "face_width", "face_height")]
    ints = [int(n) for n in numbers if n is not None and n.is_integer()]
    if len(ints) != 4 or ints[2] <= 0 or ints[3] <= 0:
        reason = "face box is not four integers with positive size; the whole image is kept"
        yield dropped(path, root, reason, line=line, field="face_x")
        return None
    x, y, width, height = ints
    return (x, y, x + width, y + height)


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """JPEGs in numbered sub-folders, with expression and valence / arousal, listed in training.csv."""
    codes = {expression: code for code, expression in CODES.items()}
    rows = []
    for i in range(sum(groups)):
        name = f"{i % 7 + 1}/{rng.getrandbits(160):040x}.jpg"
        labels = sample_labels(rng)
        write_image(root / "Manually_Annotated_Images" / name, labels, name, rng, "JPEG")
        rows.append([name, 0, 0, 128, 128, "", codes[labels.expression], labels.valence, labels.arousal])  # type: ignore[index]
    write_csv(root / "Manually_Annotated_file_lists/training.csv", list(COLUMNS), rows)


IMPORTER = Importer(
    name=SOURCE,
    title="AffectNet",
    read=read,
    layout="Manually_Annotated_file_lists/*.csv with Manually_Annotated_Images/; --crop-faces stores the face box",
    order=30,
    demo=write_demo,
    demo_weight=2,
)
