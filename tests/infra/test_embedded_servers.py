"""Servers seke starts stay private and never outlive it: the embedded PostgreSQL and Prefect's temporary API.

Real `seke` processes on the embedded PostgreSQL, in a state directory whose
path is too long for a socket, killed with SIGTERM and SIGKILL in the middle
of an annotation run against a slow simulator.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core.pgserver import MAX_SOCKET_PATH, SOCKET_NAME
from simulator.server import SimulatorConfig, running_simulator

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(condition, what: str, deadline_s: float = 60.0) -> None:
    """Wait for an event (not a timing assertion): fail only if it never happens."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what} did not happen within {deadline_s:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A state directory with a path too long for a socket, holding imported and split demo faces."""
    # Mode 0711: traversable by the server's own user when running as root, and must stay 0711.
    base = Path(tempfile.mkdtemp(prefix="seke-long-"))
    base.chmod(0o711)
    state_dir = base / ("state-" + "x" * 60) / ("nested-" + "y" * 40)
    assert len(str(state_dir / "postgres" / SOCKET_NAME)) > MAX_SOCKET_PATH
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEKE_", "PREFECT_"))}
    env.update(PYTHONPATH=str(REPO), SEKE_STATE_DIR=str(state_dir), PREFECT_HOME=str(base / "prefect"))
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a loaded CI machine starts it slowly
    data = tmp_path_factory.mktemp("faces")
    for args in (["demo-data", str(data), "--n", "16"], ["import", "folder", str(data / "folder")], ["split"]):
        subprocess.run([sys.executable, "-m", "seke", *args], env=env, check=True, capture_output=True, timeout=300)
    yield state_dir, env
    from core.pgserver import _server_user, _stop

    _stop(state_dir / "postgres", _server_user())  # a safety net: the last client's guardian stops it
    shutil.rmtree(base, ignore_errors=True)


def _postmaster_running(pgdata: Path) -> bool:
    from core.pgserver import _postmaster

    return _postmaster(pgdata) is not None


def test_the_socket_lives_in_a_private_folder_and_parents_keep_their_mode(state: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = state
    # The folder is read by the client itself: once its last client ends, the server stops and the folder goes.
    probe = (
        "import os; from core.config import Settings; from core.db import database_url; from sqlalchemy.engine import make_url;"
        "info = os.lstat(make_url(database_url(Settings())).query['host']); print(info.st_mode, info.st_uid)"
    )
    output = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True).stdout
    mode, uid = map(int, output.split())
    assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700
    assert uid == (psutil.Process().uids().effective if os.geteuid() else __import__("pwd").getpwnam("embedded_postgres").pw_uid)
    assert stat.S_IMODE(state_dir.parents[1].stat().st_mode) == 0o711


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
def test_as_root_a_state_dir_the_server_user_cannot_reach_is_refused_not_opened() -> None:
    closed = Path(tempfile.mkdtemp(prefix="seke-closed-"))  # 0700, as mkdtemp makes it
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEKE_STATE_DIR": str(closed / "state")}
    env.pop("SEKE_DATABASE_URL", None)
    try:
        result = subprocess.run([sys.executable, "-m", "seke", "runs", "ls"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "does not loosen the permissions" in result.stderr + result.stdout
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def _run_started(pgdata: Path, name: str) -> bool:
    """Whether the run exists, read over the socket without registering as a client of the server."""
    import psycopg

    from core.pgserver import _server_user, socket_folder

    if not _postmaster_running(pgdata):
        return False
    try:
        with psycopg.connect(host=str(socket_folder(pgdata, _server_user())), user="postgres", dbname="seke") as connection:
            return connection.execute("SELECT 1 FROM runs WHERE name = %s", (name,)).fetchone() is not None
    except psycopg.Error:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_seke_leaves_no_server_behind_and_the_next_command_works(
    state: tuple[Path, dict[str, str]], sig: signal.Signals
) -> None:
    state_dir, env = state
    pgdata = state_dir / "postgres"
    # No call is ever answered: the run is certainly still running when it is killed.
    with running_simulator(SimulatorConfig(hold_after=0)) as base_url:
        run_env = {**env, "SEKE_VLLM_BASE_URL": base_url, "SEKE_VLLM_MODEL": "seke-simulator"}
        log = state_dir.parent / f"seke-{sig.name}.log"
        with log.open("w") as output:
            seke = psutil.Popen(
                [sys.executable, "-m", "seke", "annotate", "--run", f"killed-{sig.name}", "--limit", "4"],
                env=run_env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def api_servers() -> list[psutil.Process]:
            try:
                return [c for c in seke.children(recursive=True) if "flows.api_server" in " ".join(c.cmdline())]
            except psutil.NoSuchProcess:
                return []

        def started() -> bool:
            if seke.poll() is not None:
                pytest.fail(f"seke exited early ({seke.returncode}):\n{log.read_text()[-3000:]}")
            return _run_started(pgdata, f"killed-{sig.name}")

        _wait(started, "the run starting", 300)
        children = api_servers()
        assert children, "seke started no temporary Prefect API server"
        seke.send_signal(sig)
        seke.wait(60)
    for child in children:
        _wait(lambda child=child: _gone(child.pid), f"Prefect API server {child.pid} stopping after {sig.name}")
    _wait(lambda: not _postmaster_running(pgdata), f"the embedded PostgreSQL stopping after {sig.name}")
    from core.pgserver import _socket_path

    _wait(lambda: not _socket_path(pgdata).exists(), "the private socket folder being removed", 30)
    listed = subprocess.run([sys.executable, "-m", "seke", "runs", "ls"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"killed-{sig.name}" in listed.stdout
