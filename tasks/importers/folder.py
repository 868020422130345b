"""Image-folder importer (the torchvision ImageFolder / Kaggle FER layout).

Layout::

    train/happy/p01_0001.png     split folder (train -> FEID, test -> FEAB) ...
    test/sad/p07_0003.jpg
    happy/p01_0001.png           ... or no split folder at all

Expression folder names are matched case-insensitively, with the usual
synonyms (happy, sad, angry, surprised, fearful, disgusted). ``val`` /
``validation`` folders are read like split folders but do not force a split.

Subject: the file name's prefix before the first ``_`` (``p01_0001.png`` ->
``p01``) when there is one, else the whole stem (one image, one subject):
name files ``<subject>_...`` to keep a person's images on one side of the split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from models.labels import FaceLabels, Split
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    EXPRESSION_SYNONYMS,
    IMAGE_SUFFIXES,
    Importer,
    ImportOptions,
    entries,
    label_file,
    parse_expression_name,
    refused,
    sorted_dirs,
)
from tasks.importers._demo import write_image
from tasks.synthetic import sample_labels

SOURCE = "folder"
SPLIT_DIRS: dict[str, Split | None] = {
    "train": Split.FEID,
    "test": Split.FEAB,
    "val": None,
    "validation": None,
}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    found = False
    tops, problems = sorted_dirs(root, root)
    yield from problems
    for top in tops:
        name = top.name.lower()
        if name in SPLIT_DIRS:
            expression_dirs, problems = sorted_dirs(top, root)
            yield from problems
            for expression_dir in expression_dirs:
                found |= parse_expression_name(expression_dir.name) is not None
                yield from _read_expression_dir(expression_dir, root, SPLIT_DIRS[name])
        else:
            found |= parse_expression_name(top.name) is not None
            yield from _read_expression_dir(top, root, None)
    if not found:
        reason = (
            "no expression folders here: expected <expression>/<image> or <train|test>/<expression>/<image>, "
            "e.g. happy/p01_001.png (or use `manifest` for another layout)"
        )
        yield refused(root, root, reason, cause="no recognised layout")


def subject_of(file_name: str) -> str:
    stem = Path(file_name).stem
    prefix, separator, _ = stem.partition("_")
    return prefix if separator and prefix else stem


def _read_expression_dir(folder: Path, root: Path, split: Split | None) -> Iterator[ImportCandidate | ImportProblem]:
    expression = parse_expression_name(folder.name)
    if expression is None:
        known = ", ".join(sorted(EXPRESSION_SYNONYMS))
        reason = f"the folder name is not an expression ({known}); its images are skipped"
        yield refused(folder, root, reason, cause="not an expression folder")
        return
    paths, problems = entries(folder, root, dirs=False)
    yield from problems
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            yield refused(path, root, f"not an image file name (suffix {path.suffix!r}); skipped", cause="not an image name")
            continue
        yield ImportCandidate(
            source=SOURCE,
            subject=subject_of(path.name),
            path=path.relative_to(root),
            labels=FaceLabels(expression=expression),
            label_files={"expression": label_file(folder, root)},
            split=split,
        )


FOLDER_NAMES = {
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "surprise": "surprised",
    "fear": "fearful",
    "disgust": "disgusted",
}


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """train/ and test/ folders (every fifth subject in test) named with synonyms."""
    for s, images in enumerate(groups):
        subject = f"p{s + 1:02d}"
        split = "test" if s % 5 == 4 else "train"
        for k in range(images):
            labels = sample_labels(rng)
            folder = FOLDER_NAMES.get(labels.expression, labels.expression)  # type: ignore[arg-type]
            write_image(root / f"{split}/{folder}/{subject}_{k + 1:03d}.png", labels, subject, rng)


IMPORTER = Importer(
    name=SOURCE,
    title="image folder",
    read=read,
    layout="[train|test/]<expression>/<subject>_<n>.png (torchvision ImageFolder, Kaggle FER)",
    order=90,
    demo=write_demo,
    demo_weight=2,
    per_subject=2,
)
