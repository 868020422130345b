"""Prefect in an embedded process (the CLI, bench scripts): quiet on the console, complete in a file.

`embedded_prefect(state_dir)` must run before Prefect is imported: Prefect reads
its settings at import time and hands them to the ephemeral API server it starts
as a subprocess, so for the few settings below environment variables are the one
channel that reaches both (anything the user already set wins). Then it routes
Prefect's logs: every record still goes to the Prefect API (the run's logs in
the UI) and to `<state_dir>/logs/prefect.log`; the console gets only errors,
or everything with `verbose`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def embedded_prefect(state_dir: Path, *, verbose: bool = False) -> Path:
    """Settings and log routing for flows run in this process; returns the log file."""
    home = state_dir / "prefect"
    logs = state_dir / "logs"
    # Prefect creates its home without parents and only warns when it cannot ("Failed to create the
    # Prefect home directory"): on a fresh machine the state directory does not exist yet.
    home.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    defaults = {
        # Its ephemeral API's SQLite database inside the state directory: two state directories never
        # share, and lock, one database.
        "PREFECT_HOME": str(home),
        # The recorder batch size measured to keep the API's task-run counts true at scale (DESIGN.md).
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
        # No telemetry heartbeat from the ephemeral server ("Failed to send telemetry" offline).
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # A loaded 2-core machine needs more than the default 20 s to start the ephemeral API.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        # No Hugging Face progress bars between our own.
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return route_logs(logs / "prefect.log", verbose=verbose)


def route_logs(path: Path, *, verbose: bool) -> Path:
    """Prefect's console handler down to errors (unless `verbose`); a file handler for everything."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    root = logging.getLogger()
    formatter: logging.Formatter = logging.Formatter(LOG_FORMAT)
    for handler in root.handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.NOTSET if verbose else logging.ERROR)
            # Prefect's own format names the flow and task run of each line.
            formatter = handler.formatter or formatter
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    return path
