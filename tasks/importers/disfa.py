"""DISFA importer.

Layout, as distributed (labels) plus frames you extract from the videos::

    ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt    lines "frame,intensity"
    Frames/SN001/00001.png     (or options.frames_dir/SN001/...; .png or .jpg, any zero padding)

DISFA codes 12 AUs (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26) with
intensities 0-5; an AU is present when its intensity is at least
`options.au_threshold` (default 2, as in the SEKE paper §4.1). The other
five schema AUs stay missing. Frames are numbered from 1 and every
`options.frame_stride`-th labelled frame is imported. Subject: SN###.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    frame_index,
    label_file,
    missing_image,
    numbered_lines,
    problem,
    relative,
    sorted_dirs,
    strided,
)

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "disfa"
AU_NUMBERS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)  # DISFA's native coding
MAX_INTENSITY = 5


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    labels_root = root / "ActionUnit_Labels"
    if not labels_root.is_dir():
        yield problem(labels_root, root, "DISFA label folder not found; expected ActionUnit_Labels/SN###/")
        return
    frames_root = options.frames_dir or root / "Frames"
    for subject_dir in sorted_dirs(labels_root):
        subject = subject_dir.name
        # frame -> {AU: present}, and AU -> its label file (provenance)
        by_frame: dict[int, dict[str, bool]] = {}
        files: dict[str, str] = {}
        for number in AU_NUMBERS:
            au = normalise_au_name(number)
            path = subject_dir / f"{subject}_au{number}.txt"
            if not path.is_file():
                yield problem(path, root, f"{au} label file missing; {au} left missing for {subject}")
                continue
            files[au] = label_file(path, root)
            for line, text in numbered_lines(path):
                parts = [p.strip() for p in text.split(",")]
                if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
                    yield problem(path, root, f"expected 'frame,intensity' (frame from 1), got {text!r}", line=line, field=au)
                    continue
                frame, intensity = int(parts[0]), int(parts[1])
                if intensity > MAX_INTENSITY:
                    yield problem(path, root, f"intensity {intensity} is not in 0-5; left missing", line=line, field=au)
                    continue
                by_frame.setdefault(frame, {})[au] = intensity >= options.au_threshold
        frames = frame_index(frames_root / subject)
        for frame in strided(sorted(by_frame), options.frame_stride):
            image = frames.get(frame)
            if image is None:
                yield missing_image(frames_root / subject / f"{frame:05d}.png", subject_dir, root)
                continue
            aus = by_frame[frame]
            yield ImportCandidate(
                source=SOURCE,
                subject=subject,
                path=relative(image, root),
                labels=FaceLabels(aus=aus),
                label_files={au: files[au] for au in aus},
            )

