"""Aff-Wild2 (ABAW) importer.

Layout, as distributed::

    Annotations/EXPR_Set/{Train_Set,Validation_Set}/<video>.txt
    Annotations/VA_Set/{Train_Set,Validation_Set}/<video>.txt
    Annotations/AU_Set/{Train_Set,Validation_Set}/<video>.txt
    cropped_aligned/<video>/00001.jpg      (or options.frames_dir/<video>/; 5 digits, from 1)

Each annotation file has a header line, then one row per frame: row i
(0-based) is frame i + 1, so rows are positional and a blank row is an error.

- EXPR header ``Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other``;
  the value is the class index; Other (7) and -1 leave it missing.
- VA header ``valence,arousal``; values in [-1, 1], -5 leaves one missing.
- AU header ``AU1,AU2,AU4,...``; values 0 / 1, -1 leaves the AU missing.

The three sets cover different videos and frames; labels of one frame are
merged across them. Every `options.frame_stride`-th labelled frame is kept.
Face crops of frames no set labels (every value "not annotated") are not
imported; each video with such crops gets one report listing how many.

Subject: the video name without a ``_left`` / ``_right`` suffix. Those
suffixes mark the two people of one video; keeping both in one group keeps
the whole video (same scene, same frames) on one side of the split, at the
cost of grouping two people as one subject.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from models.labels import Expression, FaceLabels, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    dropped,
    frame_index,
    glob_files,
    label_file,
    missing_image,
    open_label,
    parse_number,
    refused,
    relative,
    strided,
)
from tasks.importers._demo import no_contempt, write_image, write_text

SOURCE = "affwild2"
SPLITS = ("Train_Set", "Validation_Set")  # Test_Set ships without labels
EXPR_HEADER = "neutral,anger,disgust,fear,happiness,sadness,surprise,other"
EXPR_CODES: dict[int, Expression] = {
    0: "neutral",
    1: "anger",
    2: "disgust",
    3: "fear",
    4: "happiness",
    5: "sadness",
    6: "surprise",
}
EXPR_MISSING = (7, -1)  # Other, not annotated
VA_MISSING = -5.0
AU_MISSING = -1

# A row parser returns the row's values and its (field, reason) errors.
RowParser = Callable[[list[str]], tuple[dict[str, object], list[tuple[str, str]]]]
# video -> frame -> field -> (value, label file)
Labels = dict[str, dict[int, dict[str, tuple[object, str]]]]


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    labels: Labels = {}
    for set_name in ("EXPR_Set", "VA_Set", "AU_Set"):
        for split in SPLITS:
            paths, problems = glob_files(root / "Annotations" / set_name / split, "*.txt", root)
            yield from problems
            for path in paths:
                yield from _read_file(path, root, set_name, labels.setdefault(path.stem, {}))
    if not labels:
        expected = "expected Annotations/<set>/<split>/<video>.txt"
        yield refused(root / "Annotations", root, f"no Aff-Wild2 annotation files found; {expected}", cause="no recognised layout")
    frames_root = options.frames_dir or root / "cropped_aligned"
    for video in sorted(labels):
        frames, problems = frame_index(frames_root / video, options.frames_dir or root)
        yield from problems
        labelled = sorted(frame for frame, fields in labels[video].items() if fields)
        unlabelled = sorted(set(frames) - set(labelled))
        if unlabelled:
            shown = ", ".join(str(frame) for frame in unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
            reason = f"{len(unlabelled)} face crop(s) of frames with no label in any set (frames {shown}); not imported"
            yield refused(frames_root / video, root, reason, cause="no label")
        for frame in strided(labelled, options.frame_stride):
            fields = labels[video][frame]
            image = frames.get(frame)
            if image is None:
                first_file = root / next(iter(fields.values()))[1]
                yield missing_image(frames_root / video / f"{frame:05d}.jpg", first_file, root, line=frame + 1)
                continue
            yield ImportCandidate(
                source=SOURCE,
                subject=subject_of(video),
                path=relative(image, root),
                labels=FaceLabels.from_field_values({field: value for field, (value, _) in fields.items()}),
                label_files={field: file for field, (_, file) in fields.items()},
            )


def subject_of(video: str) -> str:
    """'10-60-1280x720_right' -> '10-60-1280x720' (see the module docstring)."""
    for suffix in ("_left", "_right"):
        if video.endswith(suffix):
            return video.removesuffix(suffix)
    return video


def _read_file(
    path: Path, root: Path, set_name: str, video_labels: dict[int, dict[str, tuple[object, str]]]
) -> Generator[ImportProblem, None, None]:
    try:
        with open_label(path, root) as handle:
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except LabelFileError as exc:
        yield exc.problem
        return
    if not lines:
        yield refused(path, root, "empty annotation file")
        return
    parser = _parser_for(set_name, lines[0])
    if parser is None:
        yield refused(path, root, f"unexpected {set_name} header {lines[0]!r}", line=1)
        return
    source_file = label_file(path, root)
    for line, text in enumerate(lines[1:], start=2):
        values, errors = parser([cell.strip() for cell in text.split(",")])
        for field, reason in errors:
            yield dropped(path, root, reason, line=line, field=field)
        frame_fields = video_labels.setdefault(line - 1, {})  # line 2 is frame 1
        frame_fields.update({field: (value, source_file) for field, value in values.items()})


def _parser_for(set_name: str, header: str) -> RowParser | None:
    cells = [cell.strip() for cell in header.split(",")]
    if set_name == "EXPR_Set":
        return _expr_row if ",".join(cells).lower() == EXPR_HEADER else None
    if set_name == "VA_Set":
        return _va_row if [c.lower() for c in cells] == ["valence", "arousal"] else None
    try:
        aus = [normalise_au_name(cell) for cell in cells]
    except ValueError:
        return None
    return lambda row: _au_row(row, aus)


def _expr_row(cells: list[str]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    code = parse_number(cells[0]) if len(cells) == 1 else None
    if code is not None and code.is_integer() and int(code) in EXPR_CODES:
        return {"expression": EXPR_CODES[int(code)]}, []
    if code in EXPR_MISSING:
        return {}, []
    return {}, [("expression", f"{','.join(cells)!r} is not a class index 0-7 (or -1); left missing")]


def _va_row(cells: list[str]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    if len(cells) != 2:
        return {}, [("valence", f"expected 'valence,arousal', got {','.join(cells)!r}; both left missing")]
    values: dict[str, object] = {}
    errors: list[tuple[str, str]] = []
    for field, cell in zip(("valence", "arousal"), cells):
        value = parse_number(cell)
        if value is not None and -1.0 <= value <= 1.0:
            values[field] = value
        elif value != VA_MISSING:
            errors.append((field, f"{cell!r} is not in [-1, 1] (nor -5, not annotated); left missing"))
    return values, errors


def _au_row(cells: list[str], aus: list[str]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    if len(cells) != len(aus):
        return {}, [(aus[0], f"expected {len(aus)} AU values, got {','.join(cells)!r}; all left missing")]
    values: dict[str, object] = {}
    errors: list[tuple[str, str]] = []
    for au, cell in zip(aus, cells):
        value = parse_number(cell)
        if value in (0, 1):
            values[au] = value == 1
        elif value != AU_MISSING:
            errors.append((au, f"{cell!r} is not 0, 1 or -1; left missing"))
    return values, errors


AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """Videos with all three sets; the first shows two people (_left / _right); each ends with a frame
    where no face was found (every value "not annotated", no crop)."""
    expr_codes = {expression: code for code, expression in EXPR_CODES.items()}
    au_columns = AU_HEADER.split(",")
    for s, frames in enumerate(groups):
        name = f"{s + 1}-30-640x480"
        videos = [f"{name}_left", f"{name}_right"] if s == 0 and frames >= 2 else [name]
        split = "Validation_Set" if s % 4 == 3 else "Train_Set"
        for v, video in enumerate(videos):
            count = frames // len(videos) + (frames % len(videos) if v == len(videos) - 1 else 0)
            expr, va, aus = [EXPR_HEADER.title()], ["valence,arousal"], [AU_HEADER]
            for frame in range(1, count + 1):
                labels = no_contempt(rng)
                write_image(root / f"cropped_aligned/{video}/{frame:05d}.jpg", labels, video, rng, "JPEG")
                expr.append(str(expr_codes[labels.expression]))  # type: ignore[index]
                va.append(f"{labels.valence},{labels.arousal}")
                aus.append(",".join(str(int(labels.aus[au])) for au in au_columns))
            expr.append("-1")
            va.append("-5,-5")
            aus.append(",".join("-1" for _ in au_columns))
            for set_name, lines in (("EXPR_Set", expr), ("VA_Set", va), ("AU_Set", aus)):
                write_text(root / f"Annotations/{set_name}/{split}/{video}.txt", "\n".join(lines) + "\n")


IMPORTER = Importer(
    name=SOURCE,
    title="Aff-Wild2",
    read=read,
    layout="Annotations/{EXPR,VA,AU}_Set/<split>/<video>.txt with cropped_aligned/<video>/ (or --frames-dir)",
    order=60,
    demo=write_demo,
    demo_weight=3,
    per_subject=3,
)
