"""Importer edge cases from review: unlabelled frames, folder-name case, unrecognised layouts, escaping paths."""

from __future__ import annotations

import os
from pathlib import Path

from models.schemas import ImportCandidate, ImportProblem
from tasks.importers import READERS, ImportOptions, disfa


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(source: str, root: Path) -> tuple[list[ImportCandidate], list[ImportProblem]]:
    items = list(READERS[source](root, ImportOptions()))
    return [i for i in items if isinstance(i, ImportCandidate)], [i for i in items if isinstance(i, ImportProblem)]


def test_affwild2_reports_face_crops_of_unlabelled_frames(tmp_path: Path) -> None:
    header = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n"
    write(tmp_path, "Annotations/EXPR_Set/Train_Set/v1.txt", header + "4\n-1\n-1\n")
    for frame in (1, 2, 3):
        write(tmp_path, f"cropped_aligned/v1/{frame:05d}.jpg")
    candidates, [problem] = run("affwild2", tmp_path)
    assert [c.path.name for c in candidates] == ["00001.jpg"]
    assert (problem.file.as_posix(), problem.kind, problem.cause) == ("cropped_aligned/v1", "refused", "no label")
    assert "2 face crop(s)" in problem.reason and "frames 2, 3" in problem.reason


def test_disfa_frames_folder_name_is_matched_in_any_case(tmp_path: Path) -> None:
    for number in disfa.AU_NUMBERS:
        write(tmp_path, f"ActionUnit_Labels/SN001/SN001_au{number}.txt", "1,3\n")
    write(tmp_path, "frames/SN001/00001.png")
    [candidate], problems = run("disfa", tmp_path)
    assert problems == [] and candidate.path == Path("frames/SN001/00001.png")


def test_unrecognised_layouts_say_what_was_expected(tmp_path: Path) -> None:
    write(tmp_path, "photos/a.png")
    for source in ("folder", "ckplus"):
        candidates, problems = run(source, tmp_path)
        assert candidates == []
        assert any(p.cause == "no recognised layout" and "expected" in p.reason for p in problems), source


def test_affectnet_refuses_paths_that_leave_the_root(tmp_path: Path) -> None:
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    rows = ["../x.jpg,0,0,5,5,,1,0,0", "/etc/passwd,0,0,5,5,,1,0,0", "1/a.jpg,0,0,5,5,,1,0,0"]
    write(tmp_path, "list.csv", header + "\n".join(rows) + "\n")
    write(tmp_path, "Manually_Annotated_Images/1/a.jpg")
    candidates, problems = run("affectnet", tmp_path)
    assert [c.path.as_posix() for c in candidates] == ["Manually_Annotated_Images/1/a.jpg"]
    assert {(p.line, p.cause) for p in problems} == {(2, "path escapes the import root"), (3, "path escapes the import root")}


def test_a_fifo_label_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "EmoLabel").mkdir()
    os.mkfifo(tmp_path / "EmoLabel/list_patition_label.txt")
    candidates, [problem] = run("rafdb", tmp_path)
    assert candidates == [] and problem.cause == "not a regular file"
