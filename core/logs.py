"""Prefect's logs in an embedded process (the CLI): quiet on the console, complete in a file.

Every record still goes to the Prefect API (the run's logs in the UI) and to
`<state_dir>/logs/prefect.log`; the console gets only errors, or everything
with `verbose`. Prefect's settings themselves are passed as a settings context
(flows/runtime.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def route_logs(path: Path, *, verbose: bool) -> Path:
    """Prefect's console handler down to errors (unless `verbose`); a file handler for everything."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    path.parent.mkdir(parents=True, exist_ok=True)
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
