"""How the CLI ends on an error: one short message for what the user can fix, a traceback for a bug.

Errors seke raises on purpose (core/errors.py), and the third-party errors that mean the same
(an unreachable database or object store, settings that do not validate), print one line naming
the remedy and exit 2 (configuration) or 1 (failed work); their traceback goes to the log file,
and to the terminal with --verbose. Anything else is a bug: its traceback is shown, and logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from core.errors import ConfigurationError, SekeError

LOG_NAME = "seke.log"


def as_seke_error(exc: BaseException) -> SekeError | None:
    """The SekeError `exc` stands for, or None when it is a bug."""
    if isinstance(exc, SekeError):
        return exc
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return ConfigurationError(
            f"cannot use the database ({reason}); check that the server runs and SEKE_DATABASE_URL points at it "
            "(unset: the embedded PostgreSQL under SEKE_STATE_DIR)"
        )
    if isinstance(exc, (BotoCoreError, ClientError)):
        return ConfigurationError(
            f"the object store refused or could not be reached ({exc}); check SEKE_STORE_URL, SEKE_S3_ENDPOINT_URL "
            "and the S3 credentials (SEKE_S3_ACCESS_KEY_ID, SEKE_S3_SECRET_ACCESS_KEY)"
        )
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        problems = "; ".join(f"SEKE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        return ConfigurationError(f"invalid settings: {problems}")
    return None


def log_path() -> Path:
    """Where tracebacks go: <state_dir>/logs/seke.log, or the temporary folder when the settings do not load."""
    try:
        from core.config import get_settings

        return get_settings().resolved_state_dir / "logs" / LOG_NAME
    except Exception:  # noqa: BLE001 (settings that do not load are one of the errors being reported)
        return Path(tempfile.gettempdir()) / f"seke-{os.getuid()}.log"


def _log(exc: BaseException) -> Path | None:
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:  # an unwritable state folder may be the error itself
        return None
    logger = logging.getLogger("seke.cli")
    logger.addHandler(handler)
    logger.propagate = False
    logger.error("".join(traceback.format_exception(exc)).rstrip())
    handler.close()
    return path


def report(exc: BaseException, *, verbose: bool) -> int:
    """Print `exc` as the user should see it; the exit code."""
    console = Console(stderr=True)
    logged = _log(exc)
    where = f" (traceback in {logged})" if logged else ""
    known = as_seke_error(exc)
    if known is None:
        console.print_exception(show_locals=False)
        console.print(f"[red]This is a bug in seke.[/red] Please report it with the traceback above{where}.")
        return 1
    if verbose:
        console.print_exception(show_locals=False)
    console.print(f"[red]error:[/red] {escape(str(known))}", highlight=False)
    return known.exit_code
