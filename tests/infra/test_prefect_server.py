"""The dependency set against a real Prefect server, as an operator drives it.

`prefect server start` on loopback with a temporary PREFECT_HOME (SQLite), the
work pools and deployments registered by the scripts infra/README.md names,
`seke schedule` putting a cron and an interval schedule with parameters on the
annotate deployment, the server's own scheduler service creating runs from
them, a process worker executing one to completion against the simulator, and
every `prefect … ls` / `inspect` command of infra/README.md exiting 0.

The broken pairs this guards against (measured): prefect 3.8.8 with
fastapi 0.154 answered 422 to every `ls`; with SQLAlchemy 2.1.9 the scheduler
raised "Can't evaluate bulk DML statement" and cron schedules never made runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from prefect.settings import PREFECT_API_URL, temporary_settings

from core.config import Settings
from core.db import session_scope
from flows.schedules import list_schedules
from models.orm import Run
from simulator.server import SimulatorConfig, running_simulator
from tests.conftest import free_port
from tests.helpers import prepared_settings, stop_prefect_worker

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `prefect server start` on loopback; yields the environment its clients need and, under
    `_healthy`, a probe of its health."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "SEKE_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the scripts call `prefect` of this venv
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # The scheduler service looks every minute by default; every second keeps the test short.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
    )
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def healthy() -> bool:
        assert process.poll() is None, f"prefect server exited: {(home / 'server.log').read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        # Not waited for here: the database fixture prepares its data while the server boots.
        yield {**env, "_healthy": healthy}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        server_log = (home / "server.log").read_text()
        # The scheduler's failure under SQLAlchemy 2.1 only ever showed in this log.
        assert "Can't evaluate bulk DML" not in server_log


def run(env: dict[str, str], *command: str, timeout: float = 60) -> str:
    """Run a command of the venv (prefect, seke, python) with `env`; its output, or a failure showing it."""
    executable = str(BIN / command[0]) if (BIN / command[0]).exists() else command[0]
    done = subprocess.run([executable, *command[1:]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def seke(env: dict[str, str], *args: str) -> None:
    """`seke …` in this process, against the server: one import of Prefect, not one per call."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from seke.cli import app

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        # standalone_mode=False: errors raise here instead of exiting, and the real streams stay in place
        # (a runner's swapped streams, closed afterwards, would be kept by loggers set up meanwhile).
        app(list(args), standalone_mode=False)


#: Runs each command line given as an argument through `prefect`'s own entry point, in one process
#: (a fresh `prefect` process costs seconds of imports per command), and prints each exit status.
PREFECT_COMMANDS = """
import shlex, sys
from prefect.cli import app
for line in sys.argv[1:]:
    sys.argv = shlex.split(line)
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    print(f"EXIT {code}: {line}", flush=True)
"""


def readme_commands() -> list[str]:
    """Every `prefect … ls` / `prefect … inspect` line of infra/README.md."""
    text = (ROOT / "infra" / "README.md").read_text()
    return sorted({m.group(0).strip() for m in re.finditer(r"^prefect [a-z -]+ (?:ls|inspect)\b.*$", text, re.MULTILINE)})


def annotate_runs(env: dict[str, str]) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["annotate"])))


