"""Helpers shared by the flow tests: a prepared database, pointing the flows at it, and waiting on events
(a database state, the simulator's gate) rather than on time."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from core.config import Settings
from core.db import session_factory, session_scope
from core.migrate import upgrade
from core.store import open_store
from tasks.demo_data import DEMO_SOURCES
from tasks.importers import READERS, ImportOptions
from tasks.ingest import ingest
from tasks.split import assign_splits
from tests.conftest import create_database


def prepared_settings(admin_url: str, root: Path, demo: Path) -> Settings:
    """A new database + store holding the demo data, imported and split."""
    settings = Settings(database_url=create_database(admin_url), state_dir=root / "state", store_url=(root / "store").as_uri())
    upgrade(settings)
    sessions, store = session_factory(settings), open_store(settings)
    for name in DEMO_SOURCES:
        ingest(READERS[name](demo / name, ImportOptions()), demo / name, sessions, store)
    with session_scope(settings) as session:
        assign_splits(session, seed=0)
    return settings


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the flow (which reads settings from the environment) at `settings`."""
    monkeypatch.setenv("SEKE_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("SEKE_STORE_URL", settings.store_url)
    monkeypatch.setenv("SEKE_STATE_DIR", str(settings.state_dir))


def simulator_stats(base_url: str) -> dict:
    """The simulator's counters: requests answered or failed, refused by its cap, held at its gate now."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/simulator/stats") as response:
        return json.load(response)


def set_gate(base_url: str, answer: int | None) -> None:
    """Let `answer` more chat requests through the simulator's gate, then hold again (None: let all through)."""
    request = urllib.request.Request(
        base_url.removesuffix("/v1") + "/simulator/gate", data=json.dumps({"answer": answer}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request) as response:
        response.read()


def wait_until(
    condition: Callable[[], bool], what: str, processes: Sequence[subprocess.Popen] = (), timeout_s: float = 180
) -> None:
    """Return once `condition()` holds. The timeout only turns a hang into a failure: the condition is an
    event (a row written, a request held), never a duration. A process that exits meanwhile fails the wait
    with its output."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for process in processes:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"process exited ({process.returncode}) while waiting for {what}:\n{str(output)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def stop_prefect_worker(worker: subprocess.Popen, timeout_s: float = 180) -> None:
    """Stop a `prefect worker start` process once the flow-run processes it started have ended.

    On SIGTERM a Prefect worker stops taking runs and then waits for the ones it runs; a flow run that
    is already final in the API may still be exiting. Waiting for its children first makes the stop
    itself prompt, whatever the machine's load."""
    import psutil

    def children_ended() -> bool:
        try:
            return all(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process(worker.pid).children(recursive=True))
        except psutil.NoSuchProcess:  # the worker, or a child being looked at, is gone
            return worker.poll() is not None  # else a child just ended: look again

    try:
        wait_until(children_ended, "the worker's flow-run processes to end", timeout_s=timeout_s)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen in 2 of 10 runs of the Prefect server tests side by side (the suite on both cores): the
            # worker logged the signal and never stopped (asyncio on Python 3.11 can lose a cancellation).
            # A second SIGTERM is Prefect's own escalation: its handler then SIGKILLs the worker.
            worker.terminate()
            worker.wait(timeout=30)
