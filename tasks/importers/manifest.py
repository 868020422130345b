"""Manifest importer: a CSV or JSONL file (chosen by suffix) listing images.

Columns / keys::

    path        image path, relative to the manifest's folder     (required)
    subject     subject id, for the subject-disjoint split         (required)
    expression  a schema name (or a folder synonym: happy, sad, ...)
    valence, arousal    floats in [-1, 1]
    AU1 ... AU26        0 / 1 / true / false (any spelling normalise_au_name accepts)
    split       FEID / FEAB (or train / test) to force a split

Empty cells and JSON nulls are missing. `root` is a manifest file, or a
folder whose *.csv and *.jsonl files are all read. A bad value is reported
with file, line and field and left missing; a row is refused, and the other
rows go on, when it has no path or subject, its image does not exist, its
path is absolute or leaves the manifest's folder, a value is not valid UTF-8
or holds a NUL, the subject is longer than 200 characters, or the row is
not valid CSV / JSON (e.g. a CSV field over 128 KiB).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from models.labels import ACTION_UNITS, FaceLabels, Split, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    Importer,
    ImportOptions,
    LabelFileError,
    bad_text,
    dropped,
    entries,
    import_base,
    label_file,
    missing_image,
    open_label,
    open_label_text,
    parse_expression_name,
    parse_number,
    refused,
    relative,
    safe_relative,
)
from tasks.importers._demo import write_csv, write_image
from tasks.synthetic import sample_labels

SOURCE = "manifest"
MAX_SUBJECT = 200  # subjects.external_id
SUFFIXES = (".csv", ".jsonl")
SPLITS = {"feid": Split.FEID, "train": Split.FEID, "feab": Split.FEAB, "test": Split.FEAB}
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    base = import_base(root)
    if root.is_file():
        manifests = [root]
    else:
        manifests, problems = entries(root, base, lambda path: path.suffix.lower() in SUFFIXES)
        yield from problems
    if not manifests:
        yield refused(root, base, "no manifest found; expected a .csv or .jsonl file", cause="no recognised layout")
    for path in manifests:
        yield from _read_manifest(path, base)


def _read_manifest(path: Path, base: Path) -> Iterator[ImportCandidate | ImportProblem]:
    if path.suffix.lower() not in SUFFIXES:
        yield refused(path, base, f"a manifest must be .csv or .jsonl, not {path.suffix!r}")
        return
    reported: set[str] = set()
    try:
        records = (_csv_records if path.suffix.lower() == ".csv" else _jsonl_records)(path, base)
        for line, record in records:
            if isinstance(record, str):
                yield refused(path, base, record, line=line)
                continue
            unknown = sorted(set(record) - reported - {"path", "subject", "split"} - _known_columns(record))
            if unknown:
                reported.update(unknown)
                yield dropped(path, base, f"unknown column(s) {', '.join(unknown)} ignored", line=line)
            yield from _row(record, line, path, base)
    except LabelFileError as exc:
        yield exc.problem


def _known_columns(record: dict[str, object]) -> set[str]:
    return {key for key in record if _field_name(key) is not None}


def _field_name(column: str) -> str | None:
    """The schema field a column holds: 'expression', 'valence', 'arousal' or an AU name."""
    if column.strip().lower() in ("expression", "valence", "arousal"):
        return column.strip().lower()
    try:
        return normalise_au_name(column)
    except ValueError:
        return None


def _csv_records(path: Path, base: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    """Rows as dicts, or a refusal's reason. Invalid UTF-8 arrives as surrogates, which `_row` refuses."""
    with open_label_text(path, base) as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
                # The failing line is consumed but not yet counted in line_num.
                yield reader.line_num + 1, f"not valid CSV ({exc}); row skipped"
                continue
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _jsonl_records(path: Path, base: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    with open_label(path, base) as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield line, "not valid UTF-8; row skipped"
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line, f"not valid JSON ({exc.msg}); row skipped"
                continue
            yield line, record if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}; row skipped"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _row(record: dict[str, object], line: int, path: Path, base: Path) -> Iterator[ImportCandidate | ImportProblem]:
    for column, raw in record.items():
        why = bad_text(str(column)) or bad_text(_text(raw))
        if why:
            yield refused(path, base, f"the value {why}; row skipped", line=line, field=str(column), cause="invalid text")
            return
    image_name, subject = _text(record.get("path")), _text(record.get("subject"))
    for column, text in (("path", image_name), ("subject", subject)):
        if not text:
            yield refused(path, base, f"required column {column!r} is empty; row skipped", line=line, field=column)
    if not image_name or not subject:
        return
    if len(subject) > MAX_SUBJECT:
        reason = f"subject is {len(subject)} characters, more than {MAX_SUBJECT}; row skipped"
        yield refused(path, base, reason, line=line, field="subject", cause="invalid text")
        return
    name = safe_relative(image_name)
    if name is None:
        reason = f"image path {image_name!r} is absolute or leaves the manifest's folder; row skipped"
        yield refused(path, base, reason, line=line, field="path", cause="path escapes the import root")
        return
    image = path.parent / name
    if not image.is_file():
        yield missing_image(image, path, base, line=line)
        return
    values: dict[str, object] = {}
    for column, raw in record.items():
        field, text = _field_name(column), _text(raw)
        if field is None or not text:
            continue
        value, reason = _parse_value(field, text)
        if reason:
            yield dropped(path, base, f"{text!r} {reason}; left missing", line=line, field=column)
        else:
            values[field] = value
    split_text = _text(record.get("split")).lower()
    if split_text and split_text not in SPLITS:
        reason = f"{split_text!r} is not FEID / FEAB (or train / test); split left to the subject split"
        yield dropped(path, base, reason, line=line, field="split")
    yield ImportCandidate(
        source=SOURCE,
        subject=subject,
        path=relative(image, base),
        labels=FaceLabels.from_field_values(values),
        label_files={field: label_file(path, base) for field in values},
        split=SPLITS.get(split_text),
    )