@pytest.fixture(scope="module")
def data(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from tasks.demo_data import write_demo_data

    root = tmp_path_factory.mktemp("scheduled")
    write_demo_data(root / "demo", n=40, seed=5)
    return prepared_settings(postgres_admin_url, root, root / "demo")


@pytest.mark.slow
def test_scheduled_annotate_runs_through_a_worker_on_a_real_server(server: dict[str, Any], data: Settings) -> None:
    env = {key: value for key, value in server.items() if key != "_healthy"}
    wait_for("the Prefect server's /api/health", server["_healthy"], timeout_s=90)
    run(env, "sh", "infra/work_pools.sh")
    run(env, "python", "infra/deployments.py", timeout=120)

    # Cron: the server's scheduler service creates runs that carry the schedule's parameters.
    seke(env, "schedule", "create", "every-minute", "--cron", "* * * * *", "--run", "cron-{scheduled:%H%M}", "--limit", "2")
    scheduled = wait_for("runs from the cron schedule", lambda: [r for r in annotate_runs(env) if r.state_type.value == "SCHEDULED"], 30)
    assert all(r.expected_start_time.second == 0 for r in scheduled)
    assert all(r.parameters == {"run_name": "cron-{scheduled:%H%M}", "limit": 2} for r in scheduled)
    seke(env, "schedule", "list")
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        [listed] = list_schedules()
    assert (listed.slug, listed.active, listed.parameters["limit"]) == ("every-minute", True, 2)
    seke(env, "schedule", "pause", "every-minute")
    assert not [r for r in annotate_runs(env) if r.state_type.value == "SCHEDULED"], "pausing removes waiting runs"
    seke(env, "schedule", "delete", "every-minute")
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        assert list_schedules() == []

    # A run already due that no worker has taken yet (none runs here) goes too: the server's own
    # cleanup on pausing keeps it, and it would start as soon as a worker polls.
    seke(env, "schedule", "create", "due", "--interval", "5s", "--run", "due-{scheduled:%H%M%S}")
    wait_for(
        "a run of the interval schedule to fall due",
        lambda: [r for r in annotate_runs(env) if r.state_type.value == "SCHEDULED" and r.expected_start_time < datetime.now(UTC)],
        30,
    )
    seke(env, "schedule", "pause", "due")
    assert not [r for r in annotate_runs(env) if r.state_type.value == "SCHEDULED"], "pausing removes runs already due"
    seke(env, "schedule", "delete", "due")

    # Interval (due within seconds, where cron waits for the next minute): a worker runs it to completion.
    with running_simulator(SimulatorConfig()) as base_url:
        worker_env = {
            **env,
            "SEKE_DATABASE_URL": data.database_url.get_secret_value(),
            "SEKE_STORE_URL": data.store_url,
            "SEKE_STATE_DIR": str(data.state_dir),
            "SEKE_VLLM_BASE_URL": base_url,
            "SEKE_VLLM_MODEL": "seke-simulator",
            # Poll every second and take runs only when due, so pausing after the first keeps it the only one.
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        }
        worker_log = data.state_dir.parent / "worker.log"  # a file, not a pipe nobody reads while it fills
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--type", "process"],
            env=worker_env, cwd=data.state_dir.parent, stdout=worker_log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            seke(env, "schedule", "create", "soon", "--interval", "5s", "--run", "sched-{scheduled:%Y%m%d}", "--limit", "3")
            first = wait_for(
                "the worker to start a run from the interval schedule",
                lambda: [r for r in annotate_runs(env) if r.state_type.value in ("PENDING", "RUNNING", "COMPLETED")],
                60,
            )[0]
            # Pausing removes the schedule's runs still waiting, not the one under way.
            seke(env, "schedule", "pause", "soon")
            final = wait_for(
                "the scheduled run to finish",
                lambda: next((r for r in annotate_runs(env) if r.id == first.id and r.state and r.state.is_final()), None),
                90,
            )
        finally:
            stop_prefect_worker(worker)
    assert final.state_type.value == "COMPLETED", worker_log.read_text()[-3000:]

    run_name = "sched-" + first.expected_start_time.strftime("%Y%m%d")
    with session_scope(data) as session:
        recorded = session.scalars(select(Run).where(Run.name == run_name)).one()
        assert recorded.status == "completed"

    # Every inspection command the operator's guide gives, with its placeholders filled in.
    commands = [
        line.replace("<flow-run-id>", str(first.id)).replace("<artifact-key>", f"{run_name}-summary")
        for line in readme_commands()
    ]
    assert len(commands) >= 10, commands
    assert "prefect artifact ls" in commands
    output = run(env, "python", "-c", PREFECT_COMMANDS, *commands)
    statuses = re.findall(r"^EXIT (\d+): (.*)$", output, re.MULTILINE)
    assert [line for _, line in statuses] == commands, output[-3000:]
    assert all(code == "0" for code, _ in statuses), output[-3000:]
    assert f"{run_name}-summary" in output  # the run's artifacts, through `prefect artifact ls` and `inspect`
