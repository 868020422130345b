"""What keeps a run's workers honest: leases renewed, stops noticed, signals turned into a clean stop.

A worker (one shard flow run) learns that it must stop from four places, and
whichever comes first names the reason the run is stopped with:
- a Ctrl-C or SIGTERM of its own process (`StopSignals`): "interrupted";
- its own flow run, or the parent flow run, being cancelled in the Prefect
  API or UI: "cancelled" (a flow run started from the CLI has no worker
  process to kill it, so the run watches its state itself);
- another worker, or the parent, having asked the run to stop in PostgreSQL
  (runs.stop_requested): that worker's reason;
- the run's budget (checked before each claim, flows/annotate.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any
from uuid import UUID

from sqlalchemy.orm import Session, sessionmaker

from tasks.leases import heartbeat
from tasks.runs import stop_requested

log = logging.getLogger(__name__)

#: The worker flow's deployment (flows/deployments.py), as `run_deployment` names it.
WORKER_DEPLOYMENT = "annotate-worker/annotate-worker"

#: Prefect states in which a flow run has been asked to stop.
CANCEL_STATES = {"CANCELLING", "CANCELLED"}


class StopSignals:
    """Ctrl-C / SIGTERM → a stop reason, once; a second signal exits at once (the default handlers return).

    Installed in the main thread for the span of a flow (Prefect installs its
    own SIGTERM bridge around a flow run; this one replaces it inside ours, so
    a SIGTERM becomes a graceful stop instead of a crash).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = threading.Event()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.reason = self.reason or f"interrupted ({signal.Signals(signum).name})"
        self.event.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def flow_run_cancelled(flow_run_ids: list[UUID]) -> bool:
    """Whether any of these flow runs is cancelling or cancelled in the Prefect API."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.type.value in CANCEL_STATES:
                return True
    return False


class Watch:
    """A background thread that renews the worker's leases and notices stops, every `interval_s`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        run_id: int,
        worker: str,
        lease_s: float,
        signals: StopSignals,
        flow_run_ids: list[UUID],
    ) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.worker = worker
        self.lease_s = lease_s
        self.signals = signals
        self.flow_run_ids = flow_run_ids
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-heartbeat-{run_id}", daemon=True)

    def stop_reason(self) -> str | None:
        return self.signals.reason or self.reason

    def check(self) -> None:
        """One round: renew leases, read the run's stop request, ask Prefect about cancellation."""
        with self.sessions.begin() as session:
            heartbeat(session, self.run_id, self.worker, self.lease_s)
            requested = stop_requested(session, self.run_id)
        if requested and not self.reason:
            self.reason = requested
        if not self.reason and self.flow_run_ids:
            try:
                if flow_run_cancelled(self.flow_run_ids):
                    self.reason = "cancelled"
            except Exception as exc:  # the API being briefly unreachable must not end the run
                log.warning("could not read flow run states from the Prefect API: %s", exc)

    def _loop(self) -> None:
        interval = max(0.2, min(2.0, self.lease_s / 3))
        while not self._done.wait(interval):
            try:
                self.check()
            except Exception as exc:  # a lost heartbeat is retried; the lease gives a margin of 3 rounds
                log.warning("lease heartbeat of run %s failed: %s", self.run_id, exc)

    def __enter__(self) -> Watch:
        self.check()  # a stop requested before this worker started is seen before its first claim
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class LocalWorkers:
    """K worker processes on this machine (`python -m flows.annotate`), reporting to this process's Prefect API."""

    def __init__(self, processes: list[subprocess.Popen]) -> None:
        self.processes = processes

    def finished(self) -> int:
        return sum(process.poll() is not None for process in self.processes)

    def failed(self) -> list[str]:
        """How each worker that failed ended."""
        return [f"exit {process.returncode}" for process in self.processes if process.returncode not in (None, 0)]

    def stop(self) -> None:
        """Nothing to send: they read the run's stop request from PostgreSQL (and a Ctrl-C reached them already;
        a second signal would end them at once, without releasing their leases)."""


class DeploymentWorkers:
    """K deployment runs of `annotate-worker` on a work pool: workers on any machine execute them."""

    def __init__(self, flow_run_ids: list[UUID]) -> None:
        self.flow_run_ids = flow_run_ids

    def _states(self) -> list:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            return [client.read_flow_run(flow_run_id).state for flow_run_id in self.flow_run_ids]

    def finished(self) -> int:
        return sum(state is not None and state.is_final() for state in self._states())

    def failed(self) -> list[str]:
        """How each worker that failed ended (its flow run's state and message)."""
        return [
            f"{state.type.value}: {state.message}"
            for state in self._states()
            if state is not None and state.is_final() and not (state.is_completed() or state.is_cancelled())
        ]

    def stop(self) -> None:
        """They watch the parent flow run's state and the run's stop request; each ends Cancelled on its own."""


def start_local_workers(payload: dict[str, Any], workers: int, parent: UUID) -> LocalWorkers:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)  # the ephemeral API this process started, if no server is configured
    env = {**os.environ, "PREFECT_API_URL": api_url}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.annotate", json.dumps({"params": payload, "index": index, "parent": str(parent)})],
            env=env,
            # A terminal's Ctrl-C reaches these too; until a worker's own handler is installed (imports take
            # seconds) it must not die of it: the parent passes the stop on through the run's stop request.
            preexec_fn=_ignore_sigint,
        )
        for index in range(workers)
    ]
    return LocalWorkers(processes)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_deployment_workers(payload: dict[str, Any], workers: int, parent: UUID) -> DeploymentWorkers:
    from prefect.deployments import run_deployment

    runs = [
        run_deployment(
            name=WORKER_DEPLOYMENT,
            parameters={"params": payload, "index": index, "parent_flow_run_id": str(parent)},
            timeout=0,
            as_subflow=True,
            idempotency_key=f"{parent}-worker-{index}",
        )
        for index in range(workers)
    ]
    return DeploymentWorkers([run.id for run in runs])
