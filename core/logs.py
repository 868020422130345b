"""Logs in an embedded process (the CLI): quiet on the console, complete in a file.

Every Prefect record still goes to the Prefect API (the run's logs in the UI) and to
`<state_dir>/logs/prefect.log`; the console gets only errors, or everything
with `verbose`. The same holds for what libraries print on their own: Python
warnings, and loggers that write to the console through a handler of their own
(DeepSpeed's, which transformers imports with the LLaVA model, prints a warning
to stdout on every CPU machine). Prefect's settings themselves are passed as a
settings context (flows/runtime.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: Loggers that print through a console handler of their own and do not propagate to the root.
SELF_PRINTING_LOGGERS = ("DeepSpeed",)


class _ToFileOnly(logging.Filter):
    """On a library's logger: its records go to seke's log file, never to the library's own console handler.

    A filter on the logger, not a change to its handlers: the library adds its handler when it is
    imported, which may be after this runs, and it keeps the logger object it finds."""

    def __init__(self, file_handler: logging.Handler) -> None:
        super().__init__()
        self.file_handler = file_handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.file_handler.level:
            self.file_handler.handle(record)
        return False


def route_logs(path: Path, *, verbose: bool) -> Path:
    """Prefect's console handler down to errors (unless `verbose`); a file handler for everything,
    third-party warnings and self-printing libraries' logs among it."""
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
    file_handler = next((h for h in root.handlers if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()), None)
    if file_handler is None:
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    # warnings.warn(...) from any library becomes a record of `py.warnings`, which reaches the root's handlers.
    logging.captureWarnings(True)
    if not verbose:
        for name in SELF_PRINTING_LOGGERS:
            library = logging.getLogger(name)
            if not any(isinstance(f, _ToFileOnly) for f in library.filters):
                library.addFilter(_ToFileOnly(file_handler))
    return path
