"""Errors a user can fix end in one message naming the remedy, never a traceback; bugs show theirs.

Each case runs the real `seke` command in a process of its own and checks the terminal (no
traceback, the remedy named), the exit code (2: configuration or usage, 1: failed work) and the
log file (the traceback is kept there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tests.conftest import free_port
from tests.helpers import prepared_settings

SEKE = str(Path(sys.executable).parent / "seke")


def run(env: dict[str, str], *args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SEKE_")}
    return subprocess.run(
        command or [SEKE, *args], env={**clean, "COLUMNS": "200", **env}, capture_output=True, text=True, timeout=300
    )


def assert_one_message(done: subprocess.CompletedProcess[str], code: int, *remedy: str) -> None:
    terminal = done.stdout + done.stderr
    assert done.returncode == code, terminal[-3000:]
    assert "Traceback" not in terminal and "│" not in done.stderr, terminal[-3000:]  # no (rich) traceback box
    assert "error:" in done.stderr
    for words in remedy:
        assert words in " ".join(terminal.split()), (words, terminal[-3000:])


@pytest.fixture
def database(postgres_admin_url: str, demo: Path, tmp_path: Path, prefect_api: None) -> Settings:
    return prepared_settings(postgres_admin_url, tmp_path, demo)


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        "SEKE_DATABASE_URL": settings.database_url.get_secret_value(),
        "SEKE_STORE_URL": settings.store_url,
        "SEKE_STATE_DIR": str(settings.state_dir),
        # The session's Prefect server (prefect_api): each command would otherwise start one of its own.
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        **extra,
    }


def test_an_unreachable_database_names_its_setting(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://seke@127.0.0.1:{free_port()}/seke"
    done = run({"SEKE_DATABASE_URL": url, "SEKE_STATE_DIR": str(tmp_path / "state")}, "runs", "ls")
    assert_one_message(done, 2, "cannot use the database", "SEKE_DATABASE_URL")
    assert "Traceback" in (tmp_path / "state" / "logs" / "seke.log").read_text()


def test_settings_that_do_not_validate_name_the_variable(tmp_path: Path) -> None:
    done = run({"SEKE_STATE_DIR": str(tmp_path / "state"), "SEKE_CONCURRENCY": "many"}, "runs", "ls")
    assert_one_message(done, 2, "invalid settings", "SEKE_CONCURRENCY")


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded PostgreSQL runs as a user of its own only under root")
def test_a_state_dir_the_embedded_server_cannot_reach_says_what_to_choose(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    done = run({"SEKE_STATE_DIR": str(private / "state")}, "demo", "--no-train", "--n", "40")
    assert_one_message(done, 2, "choose a SEKE_STATE_DIR", "or set SEKE_DATABASE_URL")


def test_an_unreachable_object_store_names_its_settings(database: Settings, tmp_path: Path) -> None:
    from tasks.demo_data import write_demo_data

    write_demo_data(tmp_path / "new", n=40, seed=99)  # faces the database does not hold yet: they must be stored
    store = {
        "SEKE_STORE_URL": "s3://seke-missing",
        "SEKE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "SEKE_S3_ACCESS_KEY_ID": "test",
        "SEKE_S3_SECRET_ACCESS_KEY": "test",
    }
    done = run({**env_of(database), **store}, "import", "folder", str(tmp_path / "new" / "folder"))
    assert_one_message(done, 2, "object store", "SEKE_S3_ENDPOINT_URL")


def test_an_unreachable_endpoint_fails_the_work_with_its_setting_named(database: Settings) -> None:
    endpoint = {"SEKE_VLLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "SEKE_VLLM_MAX_ATTEMPTS": "1"}
    done = run(env_of(database, **endpoint), "annotate", "--run", "nowhere", "--limit", "2")
    assert_one_message(done, 1, "2 of 2 images failed", "check SEKE_VLLM_BASE_URL")


def test_an_endpoint_that_refuses_the_model_stops_the_run_with_the_reason(database: Settings) -> None:
    with running_simulator(SimulatorConfig()) as base_url:
        endpoint = {"SEKE_VLLM_BASE_URL": base_url, "SEKE_VLLM_MODEL": "no-such-model"}
        done = run(env_of(database, **endpoint), "annotate", "--run", "refused", "--limit", "2")
    assert_one_message(done, 1, "images failed", "SEKE_VLLM_")


def test_bad_names_and_bad_input_files_are_usage_errors(database: Settings, tmp_path: Path) -> None:
    named = run(env_of(database), "annotate", "--run", "../escape")
    assert named.returncode == 2 and "Traceback" not in named.stderr and "--run" in named.stderr
    broken = tmp_path / "train.json"
    broken.write_text("{not json")
    config = run(env_of(database), "finetune", "--name", "x", "--export-id", "1", "--config", str(broken))
    assert config.returncode == 2 and "Traceback" not in config.stderr and "not a readable JSON object" in config.stderr


def test_a_budget_reached_is_done_work_that_says_how_to_go_on(database: Settings) -> None:
    with running_simulator(SimulatorConfig()) as base_url:
        done = run(env_of(database, SEKE_VLLM_BASE_URL=base_url, SEKE_VLLM_MODEL="seke-simulator"),
                   "annotate", "--run", "budget", "--limit", "4", "--max-calls", "3", "--concurrency", "1")  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr
    assert "resume with `seke annotate --run budget`" in " ".join(done.stdout.split())


def test_a_bug_shows_its_traceback_and_where_the_log_is(tmp_path: Path) -> None:
    # A deliberate bug: the settings loader of this process raises an error seke never raises on purpose.
    bug = "import seke.cli as cli; cli.get_settings = lambda: {}['no such key']; cli.main()"
    done = run({"SEKE_STATE_DIR": str(tmp_path / "state")}, command=[sys.executable, "-c", bug, "runs", "ls"])
    assert done.returncode == 1
    assert "KeyError" in done.stderr and "Traceback" in done.stderr and "This is a bug in seke" in done.stderr
    log = tmp_path / "state" / "logs" / "seke.log"
    assert str(log) in "".join(done.stderr.split())  # the terminal wraps long paths
    assert "KeyError" in log.read_text()
