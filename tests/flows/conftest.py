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


@pytest.fixture
def cli_env(postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`fresh` for CLI commands: the simulator answers, and what the CLI sets in the environment is undone."""
    settings = prepared_settings(postgres_admin_url, tmp_path, demo)
    use(settings, monkeypatch)
    monkeypatch.delenv("SEKE_VLLM_BASE_URL", raising=False)
    # The CLI sets these defaults in the process environment: restored after the test.
    for key in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(key, str(tmp_path / "prefect") if key == "PREFECT_HOME" else "false" if "ANALYTICS" in key else "1")
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "500")
    return settings
