"""Plain data shapes that cross module boundaries (no ORM rows, no sessions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.labels import FaceLabels, Split

#: What a problem cost: "refused" — a file or record was not imported;
#: "dropped" — one value was left missing and the image was still imported.
ProblemKind = Literal["refused", "dropped"]


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
    """A file or record refused, or a value dropped, and why (the import goes on).

    `file` is relative to the import root; `line` (1-based) and `field` say
    where in it when known. `cause` is a short fixed phrase that groups
    problems in summaries ("not an image", "no image for labels", ...);
    `reason` is the full explanation, without the file name.
    """

    file: Path
    reason: str
    kind: ProblemKind = "refused"
    line: int | None = None
    field: str | None = None
    cause: str = "invalid record"

    def __post_init__(self) -> None:
        # Invalid UTF-8 read from a label file arrives as surrogates, which no terminal can print.
        object.__setattr__(self, "reason", printable(self.reason))

    def __str__(self) -> str:
        line = f"line {self.line}" if self.line else ""
        field = f"field {printable(self.field)!r}" if self.field else ""
        where = ", ".join(part for part in (line, field) if part)
        file = printable(str(self.file))
        return f"{file}: {where}: {self.reason}" if where else f"{file}: {self.reason}"


def printable(text: str) -> str:
    """`text` with undecodable bytes (surrogates) shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
