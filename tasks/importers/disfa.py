"""DISFA importer.

Layout, as distributed (labels) plus frames you extract from the videos::

    ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt    lines "frame,intensity"
    Frames/SN001/00001.png     (or options.frames_dir/SN001/...; .png or .jpg, any zero padding;
                               the folder name's case does not matter: Frames/ or frames/)

DISFA codes 12 AUs (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26) with
intensities 0-5; an AU is present when its intensity is at least
`options.au_threshold` (default 2, as in the SEKE paper §4.1). The other
five schema AUs stay missing. Frames are numbered from 1 and every
`options.frame_stride`-th labelled frame is imported. Subject: SN###.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from models.labels import FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    child_folder,
    dropped,
    frame_index,
    label_file,
    missing_image,
    numbered_lines,
    refused,
    relative,
    sorted_dirs,
    strided,
)
from tasks.importers._demo import write_image, write_text
from tasks.synthetic import sample_labels

SOURCE = "disfa"
AU_NUMBERS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)  # DISFA's native coding
MAX_INTENSITY = 5


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    labels_root = root / "ActionUnit_Labels"
    if not labels_root.is_dir():
        reason = "DISFA label folder not found; expected ActionUnit_Labels/SN###/"
        yield refused(labels_root, root, reason, cause="no recognised layout")
        return
    frames_root = options.frames_dir or child_folder(root, "Frames")
    frames_base = options.frames_dir or root
    subject_dirs, problems = sorted_dirs(labels_root, root)
    yield from problems
    for subject_dir in subject_dirs:
        subject = subject_dir.name
        # frame -> {AU: present}, and AU -> its label file (provenance)
        by_frame: dict[int, dict[str, bool]] = {}
        files: dict[str, str] = {}
        for number in AU_NUMBERS:
            au = normalise_au_name(number)
            path = subject_dir / f"{subject}_au{number}.txt"
            if not path.exists():
                yield dropped(path, root, f"{au} label file missing; {au} left missing for {subject}", field=au)
                continue
            try:
                lines = numbered_lines(path, root)
            except LabelFileError as exc:
                yield exc.problem
                continue
            files[au] = label_file(path, root)
            for line, text in lines:
                parts = [p.strip() for p in text.split(",")]
                if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
                    reason = f"expected 'frame,intensity' (frame from 1), got {text!r}"
                    yield dropped(path, root, reason, line=line, field=au)
                    continue
                frame, intensity = int(parts[0]), int(parts[1])
                if intensity > MAX_INTENSITY:
                    yield dropped(path, root, f"intensity {intensity} is not in 0-5; left missing", line=line, field=au)
                    continue
                by_frame.setdefault(frame, {})[au] = intensity >= options.au_threshold
        frames, problems = frame_index(frames_root / subject, frames_base)
        yield from problems
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



def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """Frames per subject with the 12 AUs as intensities (present <-> intensity >= 2, the default threshold)."""
    for s, frames in enumerate(groups):
        subject = f"SN{s + 1:03d}"
        lines: dict[int, list[str]] = {number: [] for number in AU_NUMBERS}
        for frame in range(1, frames + 1):
            labels = sample_labels(rng)
            write_image(root / f"Frames/{subject}/{frame:05d}.png", labels, subject, rng)
            for number in AU_NUMBERS:
                present = labels.aus[normalise_au_name(number)]
                lines[number].append(f"{frame},{rng.randint(2, 5) if present else rng.randint(0, 1)}\n")
        for number, text in lines.items():
            write_text(root / f"ActionUnit_Labels/{subject}/{subject}_au{number}.txt", "".join(text))


IMPORTER = Importer(
    name=SOURCE,
    title="DISFA",
    read=read,
    layout="ActionUnit_Labels/SN###/SN###_au*.txt with frames in Frames/SN###/ (or --frames-dir)",
    order=40,
    demo=write_demo,
    demo_weight=3,
    per_subject=3,
)
