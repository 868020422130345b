"""Plain data shapes that cross module boundaries (no ORM rows, no sessions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.labels import FaceLabels, Split

#: Source dataset names as stored in the database and used by `seke import <format>`.
SOURCES: tuple[str, ...] = ("ckplus", "rafdb", "affectnet", "disfa", "bp4d", "affwild2", "folder", "manifest")


@dataclass(frozen=True)
class ImportCandidate:
    """One image an importer found, with the human labels its source gives.

    `label_files` maps each label field present in `labels` to the source file
    (relative to the import root) it was read from: the human provenance.
    `crop_box` (left, top, right, bottom) asks ingest to store the face crop.
    """

    source: str
    subject: str
    path: Path
    labels: FaceLabels
    label_files: dict[str, str] = field(default_factory=dict)
    crop_box: tuple[int, int, int, int] | None = None
    split: Split | None = None


@dataclass(frozen=True)
class ImportProblem:
    """A file or record an importer refused, and why (the import goes on)."""

    path: Path
    reason: str