def _parse_value(field: str, text: str) -> tuple[object, str | None]:
    """(value, None) or (None, why the text is not a value of `field`)."""
    if field == "expression":
        expression = parse_expression_name(text)
        return (expression, None) if expression else (None, "is not an expression name")
    if field in ("valence", "arousal"):
        number = parse_number(text)
        ok = number is not None and -1.0 <= number <= 1.0
        return (number, None) if ok else (None, "is not a number in [-1, 1]")
    occurrence = BOOLEANS.get(text.lower())
    return (occurrence, None) if occurrence is not None else (None, "is not 0, 1, true or false")



def write_demo(root: Path, groups: list[int], rng: random.Random) -> None:
    """Rows cycle through expression only, VA only, AUs only and everything; odd subjects go to the JSONL."""
    columns = ["path", "subject", "expression", "valence", "arousal", *ACTION_UNITS]
    csv_rows, json_lines, row = [], [], 0
    for s, images in enumerate(groups):
        subject = f"m{s + 1:02d}"
        for k in range(images):
            labels = sample_labels(rng)
            image = f"images/{subject}_{k + 1:03d}.png"
            write_image(root / image, labels, subject, rng)
            values = labels.field_values()
            keep = [("expression",), ("valence", "arousal"), ACTION_UNITS, tuple(values)][row % 4]
            record = {"path": image, "subject": subject, **{f: values[f] for f in keep}}
            row += 1
            if s % 2:
                json_lines.append(json.dumps(record) + "\n")
            else:
                csv_rows.append([_csv_cell(record.get(c)) for c in columns])
    write_csv(root / "manifest.csv", columns, csv_rows)
    (root / "manifest.jsonl").write_text("".join(json_lines))


def _csv_cell(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


IMPORTER = Importer(
    name=SOURCE,
    title="manifest",
    read=read,
    layout="a .csv or .jsonl listing path, subject and any of expression, valence, arousal, AU*, split",
    order=95,
    demo=write_demo,
    demo_weight=2,
    per_subject=2,
)
