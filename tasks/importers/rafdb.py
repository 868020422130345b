"""RAF-DB (basic emotion subset) importer.

Layout, as distributed::

    EmoLabel/list_patition_label.txt    lines "train_00001.jpg 5"
    Image/aligned/train_00001_aligned.jpg   (preferred: the face crops)
    Image/original/train_00001.jpg          (used when no aligned crop exists)

Codes: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger,
7 neutral. RAF-DB's own train/test partition is not used: the platform makes
its own subject-disjoint split. An image name is a plain file name: one with
a folder, '..' or an absolute path is refused.

RAF-DB publishes no subject ids (images are collected from the internet), so
each image stem is its own subject; near-duplicates of one person across
images cannot be grouped and may land on both sides of the split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from models.labels import Expression, FaceLabels
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    dropped,
    label_file,
    missing_image,
    numbered_lines,
    refused,
    safe_relative,
)
from tasks.importers._demo import no_contempt, write_image, write_text

SOURCE = "rafdb"
LABEL_FILE = Path("EmoLabel/list_patition_label.txt")
CODES: dict[str, Expression] = {
    "1": "surprise",
    "2": "fear",
    "3": "disgust",
    "4": "happiness",
    "5": "sadness",
    "6": "anger",
    "7": "neutral",
}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    labels_path = root / LABEL_FILE
    if not labels_path.exists():
        reason = "RAF-DB label list not found; expected EmoLabel/list_patition_label.txt"
        yield refused(labels_path, root, reason, cause="no recognised layout")
        return
    try:
        lines = numbered_lines(labels_path, root)
    except LabelFileError as exc:
        yield exc.problem
        return
    for number, text in lines:
        parts = text.split()
        if len(parts) != 2:
            yield refused(labels_path, root, f"expected '<image name> <code>', got {text!r}", line=number)
            continue
        name, code = parts
        plain = safe_relative(name)
        if plain is None or len(plain.parts) != 1:
            reason = f"image name {name!r} is not a plain file name; row skipped"
            yield refused(labels_path, root, reason, line=number, cause="path escapes the import root")
            continue
        image = _image_for(root, name)
        if image is None:
            yield missing_image(root / "Image" / "aligned" / aligned_name(name), labels_path, root, line=number)
            continue
        expression = CODES.get(code)
        if expression is None:
            reason = f"code {code!r} is not one of 1-7; expression left missing"
            yield dropped(labels_path, root, reason, line=number, field="expression")
        yield ImportCandidate(
            source=SOURCE,
            subject=Path(name).stem,
            path=image.relative_to(root),
            labels=FaceLabels(expression=expression),
            label_files={"expression": label_file(labels_path, root)} if expression else {},
        )


def aligned_name(name: str) -> str:
    return f"{Path(name).stem}_aligned{Path(name).suffix}"


def _image_for(root: Path, name: str) -> Path | None:
    for candidate in (root / "Image" / "aligned" / aligned_name(name), root / "Image" / "original" / name):
        if candidate.is_file():
            return candidate
    return None


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """Aligned JPEGs, one subject each, every fifth named as a test image."""
    codes = {expression: code for code, expression in CODES.items()}
    lines = []
    for i in range(sum(groups)):
        name = f"test_{i + 1:04d}.jpg" if i % 5 == 4 else f"train_{i + 1:05d}.jpg"
        labels = no_contempt(rng)
        write_image(root / "Image/aligned" / aligned_name(name), labels, name, rng, "JPEG")
        lines.append(f"{name} {codes[labels.expression]}\n")  # type: ignore[index]
    write_text(root / LABEL_FILE, "".join(lines))


IMPORTER = Importer(
    name=SOURCE,
    title="RAF-DB",
    read=read,
    layout="EmoLabel/list_patition_label.txt with Image/aligned/ (or Image/original/)",
    order=20,
    demo=write_demo,
    demo_weight=2,
)
