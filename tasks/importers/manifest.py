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
with file, line and field and left missing; a row without a path, a
subject or an existing image is refused; the other rows go on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from models.labels import FaceLabels, Split, normalise_au_name
from models.schemas import ImportCandidate, ImportProblem
from tasks.importers._common import (
    import_base,
    label_file,
    missing_image,
    parse_expression_name,
    parse_number,
    problem,
    relative,
)

if TYPE_CHECKING:
    from tasks.importers import ImportOptions

SOURCE = "manifest"
SUFFIXES = (".csv", ".jsonl")
SPLITS = {"feid": Split.FEID, "train": Split.FEID, "feab": Split.FEAB, "test": Split.FEAB}
BOOLEANS = {"1": True, "true": True, "0": False, "false": False}


def read(root: Path, options: ImportOptions) -> Iterator[ImportCandidate | ImportProblem]:
    base = import_base(root)
    manifests = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)
    if not manifests:
        yield problem(root, base, "no manifest found; expected a .csv or .jsonl file")
    for path in manifests:
        yield from _read_manifest(path, base)


def _read_manifest(path: Path, base: Path) -> Iterator[ImportCandidate | ImportProblem]:
    if path.suffix.lower() not in SUFFIXES:
        yield problem(path, base, f"a manifest must be .csv or .jsonl, not {path.suffix!r}")
        return
    reported: set[str] = set()
    for line, record in (_csv_records if path.suffix.lower() == ".csv" else _jsonl_records)(path):
        if isinstance(record, str):
            yield problem(path, base, record, line=line)
            continue
        unknown = sorted(set(record) - reported - {"path", "subject", "split"} - _known_columns(record))
        if unknown:
            reported.update(unknown)
            yield problem(path, base, f"unknown column(s) {', '.join(unknown)} ignored", line=line)
        yield from _row(record, line, path, base)


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


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
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
    image_name, subject = _text(record.get("path")), _text(record.get("subject"))
    for column, text in (("path", image_name), ("subject", subject)):
        if not text:
            yield problem(path, base, f"required column {column!r} is empty; row skipped", line=line, field=column)
    if not image_name or not subject:
        return
    image = path.parent / image_name
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
            yield problem(path, base, f"{text!r} {reason}; left missing", line=line, field=column)
        else:
            values[field] = value
    split_text = _text(record.get("split")).lower()
    if split_text and split_text not in SPLITS:
        reason = f"{split_text!r} is not FEID / FEAB (or train / test); split left to the subject split"
        yield problem(path, base, reason, line=line, field="split")
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

