"""What a user sees: `seke annotate` and `seke demo` on a fresh machine print progress bars and
reports, no Prefect log lines and no third-party warnings; the logs are in
<state_dir>/logs/prefect.log, and on the console with --verbose."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tests.conftest import create_database
from tests.helpers import prepared_settings

SEKE = str(Path(sys.executable).parent / "seke")


@pytest.fixture
def fresh(postgres_admin_url: str, demo: Path, tmp_path: Path) -> Settings:
    return prepared_settings(postgres_admin_url, tmp_path, demo)


def test_annotate_is_quiet_on_a_fresh_machine_and_verbose_on_request(
    fresh: Settings, tmp_path: Path, prefect_api: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    state = tmp_path / "fresh" / "state"  # does not exist yet: a first run
    home = tmp_path / "fresh" / "home"
    home.mkdir(parents=True)
    with running_simulator(SimulatorConfig()) as base_url:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "SEKE_"))}
        env.update(
            HOME=str(home),
            SEKE_STATE_DIR=str(state),
            SEKE_DATABASE_URL=fresh.database_url.get_secret_value(),
            SEKE_STORE_URL=fresh.store_url,
            SEKE_VLLM_BASE_URL=base_url,
            SEKE_VLLM_MODEL="seke-simulator",
            COLUMNS="120",
        )

        def seke(*args: str, **extra: str) -> subprocess.CompletedProcess:
            done = subprocess.run([SEKE, *args], env={**env, **extra}, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
            return done

        quiet = seke("annotate", "--run", "quiet", "--limit", "3")
        # The second run needs no fresh machine: the session's Prefect server spares it starting one.
        loud = seke("--verbose", "annotate", "--run", "quiet", "--limit", "3", PREFECT_API_URL=PREFECT_API_URL.value())

    console = quiet.stdout + quiet.stderr
    assert "3/3" in quiet.stdout and "images/s" in quiet.stdout  # the bar: done/total, rate
    assert "run quiet: completed" in quiet.stdout  # the report
    for noise in ("Task run", "Flow run", "Warning", "UserWarning", "Failed to create the Prefect home", "telemetry", "INFO"):
        assert noise not in console, (noise, console[-3000:])
    log = (state / "logs" / "prefect.log").read_text()
    assert "Task run 'image-" in log and "Finished in state Completed" in log
    assert "Flow run 'annotate-quiet'" in loud.stdout + loud.stderr


#: What a library's own log or warning line looks like: a level name, a source location, a bracketed time.
LIBRARY_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|Warning|UserWarning|FutureWarning|DeprecationWarning)\b|\.py:\d+|^\[\d{4}-\d\d-\d\d")


@pytest.mark.slow
def test_demo_prints_only_its_own_output(postgres_admin_url: str, tmp_path: Path, prefect_api: None) -> None:
    """The README's first command, training included: stderr empty, no library line on stdout;
    what libraries printed (DeepSpeed's accelerator warning) is in the log file."""
    from prefect.settings import PREFECT_API_URL

    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "SEKE_"))}
    env.update(
        SEKE_DATABASE_URL=create_database(postgres_admin_url),
        SEKE_STATE_DIR=str(state),
        PREFECT_API_URL=PREFECT_API_URL.value(),  # the session's server: a fresh one costs seconds, not coverage
        COLUMNS="120",
    )
    done = subprocess.run([SEKE, "demo", "--n", "40"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr == ""
    assert [line for line in done.stdout.splitlines() if LIBRARY_LINE.search(line)] == []
    assert "run demo: completed" in done.stdout and "FEAB" in done.stdout and "where everything is" in done.stdout
    assert (state / "exports" / "demo" / "feid.jsonl").is_file()
    assert "Setting accelerator to CPU" in (state / "logs" / "prefect.log").read_text()
