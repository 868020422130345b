"""ExpW (Expression in-the-Wild) importer.

Layout, as distributed::

    label/label.lst     lines "<image name> <face id> <top> <left> <right> <bottom> <confidence> <expression>"
    image/origin/<image name>

One line per face; a web image may hold several faces, so each face is
stored as its own crop (the face box). Expression: 0 angry, 1 disgust,
2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral. ExpW publishes no subject
ids: each image is one subject, which keeps all faces of one photo on one
side of the split. An image name with a folder, '..' or an absolute path
is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from models.labels import Expression, FaceLabels
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    label_file,
    missing_image,
    numbered_lines,
    refused,
    safe_relative,
)

SOURCE = "expw"
LABEL_FILE = Path("label/label.lst")
CODES: dict[str, Expression] = {
    "0": "anger",
    "1": "disgust",
    "2": "fear",
    "3": "happiness",
    "4": "sadness",
    "5": "surprise",
    "6": "neutral",
}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    labels_path = root / LABEL_FILE
    if not labels_path.exists():
        yield refused(labels_path, root, "ExpW label list not found; expected label/label.lst", cause="no recognised layout")
        return
    try:
        lines = numbered_lines(labels_path, root)
    except LabelFileError as exc:
        yield exc.problem
        return
    source_file = label_file(labels_path, root)
    for number, text in lines:
        parts = text.split()
        if len(parts) != 8 or not all(part.lstrip("-").isdigit() for part in parts[1:6]):
            yield refused(labels_path, root, f"expected 8 fields '<image> <face> <top> <left> <right> <bottom> <conf> <code>', got {text!r}", line=number)
            continue
        name, face, top, left, right, bottom, _, code = parts
        plain = safe_relative(name)
        if plain is None or len(plain.parts) != 1:
            reason = f"image name {name!r} is not a plain file name; row skipped"
            yield refused(labels_path, root, reason, line=number, cause="path escapes the import root")
            continue
        expression = CODES.get(code)
        if expression is None:
            yield refused(labels_path, root, f"expression code {code!r} is not one of 0-6; face skipped", line=number, field="expression")
            continue
        image = root / "image" / "origin" / name
        if not image.is_file():
            yield missing_image(image, labels_path, root, line=number)
            continue
        yield ImportCandidate(
            source=SOURCE,
            subject=Path(name).stem,
            path=image.relative_to(root),
            labels=FaceLabels(expression=expression),
            label_files={"expression": source_file},
            crop_box=(int(left), int(top), int(right), int(bottom)),
        )


IMPORTER = Importer(
    name=SOURCE,
    title="ExpW",
    read=read,
    layout="label/label.lst with image/origin/; each labelled face stored as its crop",
)
