"""The Prefect settings a process running our flows needs, passed as a settings context (no os.environ)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import (
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE,
    temporary_settings,
)

from core.config import Settings

#: Task-run recorder batch size that keeps the Prefect API's task-run counts true at scale
#: (docs/design.md, "Scale facts").
RECORDER_BATCH_SIZE = 500


@contextmanager
def prefect_settings(settings: Settings) -> Iterator[None]:
    """Defaults for the flows run inside this block; anything set in the environment or a profile wins.

    - the recorder batch size above;
    - Prefect's home (its ephemeral API's SQLite database) inside the state directory, so two
      state directories never share, and lock, one database;
    - no analytics heartbeat (nothing outside this machine is reachable anyway);
    - two minutes, not 20 s, for the ephemeral API to start: its first start migrates a new
      SQLite database, which took longer than 20 s on a busy 2-core machine.

    The ephemeral API server Prefect starts for a flow inherits these settings.
    """
    home = settings.resolved_state_dir / "prefect"
    # Prefect creates its home without parents and only warns when it cannot ("Failed to create the
    # Prefect home directory"): on a fresh machine the state directory does not exist yet.
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE: RECORDER_BATCH_SIZE,
        PREFECT_HOME: home,
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120,
    }
    with temporary_settings(set_defaults=defaults):
        yield
