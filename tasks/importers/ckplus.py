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

import random
from collections.abc import Generator, Iterator
from pathlib import Path

from models.labels import ACTION_UNITS, Expression, FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    IMAGE_SUFFIXES,
    Importer,
    ImportOptions,
    LabelFileError,
    dropped,
    entries,
    glob_files,
    label_file,
    missing_image,
    numbered_lines,
    parse_number,
    refused,
    sorted_dirs,
)
from tasks.importers._demo import au_number, write_image, write_text
from tasks.synthetic import sample_labels

SOURCE = "ckplus"
TREES = ("cohn-kanade-images", "Emotion", "FACS")
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
    if not any((root / tree).is_dir() for tree in TREES):
        reason = f"no CK+ layout here: expected {', '.join(f'{tree}/' for tree in TREES)} with S###/###/ inside"
        yield refused(root, root, reason, cause="no recognised layout")
        return
    sequences = yield from _sequences(root)
    for subject, sequence in sequences:
        emotion_file = yield from _single(root / "Emotion" / subject / sequence, "*_emotion.txt", root)
        facs_file = yield from _single(root / "FACS" / subject / sequence, "*_facs.txt", root)
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
        frames = yield from _frames(images / subject / sequence, root)
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


def _sequences(root: Path) -> Generator[ImportProblem, None, list[tuple[str, str]]]:
    """Every (subject, sequence) that has images or labels, so unmatched label files get reported."""
    found: set[tuple[str, str]] = set()
    for tree in TREES:
        subjects, problems = sorted_dirs(root / tree, root)
        yield from problems
        for subject in subjects:
            sequences, problems = sorted_dirs(subject, root)
            yield from problems
            found.update((subject.name, sequence.name) for sequence in sequences)
    return sorted(found)


def _single(folder: Path, pattern: str, root: Path) -> Generator[ImportProblem, None, Path | None]:
    matches, problems = glob_files(folder, pattern, root)
    yield from problems
    return matches[-1] if matches else None


def _frames(folder: Path, root: Path) -> Generator[ImportProblem, None, list[Path]]:
    paths, problems = entries(folder, root)
    yield from problems
    return [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]


def _lines(path: Path, root: Path) -> Generator[ImportProblem, None, list[tuple[int, str]] | None]:
    try:
        return numbered_lines(path, root)
    except LabelFileError as exc:
        yield exc.problem
        return None


def _read_emotion(path: Path, root: Path) -> Generator[ImportProblem, None, Expression | None]:
    """Yields problems; returns the expression or None."""
    lines = yield from _lines(path, root)
    if lines is None:
        return None
    if len(lines) != 1:
        yield dropped(path, root, f"expected one emotion code, found {len(lines)} non-blank lines", field="expression")
        return None
    number, text = lines[0]
    code = parse_number(text)
    if code is None or not code.is_integer() or int(code) not in EMOTION_CODES:
        reason = f"emotion code {text!r} is not one of 0-7; expression left missing"
        yield dropped(path, root, reason, line=number, field="expression")
        return None
    return EMOTION_CODES[int(code)]


def _read_facs(path: Path, root: Path) -> Generator[ImportProblem, None, dict[str, bool]]:
    """Yields problems; returns {AU: present} for all 17 AUs, or {} when the file is unreadable.

    One bad line drops every AU of the file: "absent" is inferred from the
    list being complete, which a bad line breaks.
    """
    present: set[str] = set()
    lines = yield from _lines(path, root)
    if lines is None:
        return {}
    for number, text in lines:
        parts = text.split()
        au = parse_number(parts[0]) if len(parts) == 2 else None
        if au is None or parse_number(parts[1]) is None or not au.is_integer():
            reason = f"expected 'AU intensity', got {text!r}; AU labels of this sequence left missing"
            yield dropped(path, root, reason, line=number)
            return {}
        try:
            present.add(normalise_au_name(int(au)))
        except ValueError:
            continue  # an AU outside the schema's 17 (CK+ codes ~30)
    return {au: au in present for au in ACTION_UNITS}


ONSET_FRAMES = 2


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """Sequences of unlabelled neutral onset frames, then the labelled peak; FACS for about half."""
    codes = {expression: code for code, expression in EMOTION_CODES.items()}
    for s, sequences in enumerate(groups):
        subject = f"S{5 * (s + 1):03d}"
        for q in range(sequences):
            sequence = f"{q + 1:03d}"
            prefix = f"{subject}/{sequence}/{subject}_{sequence}"
            for frame in range(1, ONSET_FRAMES + 1):
                write_image(root / f"cohn-kanade-images/{prefix}_{frame:08d}.png", sample_labels(rng, "neutral"), subject, rng)
            peak = ONSET_FRAMES + 1
            labels = sample_labels(rng)
            write_image(root / f"cohn-kanade-images/{prefix}_{peak:08d}.png", labels, subject, rng)
            write_text(root / f"Emotion/{prefix}_{peak:08d}_emotion.txt", f"   {float(codes[labels.expression]):.7e}\n")  # type: ignore[index]
            if rng.random() < 0.5:
                present = [au for au in ACTION_UNITS if labels.aus[au]]
                lines = "".join(f"   {float(au_number(au)):.7e}   {float(rng.randint(0, 5)):.7e}\n" for au in present)
                write_text(root / f"FACS/{prefix}_{peak:08d}_facs.txt", lines)


IMPORTER = Importer(
    name=SOURCE,
    title="CK+",
    read=read,
    layout="cohn-kanade-images/S###/###/*.png with Emotion/ and FACS/ label files; the peak (last) frame",
    order=10,
    demo=write_demo,
    demo_weight=2,
    per_subject=2,
)
