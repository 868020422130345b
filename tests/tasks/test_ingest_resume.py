"""An import killed at any point (SIGKILL) and re-run ends with every image exactly once and no orphans;
a split import (two shards, one database) imports each image once; `collect_garbage` removes orphans."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_factory, session_scope
from core.store import image_key, open_store
from models.orm import HumanLabel, Image
from tasks.importers import READERS, ImportOptions
from tasks.ingest import collect_garbage, ingest
from tasks.synthetic import render, sample_labels
from tests.helpers import wait_until

pytestmark = pytest.mark.usefixtures("clean_db")
REPO = Path(__file__).resolve().parents[2]
N = 120
STALL_AT = 55  # the import stands still storing this object: mid-batch, 5 batches of 10 recorded before it

IMPORT = """
import sys, time
from pathlib import Path
from core.config import Settings
from core.db import session_factory
from core.store import open_store
from tasks.importers import READERS, ImportOptions
from tasks.ingest import ingest

class Stalling:
    def __init__(self, store, stall_at, marker):
        self.store, self.stall_at, self.marker, self.puts = store, stall_at, marker, 0
    def __getattr__(self, name):
        return getattr(self.store, name)
    def put_bytes(self, key, data):
        self.store.put_bytes(key, data)
        self.puts += 1
        if self.puts == self.stall_at:  # the object is stored, its row not yet: the test kills us here
            self.marker.touch()
            time.sleep(3600)

settings = Settings(database_url=sys.argv[1], store_url=sys.argv[2], state_dir=sys.argv[3])
root, marker = Path(sys.argv[4]), Path(sys.argv[5])
store = Stalling(open_store(settings), int(sys.argv[6]), marker)
ingest(READERS["folder"](root, ImportOptions()), root, session_factory(settings), store, batch_size=10, upload_threads=1)
"""


def faces(root: Path, n: int) -> Path:
    rng = random.Random(5)
    for i in range(n):
        labels = sample_labels(rng, "happiness")
        path = root / f"happy/p{i % 40:02d}_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(labels, f"p{i % 40}", rng))
    return root


def count_images(settings: Settings) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count(Image.id))) or 0


def test_import_killed_midway_and_rerun_has_every_image_once_and_no_orphans(settings: Settings, tmp_path: Path) -> None:
    root = faces(tmp_path / "faces", N)
    url = settings.database_url.get_secret_value()  # type: ignore[union-attr]
    marker = tmp_path / "stalled"
    args = [sys.executable, "-c", IMPORT, url, settings.store_url, str(settings.state_dir), str(root), str(marker), str(STALL_AT)]
    process = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wait_until(marker.exists, "the import to stand still mid-batch", [process])
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = count_images(settings)
    assert killed_at == STALL_AT // 10 * 10  # the batches recorded before it; the stalled one's objects are orphans

    report = ingest(READERS["folder"](root, ImportOptions()), root, session_factory(settings), open_store(settings))
    assert report.problems == []
    assert (report.imported, report.already_present) == (N - killed_at, killed_at)
    with session_scope(settings) as session:
        assert session.scalar(select(func.count(Image.id))) == N
        assert session.scalar(select(func.count(func.distinct(Image.original_path)))) == N
        assert session.scalar(select(func.count(HumanLabel.id))) == N  # one expression label each, none twice
        keys = set(session.scalars(select(Image.object_key)))
    stored = set(open_store(settings).list_keys("images/"))
    assert stored == keys  # every row has its object and no object lacks a row
    assert collect_garbage(session_factory(settings), open_store(settings), grace_s=0, dry_run=True).orphans == []


def test_two_shards_sharing_the_database_import_each_image_once(settings: Settings, tmp_path: Path) -> None:
    root = faces(tmp_path / "faces", 60)
    sessions, store = session_factory(settings), open_store(settings)
    reports = [ingest(READERS["folder"](root, ImportOptions()), root, sessions, store, shard=(i, 2)) for i in (0, 1)]
    assert all(r.imported > 0 for r in reports) and sum(r.imported for r in reports) == 60
    assert count_images(settings) == 60


def test_garbage_collection_removes_only_old_unreferenced_objects(settings: Settings, tmp_path: Path) -> None:
    root = faces(tmp_path / "faces", 3)
    sessions, store = session_factory(settings), open_store(settings)
    ingest(READERS["folder"](root, ImportOptions()), root, sessions, store)
    orphan = image_key("ab" * 32, "PNG")
    store.put_bytes(orphan, b"left by a killed import")
    assert collect_garbage(sessions, store).recent == 1  # young: maybe a running import's
    report = collect_garbage(sessions, store, grace_s=0)
    assert (report.orphans, report.removed) == ([orphan], 1)
    assert not store.exists(orphan) and len(list(store.list_keys("images/"))) == 3
