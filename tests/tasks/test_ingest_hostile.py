"""Hostile and odd input: one tree holding every case, imported for real (PostgreSQL, local store).

Every good file is imported, every bad one refused with a reason, and nothing
outside the import root is opened or listed (checked with an audit hook that
sees every open / listdir of this process).
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_factory, session_scope
from core.store import open_store
from models.orm import HumanLabel, Image, SourceDataset, Subject
from tasks.importers import READERS, ImportOptions
from tasks.ingest import IngestReport, ingest

pytestmark = pytest.mark.usefixtures("clean_db")

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only inside `recording()`


@contextmanager
def recording() -> Iterator[list[str]]:
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def png(colour: str, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """(import trees, the outside folder): folder, manifest and RAF-DB layouts full of traps."""
    outside = tmp_path / "outside"
    put(outside / "x.png", png("black"))  # a valid image: had it been read, it would have been imported
    put(outside / "secret" / "p09_001.png", png("grey"))
    trees = tmp_path / "trees"

    folder = trees / "folder"
    put(folder / "happy/p01_001.png", png("red"))
    put(folder / "happy/p02_001.png", png("green"))
    put(folder / "raw/p03.png", png("blue"))  # not an expression folder: refused, but a link may point here
    (folder / "happy/p03_001.png").symlink_to("../raw/p03.png")  # inside the root: followed
    os.mkfifo(folder / "happy/fifo.jpg")
    (folder / "happy/zero.jpg").symlink_to("/dev/zero")
    with (folder / "happy/sparse.jpg").open("wb") as handle:
        handle.truncate(3 << 30)  # 3 GB, sparse
    (folder / "happy/passwd.png").symlink_to(outside / "x.png")
    (folder / "sad").symlink_to(outside / "secret", target_is_directory=True)
    put(folder / "surprised/cut.png", png("white")[:50])

    manifest = trees / "manifest"
    for name, colour in (("m1", "cyan"), ("m2", "magenta"), ("m3", "yellow"), ("m4", "orange")):
        put(manifest / f"imgs/{name}.png", png(colour))
    (manifest / "imgs/out.png").symlink_to(outside / "x.png")
    rows = [
        b"path,subject,expression",
        b"imgs/m1.png,s1,happy",
        b"../outside/x.png,s2,happy",
        b"/etc/passwd,s3,happy",
        b"imgs/m1.png,s4,\xff\xfe",  # invalid UTF-8
        b"imgs/m1.png,s5," + b"x" * (130 * 1024),  # a field over the csv module's 128 KiB limit
        b"imgs/m1.png,s\x006,happy",  # a NUL
        b"imgs/m1.png," + b"s" * 201 + b",happy",  # a subject over 200 characters
        b"imgs/out.png,s7,happy",  # a symlink out of the folder
        b"imgs/m2.png,s8,sad",
    ]
    put(manifest / "rows.csv", b"\n".join(rows) + b"\n")
    lines = [
        json.dumps({"path": "imgs/m3.png", "subject": "j1", "expression": "fear"}).encode(),
        b'{"path": "imgs/m3.png", "subject": "\xff"}',
        json.dumps({"path": "../outside/x.png", "subject": "j2"}).encode(),
        json.dumps({"path": "imgs/m4.png", "subject": "j3\u0000", "expression": "fear"}).encode(),
        json.dumps({"path": "imgs/m4.png", "subject": "j4", "expression": "anger"}).encode(),
    ]
    put(manifest / "rows.jsonl", b"\n".join(lines) + b"\n")

    rafdb = trees / "rafdb"
    put(rafdb / "Image/aligned/train_1_aligned.png", png("purple"))
    put(rafdb / "Image/aligned/train_2_aligned.png", png("brown"))
    labels = "train_1.png 4\n../../../outside/x.png 4\n/etc/x.png 4\ntrain_2.png 5\n"
    put(rafdb / "EmoLabel/list_patition_label.txt", labels)
    return trees, outside


def import_tree(settings: Settings, name: str, root: Path, **kwargs: object) -> IngestReport:
    return ingest(READERS[name](root, ImportOptions()), root, session_factory(settings), open_store(settings), **kwargs)  # type: ignore[arg-type]


def refusals(report: IngestReport) -> dict[tuple[str, int | None], str]:
    return {(p.file.as_posix(), p.line): p.cause for p in report.refused}


def test_hostile_tree_imports_every_good_file_refuses_every_bad_one_and_reads_nothing_outside(
    settings: Settings, hostile: tuple[Path, Path]
) -> None:
    trees, outside = hostile
    with recording() as opened:
        folder = import_tree(settings, "folder", trees / "folder")
        manifest = import_tree(settings, "manifest", trees / "manifest")
        rafdb = import_tree(settings, "rafdb", trees / "rafdb")
    assert not [path for path in opened if os.path.realpath(path).startswith(str(outside.resolve()))]

    assert (folder.imported, manifest.imported, rafdb.imported) == (3, 4, 2)
    assert refusals(folder) == {
        ("happy/fifo.jpg", None): "not a regular file",
        ("happy/zero.jpg", None): "outside the import root",
        ("happy/sparse.jpg", None): "too large",
        ("happy/passwd.png", None): "outside the import root",
        ("sad", None): "outside the import root",
        ("raw", None): "not an expression folder",
        ("surprised/cut.png", None): "corrupt image",
    }
    assert refusals(manifest) == {
        ("rows.csv", 3): "path escapes the import root",
        ("rows.csv", 4): "path escapes the import root",
        ("rows.csv", 5): "invalid text",
        ("rows.csv", 6): "invalid record",  # not valid CSV
        ("rows.csv", 7): "invalid text",
        ("rows.csv", 8): "invalid text",
        ("imgs/out.png", None): "outside the import root",
        ("rows.jsonl", 2): "invalid record",  # not valid UTF-8
        ("rows.jsonl", 3): "path escapes the import root",
        ("rows.jsonl", 4): "invalid text",
    }
    assert refusals(rafdb) == {
        ("EmoLabel/list_patition_label.txt", 2): "path escapes the import root",
        ("EmoLabel/list_patition_label.txt", 3): "path escapes the import root",
    }
    for report in (folder, manifest, rafdb):
        assert report.dropped == []
        for problem in report.refused:
            assert problem.reason and problem.file.as_posix() not in problem.reason  # the path is said once
    with session_scope(settings) as session:
        paths = set(session.scalars(select(Image.original_path)))
        assert paths == {
            "happy/p01_001.png", "happy/p02_001.png", "happy/p03_001.png",
            "imgs/m1.png", "imgs/m2.png", "imgs/m3.png", "imgs/m4.png",
            "Image/aligned/train_1_aligned.png", "Image/aligned/train_2_aligned.png",
        }  # fmt: skip
        # Subjects only for imported images (m1 and m4 were listed by refused rows too).
        assert session.scalar(select(func.count(Subject.id))) == 9


def test_hostile_tree_through_a_process_pool(settings: Settings, hostile: tuple[Path, Path]) -> None:
    trees, _ = hostile
    report = import_tree(settings, "folder", trees / "folder", workers=2, batch_size=2)
    assert report.imported == 3
    assert {p.file.as_posix() for p in report.refused} >= {"happy/fifo.jpg", "happy/sparse.jpg", "happy/zero.jpg"}


def test_same_bytes_in_two_datasets_keep_both_sources_labels(settings: Settings, tmp_path: Path) -> None:
    face = png("red")
    put(tmp_path / "a/happy/p01_001.png", face)
    put(tmp_path / "b/imgs/x.png", face)
    put(tmp_path / "b/m.csv", "path,subject,expression,AU12\nimgs/x.png,other,surprise,1\n")
    first = import_tree(settings, "folder", tmp_path / "a")
    second = import_tree(settings, "manifest", tmp_path / "b")
    assert (first.imported, second.imported, second.already_present) == (1, 0, 1)
    assert second.merged_labels == 2
    with session_scope(settings) as session:
        rows = session.execute(
            select(SourceDataset.name, HumanLabel.field, HumanLabel.value_text, HumanLabel.source_file)
            .join(SourceDataset, HumanLabel.source_id == SourceDataset.id)
            .order_by(HumanLabel.id)
        ).all()
        assert [tuple(row) for row in rows] == [
            ("folder", "expression", "happiness", "happy"),
            ("manifest", "expression", "surprise", "m.csv"),
            ("manifest", "AU12", None, "m.csv"),
        ]
        assert session.scalar(select(func.count(Subject.id))) == 1  # no subject for the duplicate
    again = import_tree(settings, "manifest", tmp_path / "b")
    assert (again.already_present, again.merged_labels) == (1, 0)


def test_refused_counts_only_what_was_not_imported(settings: Settings, tmp_path: Path) -> None:
    """One image imported with two values dropped, one row refused: 1 refused, not 3."""
    put(tmp_path / "imgs/a.png", png("red"))
    put(tmp_path / "m.csv", "path,subject,expression,valence\nimgs/a.png,s1,bored,7\nimgs/gone.png,s2,happy,0\n")
    report = import_tree(settings, "manifest", tmp_path / "m.csv")
    assert report.imported == 1
    assert [(p.line, p.field) for p in report.dropped] == [(2, "expression"), (2, "valence")]
    assert [(p.line, p.cause) for p in report.refused] == [(3, "no image for labels")]
    assert report.refused_by_cause() == {"no image for labels": 1}
