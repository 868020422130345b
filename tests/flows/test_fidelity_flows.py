"""Fidelity through the CLI and flows: the run is named after what answered, the normaliser reaches the
summary, the sidecar gives each AU its own uncertainty, and --force / the default export folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from core.config import Settings
from core.db import session_scope
from core.store import open_store
from models.labels import ACTION_UNITS
from models.orm import BenchmarkRun, Run, UAMCStep
from seke.cli import app
from tasks.export import export_run

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_benchmark_on_the_simulator_is_named_after_it(cli_env: Settings) -> None:
    result = CliRunner().invoke(app, ["benchmark", "--endpoint", "--model", "gpt-4o", "--limit", "3"])
    assert result.exit_code == 0, result.output
    with session_scope(cli_env) as session:
        run = session.scalars(select(BenchmarkRun)).one()
    assert run.name == "feab-seke-simulator" and run.model == "seke-simulator"
    assert run.config["temperature"] == 1.0


def test_attainable_normaliser_from_the_cli_and_per_au_uncertainty_in_the_sidecar(cli_env: Settings, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["annotate", "--run", "att", "--limit", "6", "--normaliser", "attainable"])
    assert result.exit_code == 0, result.output
    with session_scope(cli_env) as session:
        run = session.scalars(select(Run).where(Run.name == "att")).one()
        assert run.config["annotate"]["uamc"]["normaliser"] == "attainable"
        steps = session.scalars(select(UAMCStep).where(UAMCStep.run_id == run.id)).all()
        result = export_run(session, open_store(cli_env), run.id, tmp_path / "export")
    assert steps
    lines = [json.loads(line) for line in (result.path / "provenance.jsonl").read_text().splitlines()]
    own = []
    for line in lines:
        for field, entry in line["fields"].items():
            if field in ACTION_UNITS and entry["provenance"] == "generated":
                p = entry["present_fraction"]
                assert entry["au_uncertainty"] == pytest.approx(round(p * (1 - p) / 0.25, 4))
                own.append((entry["uncertainty"], entry["au_uncertainty"]))
    assert own, "no generated AU in the export"
    assert any(task != mine for task, mine in own)  # each AU its own, not the task's mean for all


def test_export_out_is_replaced_only_with_force(cli_env: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["annotate", "--run", "exp", "--limit", "2"]).exit_code == 0
    out = tmp_path / "mine"
    out.mkdir()
    (out / "old.txt").write_text("old")
    refused = runner.invoke(app, ["export", "exp", "--out", str(out)])
    assert refused.exit_code == 2 and (out / "old.txt").exists()
    forced = runner.invoke(app, ["export", "exp", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "feid.jsonl").exists() and not (out / "old.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    # The default folder under the state directory is ours: a re-export replaces it without --force.
    for _ in range(2):
        default = runner.invoke(app, ["export", "exp"])
        assert default.exit_code == 0, default.output
    assert (cli_env.resolved_state_dir / "exports" / "exp" / "feid.jsonl").exists()
