"""Importers: one module per source layout, each `read(root, options)`.

Every reader yields `ImportCandidate`s (an image path and the labels its source
gives) and `ImportProblem`s (a record it refused or a value it dropped, with
file, line, field and reason); the import goes on after a problem. Readers only
look at label files and check that images exist: ingest decodes and validates
the bytes (tasks/images.py).

Paths in candidates and problems are relative to the import base: `root`
itself, or for a manifest given as a file, the manifest's folder (see
`import_base`). Frames under an `options.frames_dir` outside the root keep
their absolute path. Invalid codes never become labels: they are MISSING.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from models.labels import DEFAULT_AU_INTENSITY_THRESHOLD
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers import affectnet, affwild2, bp4d, ckplus, disfa, folder, manifest, rafdb
from tasks.importers._common import import_base


@dataclass
class ImportOptions:
    #: keep every n-th labelled frame of a video source (DISFA, BP4D, Aff-Wild2)
    frame_stride: int = 1
    #: DISFA intensity (0-5) at or above which an AU counts as present
    au_threshold: int = DEFAULT_AU_INTENSITY_THRESHOLD
    #: AffectNet: store the annotated face box instead of the whole image
    crop_faces: bool = False
    #: video sources: where extracted frames live, if not in the default folder
    frames_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be 1 or more, got {self.frame_stride}")
        if not 0 <= self.au_threshold <= 5:
            raise ValueError(f"au_threshold is a DISFA intensity (0-5), got {self.au_threshold}")


Reader = Callable[[Path, ImportOptions], Iterator[ImportCandidate | ImportProblem]]

__all__ = ["READERS", "ImportOptions", "Reader", "import_base"]

READERS: dict[str, Reader] = {
    "ckplus": ckplus.read,
    "rafdb": rafdb.read,
    "affectnet": affectnet.read,
    "disfa": disfa.read,
    "bp4d": bp4d.read,
    "affwild2": affwild2.read,
    "folder": folder.read,
    "manifest": manifest.read,
}
