"""Several annotate processes on one run, end to end: real PostgreSQL, the Prefect test API, the simulator
over HTTP, `seke annotate` as subprocesses. Exactly-once work, a killed worker's images taken over,
Ctrl-C / SIGTERM turned into a clean stop that resumes, and one rate cap for all workers.

No test races the processes against the clock: the simulator's gate holds every chat request after a
set number, so a run stands still at a known point (both processes holding images, some images done)
until the test has done what it checks there, then lets the rest through.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.config import Settings
from simulator.server import SimulatorConfig, running_simulator
from tests.helpers import prepared_settings, set_gate, simulator_stats, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def fresh(postgres_admin_url: str, demo: Path, tmp_path: Path) -> Settings:
    return prepared_settings(postgres_admin_url, tmp_path, demo)


def environment(settings: Settings, base_url: str, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "SEKE_DATABASE_URL": settings.database_url.get_secret_value(),
        "SEKE_STORE_URL": settings.store_url,
        "SEKE_STATE_DIR": str(settings.state_dir),
        "SEKE_VLLM_BASE_URL": base_url,
        "SEKE_VLLM_MODEL": "seke-simulator",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        **extra,
    }


def annotate(env: dict[str, str], *args: str) -> subprocess.Popen:
    # One request per call row (no n-choice requests): the paid-versus-stored counts below compare the two.
    command = [
        sys.executable, "-m", "seke", "annotate", "--no-shared-prefill", *(args if "--run" in args else ("--run", "shared", *args))
    ]  # fmt: skip
    # A session of its own: a Ctrl-C can be sent to its process group, as a terminal does.
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def query(settings: Settings, sql: str) -> list[tuple]:
    engine = create_engine(settings.database_url.get_secret_value())
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def scalar(settings: Settings, sql: str):
    return query(settings, sql)[0][0]


def wait_for(settings: Settings, sql: str, at_least: int, processes: list[subprocess.Popen], timeout_s: float = 180) -> None:
    wait_until(lambda: scalar(settings, sql) >= at_least, f"{sql} >= {at_least}", processes, timeout_s)


def wait_for_held(base_url: str, requests: int, processes: list[subprocess.Popen]) -> None:
    """Until `requests` chat requests wait at the simulator's gate: every coroutine of the processes is then
    blocked on a call, so nothing moves until the gate opens."""
    wait_until(lambda: simulator_stats(base_url)["held"] >= requests, f"{requests} requests held", processes)


# A run stopped here, then let through, has done fewer than all its images: at most 57 answers before the
# stop are at most 14 images (4 calls at least each); after it, each of 2 workers finishes its images in
# flight (3) and those it had claimed ahead (3). 57 answers also finish 3 images at least: 6 images in
# flight hold at most 6 answers each, the rest take at most 7 (5 samples, summary, rewrite).
STOP_AFTER, STOP_LIMIT = 57, 30


def assert_exactly_once(settings: Settings, images: int) -> None:
    assert query(settings, "SELECT status, count(*) FROM run_images GROUP BY 1") == [("done", images)]
    duplicates = scalar(
        settings,
        "SELECT count(*) FROM (SELECT 1 FROM vllm_calls GROUP BY run_id, image_id, stage, sample_index HAVING count(*) > 1) d",
    )
    assert duplicates == 0
    assert scalar(settings, "SELECT count(DISTINCT image_id) FROM instructions") == images
    assert {n for (n,) in query(settings, "SELECT count(*) FROM annotations GROUP BY image_id")} == {20}
    # No unfinished image is left leased.
    assert scalar(settings, "SELECT count(*) FROM run_images WHERE status <> 'done' AND lease_owner IS NOT NULL") == 0


def test_two_processes_started_together_share_the_run_exactly_once(fresh: Settings) -> None:
    # No answer until both processes hold images (4 calls waiting each): neither can finish the run alone.
    with running_simulator(SimulatorConfig(hold_after=0)) as base_url:
        env = environment(fresh, base_url)
        processes = [annotate(env, "--limit", "40", "--concurrency", "4") for _ in range(2)]
        wait_for_held(base_url, 8, processes)
        set_gate(base_url, None)
        outputs = [process.communicate(timeout=300)[0] for process in processes]
        paid = simulator_stats(base_url)["requests"]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert_exactly_once(fresh, 40)
    workers = query(fresh, "SELECT split_part(lease_owner, ':', 2), count(*) FROM run_images GROUP BY 1")
    assert len(workers) == 2 and all(n > 0 for _, n in workers), workers  # both processes annotated images
    assert scalar(fresh, "SELECT count(*) FROM vllm_calls") == paid  # no call paid twice
    assert query(fresh, "SELECT status, stop_reason FROM runs") == [("completed", None)]


BUFFER_ROWS = 4


def test_a_killed_worker_images_are_taken_over_after_the_lease(fresh: Settings) -> None:
    # 20 answers, then both processes stand still with all their calls held: the victim dies holding images.
    with running_simulator(SimulatorConfig(hold_after=20)) as base_url:
        env = environment(fresh, base_url, SEKE_WRITE_BUFFER_ROWS=str(BUFFER_ROWS))
        survivor = annotate(env, "--limit", "30", "--concurrency", "3", "--lease-s", "3")
        victim = annotate(env, "--limit", "30", "--concurrency", "3", "--lease-s", "3")
        wait_for_held(base_url, 6, [survivor, victim])
        victim_pid = str(victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        held = scalar(fresh, f"SELECT count(*) FROM run_images WHERE status <> 'done' AND split_part(lease_owner, ':', 2) = '{victim_pid}'")
        set_gate(base_url, None)
        output = survivor.communicate(timeout=300)[0]
        paid = simulator_stats(base_url)["requests"]
    assert survivor.returncode == 0, output
    assert held > 0  # the victim really died holding images
    assert_exactly_once(fresh, 30)
    # Paid but never stored: only what the victim had in flight (at most one call per image slot) and the
    # answered calls still in its write buffer (SEKE_WRITE_BUFFER_ROWS).
    assert 0 <= paid - scalar(fresh, "SELECT count(*) FROM vllm_calls") <= 3 + BUFFER_ROWS
    assert query(fresh, "SELECT status FROM runs") == [("completed",)]


@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGINT, "2"), (signal.SIGTERM, "1"), (signal.SIGTERM, "2")])
def test_ctrl_c_and_sigterm_stop_the_run_cleanly_and_resume_finishes(fresh: Settings, signum: int, workers: str) -> None:
    with running_simulator(SimulatorConfig(hold_after=STOP_AFTER)) as base_url:
        env = environment(fresh, base_url)
        process = annotate(env, "--limit", str(STOP_LIMIT), "--concurrency", "3", "--workers", workers)
        wait_for(fresh, "SELECT count(*) FROM run_images WHERE status = 'done'", 3, [process])
        # A terminal's Ctrl-C reaches the whole process group; SIGTERM (a supervisor) only the CLI.
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        if workers != "1":  # the workers learn of the stop from PostgreSQL (one worker: in its own process, at once)
            wait_for(fresh, "SELECT count(*) FROM runs WHERE stop_requested IS NOT NULL", 1, [process])
        set_gate(base_url, None)  # the images in flight finish; no new one starts
        output = process.communicate(timeout=300)[0]
        name = signal.Signals(signum).name
        assert process.returncode == 130, output
        assert f"stopped (interrupted ({name}))" in output.replace("\n", " ") and "Traceback" not in output, output
        status, reason = query(fresh, "SELECT status, stop_reason FROM runs")[0]
        assert status == "stopped" and reason == f"interrupted ({name})"
        assert scalar(fresh, "SELECT count(*) FROM run_images WHERE status <> 'done' AND lease_owner IS NOT NULL") == 0
        done_before = scalar(fresh, "SELECT count(*) FROM run_images WHERE status = 'done'")
        assert 0 < done_before < STOP_LIMIT
        resumed = annotate(env, "--limit", str(STOP_LIMIT), "--concurrency", "3")
        output = resumed.communicate(timeout=300)[0]
        paid = simulator_stats(base_url)["requests"]
    assert resumed.returncode == 0, output
    assert_exactly_once(fresh, STOP_LIMIT)
    assert scalar(fresh, "SELECT count(*) FROM vllm_calls") <= paid <= scalar(fresh, "SELECT count(*) FROM vllm_calls") + 6
    assert query(fresh, "SELECT status, stop_reason FROM runs") == [("completed", None)]


def test_two_workers_share_one_rate_cap_without_429s(fresh: Settings) -> None:
    cap = 600  # requests/min: 10 per second for both workers together
    with running_simulator(SimulatorConfig(requests_per_minute=cap)) as base_url:
        env = environment(fresh, base_url, SEKE_REQUESTS_PER_MINUTE=str(cap), SEKE_VLLM_MAX_ATTEMPTS="1")
        processes = [annotate(env, "--limit", "24", "--concurrency", "4") for _ in range(2)]
        outputs = [process.communicate(timeout=300)[0] for process in processes]
        stats = simulator_stats(base_url)
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert stats["over_cap"] == 0  # no 429 from the cap, although each worker alone is allowed the full cap
    assert_exactly_once(fresh, 24)
    # How much of the cap they use depends on this machine's load: bench/shared_rate_cap.py measures it.


def test_cancelling_the_parent_in_the_api_stops_every_worker_and_resume_finishes(fresh: Settings) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Cancelling

    def flow_runs(name: str):
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name)), sort=FlowRunSort.ID_DESC, limit=200
            )

    with running_simulator(SimulatorConfig(hold_after=STOP_AFTER)) as base_url:
        env = environment(fresh, base_url)
        process = annotate(env, "--run", "cancelled", "--limit", str(STOP_LIMIT), "--concurrency", "3", "--workers", "2")
        wait_for(fresh, "SELECT count(*) FROM run_images WHERE status = 'done'", 3, [process])
        (parent,) = [run for run in flow_runs("annotate-cancelled") if not run.state.is_final()]
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(parent.id, Cancelling(message="cancelled from the UI"), force=True)
        wait_for(fresh, "SELECT count(*) FROM runs WHERE stop_requested IS NOT NULL", 1, [process])
        set_gate(base_url, None)
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 1 and "stopped (cancelled)" in output.replace("\n", " ") and "Traceback" not in output, output
        assert query(fresh, "SELECT status, stop_reason FROM runs") == [("stopped", "cancelled")]
        assert scalar(fresh, "SELECT count(*) FROM run_images WHERE status <> 'done' AND lease_owner IS NOT NULL") == 0
        runs = flow_runs("%cancelled%")
        assert len(runs) >= 3 and all(run.state.is_final() for run in runs), [(run.name, run.state.type) for run in runs]
        assert {run.state.type.value for run in runs if "shard" not in run.name} == {"CANCELLED"}
        assert scalar(fresh, "SELECT count(*) FROM run_images WHERE status = 'done'") < STOP_LIMIT
        resumed = annotate(env, "--run", "cancelled", "--limit", str(STOP_LIMIT), "--concurrency", "3")
        output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert_exactly_once(fresh, STOP_LIMIT)
