"""Fixtures of the flow tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from tests.helpers import prepared_settings, use


@pytest.fixture
def fresh(postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of a freshly prepared database, also exported to the environment the flow reads."""
    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    use(settings, monkeypatch)
    return settings
