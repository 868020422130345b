"""Helpers shared by the flow tests: a prepared database, and pointing the flows at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.db import session_factory, session_scope
from core.migrate import upgrade
from core.store import open_store
from tasks.demo_data import DEMO_SOURCES
from tasks.importers import READERS, ImportOptions
from tasks.ingest import ingest
from tasks.split import assign_splits
from tests.conftest import create_database


def prepared_settings(admin_url: str, root: Path, demo: Path) -> Settings:
    """A new database + store holding the demo data, imported and split."""
    settings = Settings(database_url=create_database(admin_url), state_dir=root / "state", store_url=(root / "store").as_uri())
    upgrade(settings)
    sessions, store = session_factory(settings), open_store(settings)
    for name in DEMO_SOURCES:
        ingest(READERS[name](demo / name, ImportOptions()), demo / name, sessions, store)
    with session_scope(settings) as session:
        assign_splits(session, seed=0)
    return settings


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the flow (which reads settings from the environment) at `settings`."""
    monkeypatch.setenv("SEKE_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("SEKE_STORE_URL", settings.store_url)
    monkeypatch.setenv("SEKE_STATE_DIR", str(settings.state_dir))
