"""Ingest and split against real PostgreSQL and a real S3 endpoint."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from models.labels import FaceLabels, Split
from models.orm import HumanLabel, Image, Subject
from models.schemas import ImportCandidate
from core.config import Settings
from core.db import session_factory, session_scope
from core.store import open_store
from tasks.demo_data import write_demo_data
from tasks.groundtruth import read_ground_truth
from tasks.demo_data import DEMO_SOURCES
from tasks.importers import READERS, ImportOptions
from tasks.ingest import ingest
from tasks.split import assign_splits, feab_target

pytestmark = pytest.mark.usefixtures("clean_db")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root, n=160, seed=3)
    return root


def import_all(settings: Settings, root: Path) -> dict[str, int]:
    store, sessions = open_store(settings), session_factory(settings)
    imported = {}
    for name in DEMO_SOURCES:
        report = ingest(READERS[name](root / name, ImportOptions()), root / name, sessions, store)
        assert report.problems == [], f"{name}: {report.problems[:3]}"
        imported[name] = report.imported
    return imported


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_demo_data_imports_with_labels_equal_to_ground_truth(
    store_kind: str, settings: Settings, demo_root: Path, request: pytest.FixtureRequest
) -> None:
    if store_kind == "s3":
        settings = request.getfixturevalue("s3_settings")
    imported = import_all(settings, demo_root)
    assert all(count > 0 for count in imported.values()), imported

    store = open_store(settings)
    with session_scope(settings) as session:
        images = session.scalars(select(Image)).all()
        assert len(images) == sum(imported.values())
        labels: dict[int, dict[str, object]] = {}
        for label in session.scalars(select(HumanLabel)):
            labels.setdefault(label.image_id, {})[label.field] = label.value
        for image in images:
            truth = read_ground_truth(store.get_bytes(image.object_key))
            assert truth is not None, image.original_path
            stored = labels.get(image.id, {})
            expected = {field: truth.field_values()[field] for field in stored}
            # Every human label equals the generator's ground truth (VA up to the files' precision).
            for field, value in stored.items():
                if isinstance(value, float):
                    assert value == pytest.approx(expected[field], abs=1e-3), (image.original_path, field)
                else:
                    assert value == expected[field], (image.original_path, field)


def test_each_source_provides_its_descriptions(settings: Settings, demo_root: Path) -> None:
    import_all(settings, demo_root)
    with session_scope(settings) as session:
        rows = session.execute(
            select(Image.original_path, HumanLabel.field).join(HumanLabel, HumanLabel.image_id == Image.id)
        ).all()
        from models.orm import SourceDataset

        fields_by_source: dict[str, set[str]] = {}
        for source, field in session.execute(
            select(SourceDataset.name, HumanLabel.field)
            .join(Image, Image.source_id == SourceDataset.id)
            .join(HumanLabel, HumanLabel.image_id == Image.id)
            .distinct()
        ):
            fields_by_source.setdefault(source, set()).add(field)
    assert rows
    assert fields_by_source["rafdb"] == {"expression"}
    assert fields_by_source["affectnet"] == {"expression", "valence", "arousal"}
    assert "expression" not in fields_by_source["disfa"] and "AU12" in fields_by_source["disfa"]
    assert "expression" not in fields_by_source["bp4d"] and "valence" not in fields_by_source["bp4d"]
    assert {"expression", "valence", "AU12"} <= fields_by_source["affwild2"]


def test_reimport_is_a_no_op(settings: Settings, demo_root: Path) -> None:
    first = import_all(settings, demo_root)
    store, sessions = open_store(settings), session_factory(settings)
    report = ingest(READERS["ckplus"](demo_root / "ckplus", ImportOptions()), demo_root / "ckplus", sessions, store)
    assert (report.imported, report.already_present) == (0, first["ckplus"])
    with session_scope(settings) as session:
        assert session.scalar(select(func.count(Image.id))) == sum(first.values())


def _png(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_files_are_refused_alone_and_leave_nothing_behind(settings: Settings, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    bad_files = {
        "empty.png": b"",
        "truncated.png": _png("blue")[:60],
        "notes.png": b"this is not an image at all",
    }
    for name, data in bad_files.items():
        (tmp_path / name).write_bytes(data)
    candidates = [
        ImportCandidate("manifest", "s1", tmp_path / name, FaceLabels(expression="happiness"), {"expression": "m.csv"})
        for name in [*bad_files, "good.png", "missing.png"]
    ]
    report = ingest(candidates, tmp_path, session_factory(settings), open_store(settings))
    assert report.imported == 1
    refused = {problem.file.name: problem for problem in report.problems}
    assert set(refused) == {*bad_files, "missing.png"}
    assert {name: problem.cause for name, problem in refused.items()} == {
        "empty.png": "empty file",
        "truncated.png": "corrupt image",
        "notes.png": "not an image",
        "missing.png": "unreadable",
    }
    assert all(problem.kind == "refused" and name not in problem.reason for name, problem in refused.items())
    with session_scope(settings) as session:
        assert session.scalar(select(func.count(Image.id))) == 1
        assert session.scalar(select(func.count(HumanLabel.id))) == 1
    stored = list(open_store(settings).list_keys("images/"))
    assert len(stored) == 1


def test_split_is_subject_disjoint_about_a_tenth_and_stable(settings: Settings, demo_root: Path) -> None:
    import_all(settings, demo_root)
    with session_scope(settings) as session:
        counts = assign_splits(session, seed=0)
    with session_scope(settings) as session:
        # No subject on both sides: every image's split equals its subject's.
        mixed = session.execute(
            select(Image.subject_id).group_by(Image.subject_id).having(func.count(func.distinct(Image.split)) > 1)
        ).all()
        assert mixed == []
        assert session.scalar(select(func.count()).where(Image.split.is_(None))) == 0
        assert session.scalar(
            select(func.count()).select_from(Image).join(Subject, Image.subject_id == Subject.id).where(Image.split != Subject.split)
        ) == 0
        before = dict(session.execute(select(Subject.id, Subject.split)).all())
    for row in counts:
        total = row.subjects_feid + row.subjects_feab
        if row.newly_assigned == total:  # sources whose layout did not fix the split
            assert row.subjects_feab == feab_target(total, 0.1)

    # More data arrives: earlier decisions never move.
    extra = demo_root.parent / "more"
    write_demo_data(extra, n=80, seed=99)
    store, sessions = open_store(settings), session_factory(settings)
    ingest(READERS["affectnet"](extra / "affectnet", ImportOptions()), extra / "affectnet", sessions, store)
    with session_scope(settings) as session:
        assign_splits(session, seed=0)
    with session_scope(settings) as session:
        after = dict(session.execute(select(Subject.id, Subject.split)).all())
        assert all(after[subject] == split for subject, split in before.items())
        assert set(after.values()) == {Split.FEID.value, Split.FEAB.value}
