"""`seke review queue` through the CLI, against a database with no such run: a clear usage error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from seke.cli import app
from tests.helpers import prepared_settings, use


def test_queue_of_unknown_run_is_a_usage_error(
    postgres_admin_url: str, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(prepared_settings(postgres_admin_url, tmp_path, demo), monkeypatch)
    result = CliRunner().invoke(app, ["review", "queue", "nope", "--top", "3"])
    assert result.exit_code == 2
    assert "no run named 'nope'" in result.output
