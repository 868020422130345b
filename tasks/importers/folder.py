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

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import FaceLabels, Split
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    EXPRESSION_SYNONYMS,
    IMAGE_SUFFIXES,
    label_file,
    parse_expression_name,
    problem,
    sorted_dirs,
)

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "folder"
SPLIT_DIRS: dict[str, Split | None] = {
    "train": Split.FEID,
    "test": Split.FEAB,
    "val": None,
    "validation": None,
}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    for top in sorted_dirs(root):
        name = top.name.lower()
        if name in SPLIT_DIRS:
            for expression_dir in sorted_dirs(top):
                yield from _read_expression_dir(expression_dir, root, SPLIT_DIRS[name])
        else:
            yield from _read_expression_dir(top, root, None)


def subject_of(file_name: str) -> str:
    stem = Path(file_name).stem
    prefix, separator, _ = stem.partition("_")
    return prefix if separator and prefix else stem


def _read_expression_dir(folder: Path, root: Path, split: Split | None) -> Iterator[ImportCandidate | ImportProblem]:
    expression = parse_expression_name(folder.name)
    if expression is None:
        known = ", ".join(sorted(EXPRESSION_SYNONYMS))
        yield problem(folder, root, f"folder name {folder.name!r} is not an expression ({known}); its images are skipped")
        return
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            yield problem(path, root, f"not an image file name (suffix {path.suffix!r}); skipped")
            continue
        yield ImportCandidate(
            source=SOURCE,
            subject=subject_of(path.name),
            path=path.relative_to(root),
            labels=FaceLabels(expression=expression),
            label_files={"expression": label_file(folder, root)},
            split=split,
        )
