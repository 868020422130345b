"""ExpW: one line per face, each face its own crop, bad lines refused."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from models.schemas import ImportCandidate, ImportProblem
from tasks.images import load_candidate_bytes
from tasks.importers import IMPORTERS, ImportOptions


def test_expw_faces_become_crops_and_bad_lines_are_refused(tmp_path: Path) -> None:
    (tmp_path / "image/origin").mkdir(parents=True)
    Image.new("RGB", (200, 100), "red").save(tmp_path / "image/origin/a.jpg")
    (tmp_path / "label").mkdir()
    lines = [
        "a.jpg 0 10 20 80 90 55.2 3",  # happy face: left 20, top 10, right 80, bottom 90
        "a.jpg 1 5 110 190 95 40.1 6",  # a second face in the same photo
        "a.jpg 2 5 110 190 95 40.1 9",  # unknown code
        "../b.jpg 0 1 1 20 20 1.0 3",  # leaves the root
        "c.jpg 0 1 1 20 20 1.0 3",  # no image
        "short line",
    ]
    (tmp_path / "label/label.lst").write_text("\n".join(lines) + "\n")
    items = list(IMPORTERS["expw"].read(tmp_path, ImportOptions()))
    first, second = [i for i in items if isinstance(i, ImportCandidate)]
    assert (first.subject, first.labels.expression, first.crop_box) == ("a", "happiness", (20, 10, 80, 90))
    assert (second.subject, second.labels.expression) == ("a", "neutral")
    assert first.label_files == {"expression": "label/label.lst"}
    with Image.open(io.BytesIO(load_candidate_bytes(first, tmp_path))) as crop:
        assert crop.size == (60, 80)
    problems = [i for i in items if isinstance(i, ImportProblem)]
    assert {(p.line, p.kind) for p in problems} == {(3, "refused"), (4, "refused"), (5, "refused"), (6, "refused")}
