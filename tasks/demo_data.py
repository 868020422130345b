"""Demo data: synthetic faces written in all eight import layouts.

`write_demo_data(out)` makes `out/<format>/` for each of models.schemas.SOURCES,
in the native layout its importer reads (see each tasks/importers module),
with the label availability of the real source:

- ckplus: expression (+ FACS AUs for about half the sequences); each sequence
  has neutral onset frames before the labelled peak (the last frame);
- rafdb: expression (7 classes, no contempt), aligned JPEGs;
- affectnet: expression + valence/arousal, JPEGs;
- disfa: its 12 AUs as intensities 0-5 (present = intensity >= 2);
- bp4d: its 12 AUs as occurrence, plus a non-schema column and a few 9s
  ("not coded");
- affwild2: expression + VA + its 12 AUs, one video split into _left/_right,
  and a trailing unlabelled row per video (a frame with no detected face);
- folder: expression, from train/test folders named with synonyms;
- manifest: a CSV and a JSONL, rows carrying different subsets of labels.

Every written label equals the ground truth embedded in its image, so an
import can be checked against it. Counts are images the importers will
yield; CK+ onset frames come on top. Subjects: about 10 per source at
n = 200 (2 CK+ sequences, 3 video frames or 2 images per subject), so a
1/10 subject split puts at least one of each source in FEAB.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from models.labels import ACTION_UNITS, EXPRESSIONS, FaceLabels, normalise_au_name
from models.schemas import SOURCES
from tasks.importers import affectnet, affwild2, ckplus, disfa, rafdb
from tasks.synthetic import render, sample_labels

#: Share of the faces each format gets; video sources get more (several frames per subject).
WEIGHTS = {"ckplus": 2, "rafdb": 2, "affectnet": 2, "disfa": 3, "bp4d": 3, "affwild2": 3, "folder": 2, "manifest": 2}
PER_SUBJECT = {"ckplus": 2, "disfa": 3, "bp4d": 3, "affwild2": 3, "folder": 2, "manifest": 2}
CKPLUS_ONSET_FRAMES = 2
BP4D_COLUMNS = (1, 2, 4, 6, 7, 10, 11, 12, 14, 15, 17, 23, 24)  # 11 is outside the schema: ignored
AFFWILD2_AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
FOLDER_NAMES = {
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "surprise": "surprised",
    "fear": "fearful",
    "disgust": "disgusted",
}


def write_demo_data(out: Path, n: int = 200, seed: int = 0) -> dict[str, int]:
    """Write `n` synthetic faces spread over the eight layouts; returns images per format.

    Deterministic from `seed`. Files are overwritten, never deleted: write into
    an empty folder, or leftovers of a larger earlier run will be imported too.
    """
    if n < len(SOURCES):
        raise ValueError(f"n must be at least {len(SOURCES)} (one face per format), got {n}")
    writers = {
        "ckplus": _ckplus,
        "rafdb": _rafdb,
        "affectnet": _affectnet,
        "disfa": _disfa,
        "bp4d": _bp4d,
        "affwild2": _affwild2,
        "folder": _folder,
        "manifest": _manifest,
    }
    counts = _allocate(n)
    for name, count in counts.items():
        writers[name](out / name, _groups(count, PER_SUBJECT.get(name, 1)), random.Random(f"{seed}:{name}"))
    return counts


def _allocate(n: int) -> dict[str, int]:
    """Largest-remainder split of n over WEIGHTS, at least one face per format."""
    total = sum(WEIGHTS.values())
    shares = {name: 1 + (n - len(WEIGHTS)) * WEIGHTS[name] / total for name in SOURCES}
    counts = {name: int(share) for name, share in shares.items()}
    for name in sorted(shares, key=lambda s: shares[s] - counts[s], reverse=True)[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def _groups(count: int, per_subject: int) -> list[int]:
    """Images per subject: `per_subject` each, the remainder on the last subject."""
    sizes = [per_subject] * max(1, count // per_subject)
    sizes[-1] += count - sum(sizes)
    return sizes


def _write(path: Path, labels: FaceLabels, identity: str, rng: random.Random, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render(labels, identity, rng, fmt))


def _no_contempt(rng: random.Random) -> FaceLabels:
    """RAF-DB and Aff-Wild2 have no contempt class."""
    return sample_labels(rng, rng.choice([e for e in EXPRESSIONS if e != "contempt"]))


def _au_number(au: str) -> int:
    return int(au.removeprefix("AU"))


def _ckplus(root: Path, groups: list[int], rng: random.Random) -> None:
    codes = {expression: code for code, expression in ckplus.EMOTION_CODES.items()}
    for s, sequences in enumerate(groups):
        subject = f"S{5 * (s + 1):03d}"
        for q in range(sequences):
            sequence = f"{q + 1:03d}"
            prefix = f"{subject}/{sequence}/{subject}_{sequence}"
            for frame in range(1, CKPLUS_ONSET_FRAMES + 1):  # unlabelled neutral onset
                _write(root / f"cohn-kanade-images/{prefix}_{frame:08d}.png", sample_labels(rng, "neutral"), subject, rng)
            peak = CKPLUS_ONSET_FRAMES + 1
            labels = sample_labels(rng)
            _write(root / f"cohn-kanade-images/{prefix}_{peak:08d}.png", labels, subject, rng)
            emotion = root / f"Emotion/{prefix}_{peak:08d}_emotion.txt"
            emotion.parent.mkdir(parents=True, exist_ok=True)
            emotion.write_text(f"   {float(codes[labels.expression]):.7e}\n")  # type: ignore[index]
            if rng.random() < 0.5:
                facs = root / f"FACS/{prefix}_{peak:08d}_facs.txt"
                facs.parent.mkdir(parents=True, exist_ok=True)
                present = [au for au in ACTION_UNITS if labels.aus[au]]
                facs.write_text("".join(f"   {float(_au_number(au)):.7e}   {float(rng.randint(0, 5)):.7e}\n" for au in present))


def _rafdb(root: Path, groups: list[int], rng: random.Random) -> None:
    codes = {expression: code for code, expression in rafdb.CODES.items()}
    lines = []
    for i in range(sum(groups)):
        name = f"test_{i + 1:04d}.jpg" if i % 5 == 4 else f"train_{i + 1:05d}.jpg"
        labels = _no_contempt(rng)
        _write(root / "Image/aligned" / rafdb.aligned_name(name), labels, name, rng, "JPEG")
        lines.append(f"{name} {codes[labels.expression]}\n")  # type: ignore[index]
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / rafdb.LABEL_FILE).write_text("".join(lines))


def _affectnet(root: Path, groups: list[int], rng: random.Random) -> None:
    codes = {expression: code for code, expression in affectnet.CODES.items()}
    rows = []
    for i in range(sum(groups)):
        name = f"{i % 7 + 1}/{rng.getrandbits(160):040x}.jpg"
        labels = sample_labels(rng)
        _write(root / "Manually_Annotated_Images" / name, labels, name, rng, "JPEG")
        rows.append([name, 0, 0, 128, 128, "", codes[labels.expression], labels.valence, labels.arousal])  # type: ignore[index]
    _write_csv(root / "Manually_Annotated_file_lists/training.csv", list(affectnet.COLUMNS), rows)


def _disfa(root: Path, groups: list[int], rng: random.Random) -> None:
    for s, frames in enumerate(groups):
        subject = f"SN{s + 1:03d}"
        lines: dict[int, list[str]] = {number: [] for number in disfa.AU_NUMBERS}
        for frame in range(1, frames + 1):
            labels = sample_labels(rng)
            _write(root / f"Frames/{subject}/{frame:05d}.png", labels, subject, rng)
            for number in disfa.AU_NUMBERS:
                # Present <-> intensity >= 2, the default threshold.
                present = labels.aus[normalise_au_name(number)]
                lines[number].append(f"{frame},{rng.randint(2, 5) if present else rng.randint(0, 1)}\n")
        for number, text in lines.items():
            path = root / f"ActionUnit_Labels/{subject}/{subject}_au{number}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(text))


def _bp4d(root: Path, groups: list[int], rng: random.Random) -> None:
    for s, frames in enumerate(groups):
        subject, task = f"{'FM'[s % 2]}{s // 2 + 1:03d}", f"T{s % 8 + 1}"
        first = rng.randint(1, 900)  # BP4D frame numbers do not start at 1
        rows = []
        for frame in range(first, first + frames):
            labels = sample_labels(rng)
            _write(root / f"{subject}/{task}/{frame:04d}.jpg", labels, subject, rng, "JPEG")
            cells = [_bp4d_cell(labels, number) for number in BP4D_COLUMNS]
            if frame == first:
                cells[-1] = 9  # not coded: the importer leaves this AU missing
            rows.append([frame, *cells])
        _write_csv(root / f"AU_OCC/{subject}_{task}.csv", [0, *BP4D_COLUMNS], rows)


def _bp4d_cell(labels: FaceLabels, number: int) -> int:
    au = f"AU{number}"
    return int(labels.aus[au]) if au in labels.aus else 0


def _affwild2(root: Path, groups: list[int], rng: random.Random) -> None:
    expr_codes = {expression: code for code, expression in affwild2.EXPR_CODES.items()}
    au_columns = AFFWILD2_AU_HEADER.split(",")
    for s, frames in enumerate(groups):
        name = f"{s + 1}-30-640x480"
        # The first subject's video shows two people: one annotation file per face.
        videos = [f"{name}_left", f"{name}_right"] if s == 0 and frames >= 2 else [name]
        split = "Validation_Set" if s % 4 == 3 else "Train_Set"
        for v, video in enumerate(videos):
            count = frames // len(videos) + (frames % len(videos) if v == len(videos) - 1 else 0)
            expr, va, aus = [affwild2.EXPR_HEADER.title()], ["valence,arousal"], [AFFWILD2_AU_HEADER]
            for frame in range(1, count + 1):
                labels = _no_contempt(rng)
                _write(root / f"cropped_aligned/{video}/{frame:05d}.jpg", labels, video, rng, "JPEG")
                expr.append(str(expr_codes[labels.expression]))  # type: ignore[index]
                va.append(f"{labels.valence},{labels.arousal}")
                aus.append(",".join(str(int(labels.aus[au])) for au in au_columns))
            # A last frame where no face was found: no image, every value "missing".
            expr.append("-1")
            va.append("-5,-5")
            aus.append(",".join("-1" for _ in au_columns))
            for set_name, lines in (("EXPR_Set", expr), ("VA_Set", va), ("AU_Set", aus)):
                path = root / f"Annotations/{set_name}/{split}/{video}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(lines) + "\n")


def _folder(root: Path, groups: list[int], rng: random.Random) -> None:
    for s, images in enumerate(groups):
        subject = f"p{s + 1:02d}"
        split = "test" if s % 5 == 4 else "train"
        for k in range(images):
            labels = sample_labels(rng)
            folder = FOLDER_NAMES.get(labels.expression, labels.expression)  # type: ignore[arg-type]
            _write(root / f"{split}/{folder}/{subject}_{k + 1:03d}.png", labels, subject, rng)


def _manifest(root: Path, groups: list[int], rng: random.Random) -> None:
    """Rows cycle through expression only, VA only, AUs only and everything; odd subjects go to the JSONL."""
    columns = ["path", "subject", "expression", "valence", "arousal", *ACTION_UNITS]
    csv_rows, json_lines, row = [], [], 0
    for s, images in enumerate(groups):
        subject = f"m{s + 1:02d}"
        for k in range(images):
            labels = sample_labels(rng)
            path = f"images/{subject}_{k + 1:03d}.png"
            _write(root / path, labels, subject, rng)
            values = labels.field_values()
            keep = [("expression",), ("valence", "arousal"), ACTION_UNITS, tuple(values)][row % 4]
            record = {"path": path, "subject": subject, **{f: values[f] for f in keep}}
            row += 1
            if s % 2:
                json_lines.append(json.dumps(record) + "\n")
            else:
                csv_rows.append([_csv_cell(record.get(c)) for c in columns])
    _write_csv(root / "manifest.csv", columns, csv_rows)
    (root / "manifest.jsonl").write_text("".join(json_lines))


def _csv_cell(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


def _write_csv(path: Path, header: list[object], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
