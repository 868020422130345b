"""The `seke` command line, command by command: every `--help` and usage error through typer's
CliRunner, and each command's main path as a user runs it (`python -m seke ...` in a process of its
own) against the real services: the test PostgreSQL, the simulator the CLI starts itself over HTTP,
the Prefect test API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from seke.cli import app
from tests.conftest import create_database, free_port

runner = CliRunner()

#: Every command, as typed after `seke`. A new command must be added here (test_the_list_is_complete).
COMMANDS = [
    ("db", "upgrade"),
    ("import",),
    ("split",),
    ("demo-data",),
    ("images", "stats"),
    ("runs", "ls"),
    ("runs", "show"),
    ("export",),
    ("simulator", "serve"),
    ("annotate",),
    ("finetune",),
    ("benchmark",),
    ("export-benchmark",),
    ("pipeline",),
    ("demo",),
    ("audit",),
    ("store", "gc"),
    ("schedule", "create"),
    ("schedule", "list"),
    ("schedule", "pause"),
    ("schedule", "delete"),
    ("batch", "export-round"),
    ("batch", "import-round"),
    ("review", "queue"),
    ("review", "export"),
    ("review", "import"),
]

#: Enough for the tiny model to take a few steps on CPU.
TRAIN = {"learning_rate": 3e-3, "max_steps": 4, "batch_size": 4, "save_steps": 2}


def invoke(*args: str) -> str:
    """Run `seke ARGS` in this process (CliRunner); the output, after checking the command succeeded."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"seke {' '.join(args)} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
    return result.output


def run_seke(*args: str) -> subprocess.CompletedProcess[str]:
    """`seke ARGS` in a process of its own, as a user runs it, reporting to the Prefect test API.

    A process per command: commands that touch the database or run flows set up logging (Prefect's
    among it) that must not outlive the streams CliRunner swaps in and closes."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "seke", *args], env=env, capture_output=True, text=True, timeout=900)


def seke(*args: str) -> str:
    """Run `seke ARGS` in a process of its own; its output, after checking it succeeded."""
    result = run_seke(*args)
    assert result.returncode == 0, f"seke {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def usage_error(*args: str) -> str:
    """Run `seke ARGS` (in a process of its own), expecting a usage error; its message on one line."""
    result = run_seke(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stderr).split())


def leaf_commands(command: object, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if hasattr(command, "commands"):  # a group (typer's own click, not necessarily the click package)
        return {leaf for name, sub in command.commands.items() for leaf in leaf_commands(sub, (*path, name))}
    return {path}


def test_the_list_is_complete() -> None:
    assert leaf_commands(typer.main.get_command(app)) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(command: tuple[str, ...]) -> None:
    output = invoke(*command, "--help")
    assert "Usage:" in output and command[-1] in output


def test_demo_data_writes_every_layout(tmp_path: Path) -> None:
    output = invoke("demo-data", str(tmp_path / "faces"), "--n", "16")
    for layout in ("ckplus", "affwild2", "manifest"):
        assert layout in output and (tmp_path / "faces" / layout).is_dir()


def test_simulator_serve_answers_over_http() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "seke", "simulator", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the simulator did not answer within 60 s"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["seke-simulator"]
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- the data path, against a database of its own ------------------------------------------------


@pytest.fixture(scope="module")
def state(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Path]:
    """An empty database and state directory, named by the environment as a user would; no endpoint set."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key in [k for k in os.environ if k.startswith("SEKE_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("SEKE_DATABASE_URL", create_database(postgres_admin_url))
        monkeypatch.setenv("SEKE_STATE_DIR", str(root / "state"))
        monkeypatch.chdir(root)  # no .env of the checkout
        yield root


@pytest.fixture(scope="module")
def imported(state: Path) -> Path:
    """`seke db upgrade`, `seke import` of every layout, `seke split`."""
    invoke("demo-data", str(state / "faces"), "--n", "60")
    assert "database at head" in seke("db", "upgrade")
    for layout in sorted(p.name for p in (state / "faces").iterdir()):
        assert "images imported" in seke("import", layout, str(state / "faces" / layout))
    assert "subject split" in seke("split")
    return state


@pytest.fixture(scope="module")
def annotated(imported: Path) -> str:
    """`seke annotate` on the simulator the CLI starts itself (no SEKE_VLLM_BASE_URL)."""
    return seke("annotate", "--run", "cli", "--limit", "6", "--concurrency", "4")


def test_db_upgrade_on_a_fresh_database_creates_the_schema(state: Path) -> None:
    seke("db", "upgrade")
    engine = create_engine(os.environ["SEKE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    engine.dispose()


def test_import_refuses_an_unknown_format(imported: Path) -> None:
    assert "unknown format 'affectnet2'" in usage_error("import", "affectnet2", str(imported))


def test_store_gc_finds_nothing_unreferenced_after_an_import(imported: Path) -> None:
    assert "0 unreferenced image objects, 0 removed" in seke("store", "gc", "--dry-run", "--grace-hours", "0")


def test_images_stats_counts_each_split(imported: Path) -> None:
    output = seke("images", "stats")
    assert "FEID" in output and "FEAB" in output


def test_annotate_prints_the_run_report(annotated: str) -> None:
    assert "run cli: completed" in annotated
    assert "done: 6" in annotated and "(simulator)" in annotated
    assert re.search(r"requests\s.*\d+ \(\d+ calls shared a request for n choices\)", annotated)  # shared prefill: on


def test_runs_ls_and_show(annotated: str) -> None:
    assert re.search(r"cli\s.*annotate\s.*completed", seke("runs", "ls"))
    shown = seke("runs", "show", "cli")
    assert "run cli: completed" in shown and "cached in" in shown and "fresh in" in shown
    assert "no run named 'nope'" in usage_error("runs", "show", "nope")


def test_export_finetune_and_benchmark(annotated: str, imported: Path) -> None:
    output = seke("export", "cli")
    export_id = re.search(r"\(export id (\d+)\)", output).group(1)  # type: ignore[union-attr]
    assert (imported / "state" / "exports" / "cli" / "feid.jsonl").is_file()
    config = imported / "train.json"
    config.write_text(json.dumps(TRAIN))
    output = seke("finetune", "--name", "cli-ft", "--export-id", export_id, "--config", str(config))
    assert "trained cli-ft" in output and "in 4 steps" in output
    output = seke("benchmark", "--model", "store:models/cli-ft/final", "--name", "cli-feab", "--limit", "2")
    assert "FEAB" in output and "2 FEAB images" in output
    # The CLI starts the simulator for --endpoint when none is configured, and says it is one.
    output = seke("benchmark", "--model", "any", "--endpoint", "--name", "cli-sim", "--limit", "2")
    assert "offline simulator" in output


def test_finetune_refuses_an_unreadable_config(imported: Path) -> None:
    (imported / "broken.json").write_text("{not json")
    message = usage_error("finetune", "--name", "x", "--export-id", "1", "--config", str(imported / "broken.json"))
    assert "not a readable JSON object" in message


def test_pipeline_chains_every_step(imported: Path) -> None:
    config = imported / "train.json"
    config.write_text(json.dumps(TRAIN))
    output = seke("pipeline", "--run", "cli-chain", "--limit", "4", "--config", str(config))
    assert "run cli-chain: completed" in output and "FEAB" in output


def test_audit_prints_table_4(imported: Path) -> None:
    output = seke("audit", "--name", "cli-audit", "--limit", "2", "--concurrency", "4")
    assert "paper" in output and "rehearsal" in output
