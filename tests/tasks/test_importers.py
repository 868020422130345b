"""Importers on small native-layout trees, and on the demo data against its embedded ground truth.

Importers never read image bytes, so fixture images here are empty files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

import pytest

from models.labels import ACTION_UNITS, Split, task_of
from models.schemas import ImportCandidate, ImportProblem
from tasks.demo_data import DEMO_SOURCES, write_demo_data
from tasks.groundtruth import read_ground_truth
from tasks.images import load_candidate_bytes, validate_image
from tasks.importers import IMPORTERS, READERS, SOURCES, ImportOptions, affwild2, disfa, folder

DEFAULT = ImportOptions()


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(source: str, root: Path, options: ImportOptions = DEFAULT) -> tuple[list[ImportCandidate], list[ImportProblem]]:
    items = list(READERS[source](root, options))
    return [i for i in items if isinstance(i, ImportCandidate)], [i for i in items if isinstance(i, ImportProblem)]


def reasons(problems: Iterable[ImportProblem]) -> str:
    return "\n".join(str(p) for p in problems)


def located(problems: Iterable[ImportProblem]) -> set[tuple[str, int | None, str | None, str]]:
    """(file, line, field, kind) of each problem: where it is and what it cost, without reading prose."""
    return {(p.file.as_posix(), p.line, p.field, p.kind) for p in problems}


def test_registry_is_found_from_the_modules_and_documented() -> None:
    modules = {p.stem for p in Path(folder.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert {importer.read.__module__.rsplit(".", 1)[1] for importer in IMPORTERS.values()} == modules
    assert SOURCES[:6] == ("ckplus", "rafdb", "affectnet", "disfa", "bp4d", "affwild2")  # stored names never change
    assert SOURCES[-2:] == ("folder", "manifest") and tuple(READERS) == SOURCES
    assert "expw" in SOURCES and "expw" not in DEMO_SOURCES  # a newcomer: one module, no demo writer
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in SOURCES:
        assert f"| `{name}` |" in readme, f"README's format table has no row for {name}"


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="frame_stride"):
        ImportOptions(frame_stride=0)
    with pytest.raises(ValueError, match="au_threshold"):
        ImportOptions(au_threshold=6)


# --- CK+ -------------------------------------------------------------------


def test_ckplus_peak_frame_emotion_and_facs(tmp_path: Path) -> None:
    for frame in (1, 2, 3):
        write(tmp_path, f"cohn-kanade-images/S005/001/S005_001_0000000{frame}.png")
    write(tmp_path, "Emotion/S005/001/S005_001_00000003_emotion.txt", "   3.0000000e+00\n")
    write(tmp_path, "FACS/S005/001/S005_001_00000003_facs.txt", "   9.0000000e+00   4.0000000e+00\n   6.2000000e+01   0.0000000e+00\n")
    # FACS only: AU labels, no expression; neither: skipped.
    write(tmp_path, "cohn-kanade-images/S010/002/S010_002_00000001.png")
    write(tmp_path, "FACS/S010/002/S010_002_00000001_facs.txt", "   1.2000000e+01   0.0000000e+00\n")
    write(tmp_path, "cohn-kanade-images/S011/001/S011_001_00000001.png")
    candidates, problems = run("ckplus", tmp_path)
    assert problems == []
    first, second = candidates
    assert first.path == Path("cohn-kanade-images/S005/001/S005_001_00000003.png")
    assert first.subject == "S005"
    assert first.labels.expression == "disgust"
    assert first.labels.aus == {au: au == "AU9" for au in ACTION_UNITS}  # AU62 ignored, unlisted = absent
    assert first.label_files["expression"] == "Emotion/S005/001/S005_001_00000003_emotion.txt"
    assert first.label_files["AU1"] == "FACS/S005/001/S005_001_00000003_facs.txt"
    assert (second.subject, second.labels.expression, second.labels.aus["AU12"]) == ("S010", None, True)


def test_ckplus_invalid_code_bad_facs_and_missing_images(tmp_path: Path) -> None:
    write(tmp_path, "cohn-kanade-images/S005/001/S005_001_00000001.png")
    write(tmp_path, "Emotion/S005/001/S005_001_00000001_emotion.txt", "9.0\n")
    write(tmp_path, "FACS/S005/001/S005_001_00000001_facs.txt", "1 0\nnot an AU line\n")
    write(tmp_path, "Emotion/S006/001/S006_001_00000009_emotion.txt", "1.0\n")  # no images
    candidates, problems = run("ckplus", tmp_path)
    [candidate] = candidates
    assert candidate.labels.field_values() == {} and candidate.label_files == {}
    assert located(problems) == {
        ("Emotion/S005/001/S005_001_00000001_emotion.txt", 1, "expression", "dropped"),
        ("FACS/S005/001/S005_001_00000001_facs.txt", 2, None, "dropped"),
        ("Emotion/S006/001/S006_001_00000009_emotion.txt", None, None, "refused"),
    }
    assert "no image at cohn-kanade-images/S006/001" in reasons(problems)


# --- RAF-DB ----------------------------------------------------------------


def test_rafdb_codes_layouts_and_problems(tmp_path: Path) -> None:
    write(tmp_path, "EmoLabel/list_patition_label.txt", "train_00001.jpg 4\ntest_0001.jpg 7\ntrain_00002.jpg 8\nbroken\ntrain_00003.jpg 1\n")
    write(tmp_path, "Image/aligned/train_00001_aligned.jpg")
    write(tmp_path, "Image/original/test_0001.jpg")  # no aligned crop: the original is used
    write(tmp_path, "Image/aligned/train_00002_aligned.jpg")
    candidates, problems = run("rafdb", tmp_path)
    assert [(c.subject, c.labels.expression) for c in candidates] == [
        ("train_00001", "happiness"),
        ("test_0001", "neutral"),
        ("train_00002", None),
    ]
    assert candidates[1].path == Path("Image/original/test_0001.jpg")
    assert candidates[0].label_files == {"expression": "EmoLabel/list_patition_label.txt"}
    text = reasons(problems)
    assert "line 3, field 'expression': code '8' is not one of 1-7" in text
    assert "line 4: expected '<image name> <code>'" in text
    assert "line 5: no image at Image/aligned/train_00003_aligned.jpg" in text


# --- AffectNet -------------------------------------------------------------

AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"


def test_affectnet_codes_va_and_crop(tmp_path: Path) -> None:
    rows = [
        "1/a.jpg,10,20,30,40,,1,0.5,-0.25",  # happy
        "1/b.jpg,0,0,5,5,,8,-2,-2",  # none, VA not annotated: all missing, no problem
        "1/c.jpg,0,0,5,5,,10,0,0",  # no face: refused
        "1/d.jpg,0,0,-5,5,,12,1.5,x",  # invalid box, code and values
        "1/e.jpg,0,0,5,5,,0,0,0",  # image missing
    ]
    write(tmp_path, "Manually_Annotated_file_lists/training.csv", AFFECTNET_HEADER + "\n".join(rows) + "\n")
    for name in "abcd":
        write(tmp_path, f"Manually_Annotated_Images/1/{name}.jpg")
    candidates, problems = run("affectnet", tmp_path, ImportOptions(crop_faces=True))
    a, b, d = candidates
    assert (a.labels.expression, a.labels.valence, a.labels.arousal, a.crop_box) == ("happiness", 0.5, -0.25, (10, 20, 40, 60))
    assert a.subject == "a" and a.path == Path("Manually_Annotated_Images/1/a.jpg")
    assert set(a.label_files) == {"expression", "valence", "arousal"}
    assert b.labels.field_values() == {} and b.crop_box == (0, 0, 5, 5)
    assert d.labels.field_values() == {} and d.crop_box is None
    text = reasons(problems)
    assert "line 5, field 'face_x': face box is not four integers with positive size" in text
    assert "line 4: AffectNet marks this image as 'no face'" in text
    assert "line 5, field 'expression': code '12'" in text
    assert "line 5, field 'valence': '1.5' is not in [-1, 1]" in text
    assert "line 5, field 'arousal': 'x'" in text
    assert "line 6: no image at Manually_Annotated_Images/1/e.jpg" in text
    assert not any("line 3" in p.reason for p in problems)


def test_affectnet_accepts_paths_relative_to_root_and_no_crop_by_default(tmp_path: Path) -> None:
    write(tmp_path, "list.csv", AFFECTNET_HEADER + "imgs/a.png,1,1,5,5,,3,0.1,0.2\n")
    write(tmp_path, "imgs/a.png")
    [candidate], problems = run("affectnet", tmp_path)
    assert problems == [] and candidate.path == Path("imgs/a.png") and candidate.crop_box is None


# --- DISFA -----------------------------------------------------------------


def disfa_tree(root: Path, frames: int = 4) -> None:
    for number in disfa.AU_NUMBERS:
        # AU1 intensity rises 0..3 over the frames; the others stay 0.
        text = "".join(f"{f},{f - 1 if number == 1 else 0}\n" for f in range(1, frames + 1))
        write(root, f"ActionUnit_Labels/SN001/SN001_au{number}.txt", text)
    for f in range(1, frames + 1):
        write(root, f"Frames/SN001/{f:05d}.png" if f % 2 else f"Frames/SN001/{f}.jpg")


def test_disfa_threshold_is_configurable(tmp_path: Path) -> None:
    disfa_tree(tmp_path)
    default, problems = run("disfa", tmp_path)
    assert problems == []
    assert [c.labels.aus["AU1"] for c in default] == [False, False, True, True]  # intensity >= 2
    assert [c.labels.aus["AU1"] for c in run("disfa", tmp_path, ImportOptions(au_threshold=3))[0]] == [False, False, False, True]
    first = default[0]
    assert set(first.labels.aus) == {f"AU{n}" for n in disfa.AU_NUMBERS}  # the other five stay missing
    assert first.label_files["AU26"] == "ActionUnit_Labels/SN001/SN001_au26.txt"
    assert (first.subject, default[1].path) == ("SN001", Path("Frames/SN001/2.jpg"))


def test_disfa_stride_frames_dir_and_problems(tmp_path: Path) -> None:
    root = tmp_path / "disfa"
    disfa_tree(root, frames=5)
    (root / "ActionUnit_Labels/SN001/SN001_au26.txt").unlink()
    write(root, "ActionUnit_Labels/SN001/SN001_au2.txt", "1,0\n2,x\n3,7\n4,0\n5,0\n")
    candidates, problems = run("disfa", root, ImportOptions(frame_stride=2))
    assert [c.path.name for c in candidates] == ["00001.png", "00003.png", "00005.png"]
    assert "AU26" not in candidates[0].labels.aus and "AU2" not in candidates[1].labels.aus
    text = reasons(problems)
    assert ("ActionUnit_Labels/SN001/SN001_au26.txt", None, "AU26", "dropped") in located(problems)
    assert "SN001_au2.txt: line 2, field 'AU2': expected 'frame,intensity'" in text
    assert "SN001_au2.txt: line 3, field 'AU2': intensity 7 is not in 0-5" in text
    elsewhere = tmp_path / "extracted"  # outside the root: paths stay absolute
    (root / "Frames").rename(elsewhere)
    candidates, problems = run("disfa", root, ImportOptions(frames_dir=elsewhere))
    assert candidates[0].path == elsewhere / "SN001/00001.png"
    assert "no image" not in reasons(problems)
    assert "no image at Frames/SN001/00001.png" in reasons(run("disfa", root)[1])


# --- BP4D ------------------------------------------------------------------


def test_bp4d_occurrence_unknown_and_stride(tmp_path: Path) -> None:
    rows = ["0,1,2,4,11,12", "51,1,0,9,1,1", "52,0,0,1,0,5", "53,1,1,0,0,0", "54,x", "55,9,9,9,9,9"]
    write(tmp_path, "AU_OCC/M003_T2.csv", "\n".join(rows) + "\n")
    for frame in (51, 52):
        write(tmp_path, f"M003/T2/{frame:04d}.jpg")
    write(tmp_path, "M003/T2/53.jpg")  # any zero padding
    candidates, problems = run("bp4d", tmp_path)
    first, second, third = candidates
    assert first.subject == "M003" and first.path == Path("M003/T2/0051.jpg")
    assert first.labels.aus == {"AU1": True, "AU2": False, "AU12": True}  # 9 -> missing, AU11 not in the schema
    assert second.labels.aus == {"AU1": False, "AU2": False, "AU4": True}
    assert third.path == Path("M003/T2/53.jpg")
    assert first.label_files == {au: "AU_OCC/M003_T2.csv" for au in first.labels.aus}
    text = reasons(problems)
    assert "AU_OCC/M003_T2.csv: line 3, field 'AU12': '5' is not 0, 1 or 9" in text
    assert "line 5: expected a frame number and 5 values" in text
    assert "line" not in text.replace("line 3", "").replace("line 5", "")  # the all-9 row is simply skipped
    strided = run("bp4d", tmp_path, ImportOptions(frame_stride=2))[0]
    assert [c.path.name for c in strided] == ["0051.jpg", "53.jpg"]


# --- Aff-Wild2 -------------------------------------------------------------


def test_affwild2_merges_sets_and_maps_missing_codes(tmp_path: Path) -> None:
    video = "12-24-1920x1080_left"
    write(tmp_path, f"Annotations/EXPR_Set/Train_Set/{video}.txt", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n4\n7\n-1\n9\n")
    write(tmp_path, f"Annotations/VA_Set/Validation_Set/{video}.txt", "valence,arousal\n0.5,-0.5\n-5,0.25\n2.0,0.1\n-5,-5\n")
    unknown = ",".join(["-1"] * 12)
    au_rows = ["AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26", "1,0,0,1,0,0,1,0,0,0,1,0", unknown, unknown, unknown]
    write(tmp_path, f"Annotations/AU_Set/Train_Set/{video}.txt", "\n".join(au_rows) + "\n")
    for frame in (1, 2):
        write(tmp_path, f"cropped_aligned/{video}/{frame:05d}.jpg")
    candidates, problems = run("affwild2", tmp_path)
    first, second = candidates
    assert first.subject == "12-24-1920x1080"
    assert (first.labels.expression, first.labels.valence, first.labels.arousal) == ("happiness", 0.5, -0.5)
    present = {au for au, value in first.labels.aus.items() if value}
    assert (len(first.labels.aus), present) == (12, {"AU1", "AU6", "AU12", "AU25"})
    assert first.label_files["valence"] == f"Annotations/VA_Set/Validation_Set/{video}.txt"
    assert first.label_files["AU12"] == f"Annotations/AU_Set/Train_Set/{video}.txt"
    assert second.labels.field_values() == {"arousal": 0.25}  # Other and -5 are missing
    text = reasons(problems)
    assert f"EXPR_Set/Train_Set/{video}.txt: line 5, field 'expression': '9' is not a class index" in text
    assert f"VA_Set/Validation_Set/{video}.txt: line 4, field 'valence': '2.0' is not in [-1, 1]" in text
    assert f"line 4: no image at cropped_aligned/{video}/00003.jpg" in text  # frame 3 has no face crop
    assert "00004" not in text  # frame 4 has no labels at all: not a candidate


def test_affwild2_bad_header_stride_and_subjects(tmp_path: Path) -> None:
    write(tmp_path, "Annotations/VA_Set/Train_Set/v1.txt", "valence;arousal\n0,0\n")
    write(tmp_path, "Annotations/EXPR_Set/Train_Set/v2_right.txt", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n" + "0\n" * 5)
    for frame in range(1, 6):
        write(tmp_path, f"cropped_aligned/v2_right/{frame:05d}.jpg")
    candidates, problems = run("affwild2", tmp_path, ImportOptions(frame_stride=2))
    assert [c.path.name for c in candidates] == ["00001.jpg", "00003.jpg", "00005.jpg"]
    assert {c.subject for c in candidates} == {"v2"}
    assert "VA_Set/Train_Set/v1.txt: line 1: unexpected VA_Set header" in reasons(problems)
    assert affwild2.subject_of("video5") == "video5"


# --- Folder ----------------------------------------------------------------


def test_folder_splits_synonyms_and_subjects(tmp_path: Path) -> None:
    write(tmp_path, "train/Happy/p01_001.png")
    write(tmp_path, "train/SAD/p01_002.jpg")
    write(tmp_path, "test/angry/p02_001.png")
    write(tmp_path, "test/angry/notes.txt")
    write(tmp_path, "test/bored/p03_001.png")
    write(tmp_path, "surprised/img7.png")
    candidates, problems = run("folder", tmp_path)
    got = {(c.path.as_posix(), c.subject, c.labels.expression, c.split) for c in candidates}
    assert got == {
        ("train/Happy/p01_001.png", "p01", "happiness", Split.FEID),
        ("train/SAD/p01_002.jpg", "p01", "sadness", Split.FEID),
        ("test/angry/p02_001.png", "p02", "anger", Split.FEAB),
        ("surprised/img7.png", "img7", "surprise", None),
    }
    assert next(c for c in candidates if c.subject == "p02").label_files == {"expression": "test/angry"}
    text = reasons(problems)
    assert "test/bored: the folder name is not an expression" in text
    assert "test/angry/notes.txt: not an image file name" in text
    assert folder.subject_of("_x.png") == "_x"


# --- Manifest --------------------------------------------------------------


def test_manifest_csv_values_and_bad_fields(tmp_path: Path) -> None:
    write(tmp_path, "data/imgs/a.png")
    write(tmp_path, "data/imgs/b.png")
    lines = [
        "path,subject,expression,valence,arousal,AU12,au6,AU43,split,notes",
        "imgs/a.png,s1,Happy,0.5,0.25,1,true,1,FEAB,x",
        "imgs/b.png,s2,bored,1.5,,maybe,0,,nope,",
        ",s3,happy,,,,,,,",
        "imgs/c.png,s4,,,,,,,,",
    ]
    manifest = write(tmp_path, "data/manifest.csv", "\n".join(lines) + "\n")
    candidates, problems = run("manifest", manifest)
    a, b = candidates
    assert a.path == Path("imgs/a.png") and a.subject == "s1" and a.split is Split.FEAB
    assert a.labels.field_values() == {"expression": "happiness", "valence": 0.5, "arousal": 0.25, "AU6": True, "AU12": True}
    assert a.label_files == {field: "manifest.csv" for field in a.labels.field_values()}
    assert b.labels.field_values() == {"AU6": False} and b.split is None
    text = reasons(problems)
    assert "manifest.csv: line 2: unknown column(s) AU43, notes ignored" in text
    assert "line 3, field 'expression': 'bored' is not an expression name" in text
    assert "line 3, field 'valence': '1.5' is not a number in [-1, 1]" in text
    assert "line 3, field 'AU12': 'maybe' is not 0, 1, true or false" in text
    assert "line 3, field 'split': 'nope'" in text
    assert "line 4, field 'path': required column 'path' is empty" in text
    assert "line 5: no image at imgs/c.png" in text
    loaded = load_candidate_bytes(a, manifest)  # paths resolve against the manifest's folder
    assert loaded == b""


def test_manifest_jsonl_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path, "x.png")
    records = [
        json.dumps({"path": "x.png", "subject": 7, "AU1": True, "AU2": 0, "arousal": -0.5, "expression": None}),
        "{not json",
        json.dumps(["a list"]),
    ]
    write(tmp_path, "rows.jsonl", "\n".join(records) + "\n")
    [candidate], problems = run("manifest", tmp_path)
    assert candidate.subject == "7"
    assert candidate.labels.field_values() == {"arousal": -0.5, "AU1": True, "AU2": False}
    text = reasons(problems)
    assert "rows.jsonl: line 2: not valid JSON" in text
    assert "rows.jsonl: line 3: expected a JSON object, got list" in text


# --- Demo data: import == embedded ground truth -----------------------------

#: The label fields each source provides in the demo (its real label availability).
PROVIDED = {
    "ckplus": {"expression", *ACTION_UNITS},
    "rafdb": {"expression"},
    "affectnet": {"expression", "valence", "arousal"},
    "disfa": {f"AU{n}" for n in disfa.AU_NUMBERS},
    "bp4d": {"AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"},
    "affwild2": {"expression", "valence", "arousal", *"AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26".split()},
    "folder": {"expression"},
    "manifest": {"expression", "valence", "arousal", *ACTION_UNITS},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_data(out, n=200, seed=3)


@pytest.mark.parametrize("source", DEMO_SOURCES)
def test_demo_import_equals_embedded_ground_truth(demo: tuple[Path, dict[str, int]], source: str) -> None:
    out, counts = demo
    candidates, problems = run(source, out / source)
    assert problems == [], reasons(problems)
    assert len(candidates) == counts[source]
    assert len({c.subject for c in candidates}) >= 10  # a 1/10 subject split gives FEAB a subject
    seen: set[str] = set()
    for candidate in candidates:
        data = load_candidate_bytes(candidate, out / source)
        validate_image(data, name=str(candidate.path))
        truth = read_ground_truth(data)
        assert truth is not None
        values = candidate.labels.field_values()
        assert values, candidate.path
        assert {f: truth.field_values()[f] for f in values} == values, candidate.path
        assert set(candidate.label_files) == set(values)
        seen.update(values)
    assert seen <= PROVIDED[source]
    assert {task_of(f) for f in seen} == {task_of(f) for f in PROVIDED[source]}


def test_demo_counts_and_determinism(tmp_path: Path, demo: tuple[Path, dict[str, int]]) -> None:
    _, counts = demo
    assert abs(sum(counts.values()) - 200) <= 2 and set(counts) == set(DEMO_SOURCES)
    small = write_demo_data(tmp_path / "a", n=16, seed=1)
    assert abs(sum(small.values()) - 16) <= len(small) and min(small.values()) >= 1  # rounding, one face each
    write_demo_data(tmp_path / "b", n=16, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    pick = random.Random(0).sample(files, 5)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in pick)
    assert min(write_demo_data(tmp_path / "c", n=1).values()) == 1  # every layout gets a face
    with pytest.raises(ValueError, match="at least 1"):
        write_demo_data(tmp_path / "d", n=0)


def test_demo_ckplus_has_onset_frames_before_the_peak(demo: tuple[Path, dict[str, int]]) -> None:
    out, _ = demo
    sequence = sorted((out / "ckplus/cohn-kanade-images/S005/001").iterdir())
    assert len(sequence) == 3
    peaks = [c for c in run("ckplus", out / "ckplus")[0] if c.subject == "S005" and c.path.parent.name == "001"]
    assert [c.path.name for c in peaks] == [sequence[-1].name]
