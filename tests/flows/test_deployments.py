"""`seke annotate --workers 2 --via-deployments` on a real `prefect server start` (on the test PostgreSQL)
with a process worker on the `cpu` pool: the workers are deployment runs, a cancel of the parent
through the API stops them all, every flow run ends terminal, and a resume finishes the run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tests.conftest import prefect_server
from tests.flows.test_workers import STOP_AFTER, annotate, assert_exactly_once, environment, query, scalar, wait_for
from tests.helpers import prepared_settings, set_gate, stop_prefect_worker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployed_server(postgres_admin_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Prefect server of its own (its database on the test PostgreSQL), the `cpu` pool, the worker deployment."""
    with prefect_server(postgres_admin_url, tmp_path / "prefect", PREFECT_WORKER_QUERY_SECONDS="1") as env:
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "cpu", "--type", "process"], env=env, check=True, cwd=REPO, capture_output=True)
        subprocess.run(
            [sys.executable, "-c", "from flows.deployments import build_deployment; build_deployment('annotate-worker').apply()"],
            env=env, check=True, cwd=REPO, capture_output=True,
        )
        yield env


def test_workers_as_deployment_runs_cancel_from_the_api_and_resume(
    deployed_server: dict[str, str], postgres_admin_url: str, demo: Path, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    settings: Settings = prepared_settings(postgres_admin_url, tmp_path / "data", demo)

    def flow_runs(name: str):
        with temporary_settings({PREFECT_API_URL: deployed_server["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name)), sort=FlowRunSort.ID_DESC, limit=200
            )

    # No answer until both deployment runs hold images (worker poll, process start): the first cannot finish alone.
    with running_simulator(SimulatorConfig(hold_after=0)) as base_url:
        env = {**environment(settings, base_url), **deployed_server}
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu", "--type", "process"],
            env=env, cwd=REPO, stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT,
        )
        try:
            process = annotate(env, "--run", "deployed", "--limit", "40", "--concurrency", "3", "--workers", "2", "--via-deployments")
            wait_for(settings, "SELECT count(DISTINCT split_part(lease_owner, ':', 2)) FROM run_images", 2, [process], timeout_s=240)
            set_gate(base_url, STOP_AFTER)  # then the run stands still again, 3 images done at least (test_workers.py)
            wait_for(settings, "SELECT count(*) FROM run_images WHERE status = 'done'", 3, [process])
            (parent,) = [run for run in flow_runs("annotate-deployed") if not run.state.is_final()]
            with temporary_settings({PREFECT_API_URL: deployed_server["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
                client.set_flow_run_state(parent.id, Cancelling(message="cancelled from the UI"), force=True)
            wait_for(settings, "SELECT count(*) FROM runs WHERE stop_requested IS NOT NULL", 1, [process])
            set_gate(base_url, None)
            output = process.communicate(timeout=300)[0]
            assert process.returncode == 1 and "stopped (cancelled)" in output.replace("\n", " "), output
            assert query(settings, "SELECT status, stop_reason FROM runs") == [("stopped", "cancelled")]
            assert scalar(settings, "SELECT count(*) FROM run_images WHERE status = 'done'") < 40
            deadline = time.monotonic() + 60  # the worker reports its processes' final states
            while not all(run.state.is_final() for run in flow_runs("%deployed%")) and time.monotonic() < deadline:
                time.sleep(1)
            runs = flow_runs("%deployed%")
            assert len(runs) >= 3 and all(run.state.is_final() for run in runs), [(r.name, r.state.type) for r in runs]
            assert {run.state.type.value for run in runs if "worker" in run.name} == {"CANCELLED"}
        finally:
            stop_prefect_worker(worker)
        resumed = annotate(env, "--run", "deployed", "--limit", "40", "--concurrency", "8")
        output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert_exactly_once(settings, 40)
