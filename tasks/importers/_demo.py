"""Helpers the importers' demo writers share (synthetic faces written in a native layout)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from models.labels import EXPRESSIONS, FaceLabels
from tasks.synthetic import render, sample_labels


def write_image(path: Path, labels: FaceLabels, identity: str, rng: random.Random, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render(labels, identity, rng, fmt))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_csv(path: Path, header: list[object], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def no_contempt(rng: random.Random) -> FaceLabels:
    """Labels for sources without a contempt class (RAF-DB, Aff-Wild2)."""
    return sample_labels(rng, rng.choice([e for e in EXPRESSIONS if e != "contempt"]))


def au_number(au: str) -> int:
    return int(au.removeprefix("AU"))
