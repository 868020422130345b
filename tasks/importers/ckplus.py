"""CK+ (Extended Cohn-Kanade) importer.

Layout, as distributed::

    cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
    Emotion/S005/001/S005_001_00000011_emotion.txt   one float code, "   3.0000000e+00"
    FACS/S005/001/S005_001_00000011_facs.txt         lines "AU intensity" (floats)

A sequence runs from a neutral onset to the peak; the labels describe the
peak, which is the LAST frame. Only that frame is imported: the earlier
frames carry no label of their own.

Emotion codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
6 sadness, 7 surprise. FACS files list the AUs present; CK+ codes every AU it
sees, so a schema AU not listed is absent. AUs outside the 17 are ignored.

Only 327 of the 593 sequences have an emotion file, but all are FACS-coded:
a sequence with FACS and no emotion file is imported with AU labels only; a
sequence with neither has no human label and is skipped. Subject: S###.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import ACTION_UNITS, Expression, FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    IMAGE_SUFFIXES,
    label_file,
    missing_image,
    numbered_lines,
    parse_number,
    problem,
    sorted_dirs,
)

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "ckplus"
EMOTION_CODES: dict[int, Expression] = {
    0: "neutral",
    1: "anger",
    2: "contempt",
    3: "disgust",
    4: "fear",
    5: "happiness",
    6: "sadness",
    7: "surprise",
}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    images = root / "cohn-kanade-images"
    for subject, sequence in _sequences(root):
        emotion_file = _single(root / "Emotion" / subject / sequence, "*_emotion.txt")
        facs_file = _single(root / "FACS" / subject / sequence, "*_facs.txt")
        labelled_by = [path for path in (emotion_file, facs_file) if path is not None]
        if not labelled_by:
            continue
        values: dict[str, object] = {}
        label_files: dict[str, str] = {}
        if emotion_file is not None:
            expression = yield from _read_emotion(emotion_file, root)
            if expression is not None:
                values["expression"] = expression
                label_files["expression"] = label_file(emotion_file, root)
        if facs_file is not None:
            aus = yield from _read_facs(facs_file, root)
            values.update(aus)
            label_files.update({au: label_file(facs_file, root) for au in aus})
        frames = _frames(images / subject / sequence)
        if not frames:
            yield missing_image(images / subject / sequence, labelled_by[0], root)
            continue
        yield ImportCandidate(
            source=SOURCE,
            subject=subject,
            path=frames[-1].relative_to(root),
            labels=FaceLabels.from_field_values(values),
            label_files=label_files,
        )


def _sequences(root: Path) -> list[tuple[str, str]]:
    """Every (subject, sequence) that has images or labels, so unmatched label files get reported."""
    found: set[tuple[str, str]] = set()
    for tree in ("cohn-kanade-images", "Emotion", "FACS"):
        if (root / tree).is_dir():
            for subject in sorted_dirs(root / tree):
                found.update((subject.name, sequence.name) for sequence in sorted_dirs(subject))
    return sorted(found)


def _single(folder: Path, pattern: str) -> Path | None:
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return matches[-1] if matches else None


def _frames(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_emotion(path: Path, root: Path) -> Generator[ImportProblem, None, Expression | None]:
    """Yields problems; returns the expression or None."""
    lines = list(numbered_lines(path))
    if len(lines) != 1:
        yield problem(path, root, f"expected one emotion code, found {len(lines)} non-blank lines")
        return None
    number, text = lines[0]
    code = parse_number(text)
    if code is None or not code.is_integer() or int(code) not in EMOTION_CODES:
        yield problem(path, root, f"emotion code {text!r} is not one of 0-7; expression left missing", line=number)
        return None
    return EMOTION_CODES[int(code)]


def _read_facs(path: Path, root: Path) -> Generator[ImportProblem, None, dict[str, bool]]:
    """Yields problems; returns {AU: present} for all 17 AUs, or {} when the file is unreadable.

    One bad line drops every AU of the file: "absent" is inferred from the
    list being complete, which a bad line breaks.
    """
    present: set[str] = set()
    for number, text in numbered_lines(path):
        parts = text.split()
        au = parse_number(parts[0]) if len(parts) == 2 else None
        if au is None or parse_number(parts[1]) is None or not au.is_integer():
            reason = f"expected 'AU intensity', got {text!r}; AU labels of this sequence left missing"
            yield problem(path, root, reason, line=number)
            return {}
        try:
            present.add(normalise_au_name(int(au)))
        except ValueError:
            continue  # an AU outside the schema's 17 (CK+ codes ~30)
    return {au: au in present for au in ACTION_UNITS}
