"""Prefect's temporary API server, as a child that never outlives the seke process that started it.

With no PREFECT_API_URL, Prefect starts a temporary API server (uvicorn, in a
child process) and stops it at exit, but a SIGKILLed parent runs no exit code,
and the child would serve on forever. `install()` registers a subclass of
Prefect's SubprocessASGIServer in its place (the same singleton slot Prefect's
own clients look up) whose child runs uvicorn beside a watchdog thread: when
its parent is gone (the child is re-parented), the child stops itself.

Run as `python -m flows.api_server <parent pid> <uvicorn arguments>`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

POLL_S = 0.5
GRACE_S = 10.0


class WatchedASGIServer(SubprocessASGIServer):
    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Prefect's own command (prefect/server/api/server.py), behind this module's watchdog.
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            args=[
                sys.executable, "-m", "flows.api_server", str(os.getpid()),
                "--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
            ],
            env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
        )  # fmt: skip


def install() -> None:
    """Make the temporary Prefect API server of this process a watched one (idempotent)."""
    current = SubprocessASGIServer._instances.get(None)
    if current is not None and (isinstance(current, WatchedASGIServer) or current.running):
        return
    SubprocessASGIServer._instances.pop(None, None)
    WatchedASGIServer()  # takes the `None` slot that SubprocessASGIServer() returns to Prefect's clients


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully on SIGTERM
    time.sleep(GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    parent = int(argv[0])
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()
    import uvicorn

    uvicorn.main.main(args=argv[1:], prog_name="uvicorn")


if __name__ == "__main__":
    main(sys.argv[1:])
