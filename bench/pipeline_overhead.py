"""Pipeline overhead: the annotate flow against a zero-latency simulator, PostgreSQL writes included.

    python bench/pipeline_overhead.py                       # 1,000 images, concurrency 32
    python bench/pipeline_overhead.py --images 5000 --no-rewrite

With no model latency, throughput is bounded by CPU: the client (Prefect
engine, HTTP, validation, UAMC, SQLAlchemy), the simulator, PostgreSQL and
the Prefect API server share this machine's cores. Three measurements in one
process, one after another, on the same images (each under its own run name):

1. the annotate flow (Prefect, sub-flows of --shard-size, ThreadPoolTaskRunner);
2. the same Annotator on a plain ThreadPoolExecutor (no Prefect), which
   separates Prefect's share from the SEKE procedure's;
3. one thread writing --db-writes calls the way Annotator._persist_call
   does (prompt upsert + call row + run-image update, one transaction each),
   against no endpoint: the serial cost of one call's DB write.

In 1 and 2, the Annotator's steps are wrapped with timers (wall and thread CPU
time, summed over threads): endpoint calls, DB reads and writes. Goal: >= 100
images/s for the flow on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
    CpuMeter,
    annotate_on_threads,
    api_task_run_counts,
    database_run_counts,
    export_settings,
    ingest_synthetic,
    machine_line,
    new_settings,
    postgres_admin_url,
    prefect_api,
    print_table,
    simulator_process,
)

GROUPS = ["client", "simulator", "postgres", "prefect API"]


class StepTimers:
    """Calls, wall seconds and thread-CPU seconds spent inside wrapped functions, over all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = defaultdict(int)
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                with self._lock:
                    self.calls[name] += 1
                    self.wall[name] += wall
                    self.cpu[name] += cpu

        return timed

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.wall.clear()
            self.cpu.clear()


#: (label, owner, attribute): what StepTimers measures inside the Annotator.
STEPS = (
    ("annotate (whole image)", "Annotator", "annotate"),
    ("endpoint call (VLLMClient.complete)", "VLLMClient", "complete"),
    ("DB read (_load)", "Annotator", "_load"),
    ("DB write call (_persist_call)", "Annotator", "_persist_call"),
    ("DB write UAMC step (_persist_step)", "Annotator", "_persist_step"),
    ("DB write final (_finish)", "Annotator", "_finish"),
)


def instrument(timers: StepTimers) -> None:
    import tasks.annotate
    import tasks.vllm

    owners = {"Annotator": tasks.annotate.Annotator, "VLLMClient": tasks.vllm.VLLMClient}
    for label, owner, attribute in STEPS:
        cls = owners[owner]
        setattr(cls, attribute, timers.wrap(label, getattr(cls, attribute)))


def profile_serial(settings, base_url: str, model: str, config, images: int, top: int = 25) -> None:
    """cProfile of the Annotator on one thread over `images` images of a new run: where client CPU goes."""
    import cProfile
    import io
    import pstats

    from core.db import session_factory
    from core.store import open_store
    from core.version import code_version
    from tasks.annotate import Annotator, Budget
    from tasks.runs import open_run, unfinished_images
    from tasks.vllm import VLLMClient, VLLMConfig

    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model)
    with sessions.begin() as session:
        run_id = open_run(
            session, "bench-profile", config=config, model=model, endpoint=vllm_config.public_snapshot(),
            code_version=code_version(), limit=images,
        )
    with sessions() as session:
        todo = unfinished_images(session, run_id)
    with VLLMClient(vllm_config) as client:
        annotator = Annotator(
            run_id=run_id, run_name="bench-profile", config=config, sessions=sessions, store=open_store(settings),
            client=client, budget=Budget(0, 0.0, None, None),
        )
        profiler = cProfile.Profile()
        profiler.enable()
        for image_id in todo:
            annotator.annotate(image_id)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    print(f"cProfile of the Annotator on one thread, {len(todo)} images (zero latency):")
    print(out.getvalue())


def serial_db_writes(settings, count: int) -> tuple[float, float, CpuMeter]:
    """(wall ms, client CPU ms) per call row written as Annotator._persist_call writes it, one thread."""
    from sqlalchemy import select

    from models.orm import Image
    from core.db import session_factory
    from tasks.annotate import AnnotateConfig, Annotator, Budget, _ImageState
    from tasks.prompts import RenderedPrompt
    from tasks.runs import open_run
    from tasks.vllm import CallResult

    sessions = session_factory(settings)
    with sessions.begin() as session:
        image_id = session.scalar(select(Image.id).order_by(Image.id).limit(1))
        run_id = open_run(
            session, "bench-db-writes", config=AnnotateConfig(), model="seke-simulator", endpoint={},
            code_version="bench", limit=None, image_ids=[image_id],
        )
    annotator = Annotator(
        run_id=run_id, run_name="bench-db-writes", config=AnnotateConfig(), sessions=sessions,
        store=None, client=None, budget=Budget(0, 0.0, None, None),  # type: ignore[arg-type]
    )
    text = "Prompt: seke-prior v1\n" + "x" * 4000  # the size of a typical prior prompt
    prompt = RenderedPrompt(name="seke-prior", version="1", text=text, sha256="b" * 64)
    now = datetime.now(UTC)
    answer = {"expression": "happiness", "valence": 0.5, "arousal": 0.3, "aus": {f"AU{n}": False for n in range(17)}}
    result = CallResult(
        request_params={"stage": "sample", "model": "seke-simulator", "temperature": 1.0, "seed": 1, "max_tokens": 400},
        raw_text=str(answer), parsed=answer, valid=True, error=None, tokens_in=700, tokens_out=120,
        latency_s=0.0, attempts=1, cost_usd=0.003, started_at=now, finished_at=now,
    )
    database_url = settings.database_url.get_secret_value()
    with CpuMeter(None, database_url) as cpu:
        wall, thread_cpu = time.perf_counter(), time.thread_time()
        state = _ImageState(calls={}, steps=set())
        for index in range(count):
            annotator._persist_call(image_id, "prior-sample", index, prompt, result, state)
        wall, thread_cpu = time.perf_counter() - wall, time.thread_time() - thread_cpu
    return 1000 * wall / count, 1000 * thread_cpu / count, cpu


def set_synchronous_commit_off(database_url: str) -> None:
    """Commits return before their WAL reaches disk (new connections of this database only)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{make_url(database_url).database}" SET synchronous_commit = off'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--images-per-task", type=int, default=1, help="images per Prefect task run")
    parser.add_argument("--no-rewrite", action="store_true", help="assemble answers without the rewrite call")
    parser.add_argument("--db-writes", type=int, default=1000, help="serial call rows written in measurement 3")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile N images on one thread")
    parser.add_argument("--skip-plain", action="store_true", help="leave out measurement 2 (no Prefect)")
    parser.add_argument(
        "--synchronous-commit", choices=["on", "off"], default="on",
        help="diagnosis: PostgreSQL synchronous_commit for the bench database (on = the server default)",
    )
    parser.add_argument(
        "--switch-interval-ms", type=float, default=None,
        help="diagnosis: sys.setswitchinterval for the client (CPython default 5 ms)",
    )
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    # A loopback simulator answers far above GPT-4o tier limits; the client limiter would be the bottleneck.
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)

    from tasks.annotate import AnnotateConfig

    config = AnnotateConfig(rewrite_with_llm=not args.no_rewrite)
    print(SIMULATOR_NOTE)
    print(machine_line())
    timers = StepTimers()
    instrument(timers)
    rows, steps, cpu_rows = [], [], []
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        root = Path(tmp)
        settings = new_settings(admin_url, root)
        database_url = settings.database_url.get_secret_value()  # type: ignore[union-attr]
        if args.synchronous_commit == "off":
            set_synchronous_commit_off(database_url)
        started = time.perf_counter()
        imported = ingest_synthetic(settings, root, args.images)
        print(f"prepared {imported} synthetic FEID images in {time.perf_counter() - started:.0f} s (not timed below)")
        export_settings(settings)

        with simulator_process(0.0) as simulator, prefect_api():
            from flows.annotate import annotate_flow

            runs = [("annotate flow (Prefect)", "bench-flow")]
            if not args.skip_plain:
                runs.append(("Annotator on plain threads", "bench-plain"))
            for label, run_name in runs:
                timers.reset()
                with CpuMeter(simulator.pid, database_url) as cpu:
                    started = time.perf_counter()
                    if run_name == "bench-flow":
                        report = annotate_flow(
                            run_name=run_name, config=config, base_url=simulator.base_url, model=simulator.model,
                            concurrency=args.concurrency, shard_size=args.shard_size,
                            images_per_task=args.images_per_task,
                        )
                    else:
                        report = annotate_on_threads(
                            settings, run_name, simulator.base_url, simulator.model, config, args.concurrency
                        )
                    seconds = time.perf_counter() - started
                done, calls = report.images.get("done", 0), report.calls
                rows.append([label, done, calls, f"{seconds:.1f}", f"{done / seconds:.1f}", f"{calls / seconds:.1f}"])
                steps.append((label, seconds, calls, dict(timers.calls), dict(timers.wall), dict(timers.cpu)))
                cpu_rows.append([label, *(f"{1000 * cpu.seconds.get(g, 0.0) / done:.1f}" for g in GROUPS),
                                 f"{1000 * sum(cpu.seconds.values()) / done:.1f}",
                                 f"{1000 / (1000 * cpu.seconds.get('client', 0.0) / done):.0f}",
                                 f"{2000 / (1000 * sum(cpu.seconds.values()) / done):.0f}"])
                if run_name == "bench-flow":
                    api_counts = api_task_run_counts()
                    db_counts = database_run_counts(settings, run_name)
            if args.profile:
                profile_serial(settings, simulator.base_url, simulator.model, config, args.profile)
        write_wall_ms, write_cpu_ms, write_cpu = serial_db_writes(settings, args.db_writes)

    print()
    rewrite = "off" if args.no_rewrite else "on"
    print(
        f"{args.images} images, zero simulated latency, concurrency {args.concurrency}, UAMC N=5, rewrite {rewrite}, "
        f"synchronous_commit {args.synchronous_commit}, GIL switch interval {1000 * sys.getswitchinterval():g} ms"
    )
    print_table(["path", "images", "calls", "seconds", "images/s", "calls/s"], rows)
    print()
    print("CPU ms per image, by process, and the ceilings they imply (images/s): one core for the client")
    print("(its Python code runs under one GIL), two cores for everything together:")
    print_table(["path", *GROUPS, "total", "client ceiling", "2-core ceiling"], cpu_rows)
    for label, _seconds, calls, counts, wall, cpu in steps:
        print()
        print(f"{label}: inside the Annotator, summed over threads, per endpoint call ({calls} calls)")
        print_table(
            ["step", "count", "wall ms/call", "thread CPU ms/call"],
            [[name, counts.get(name, 0), f"{1000 * wall.get(name, 0.0) / calls:.2f}", f"{1000 * cpu.get(name, 0.0) / calls:.2f}"]
             for name, _, _ in STEPS],
        )
    print()
    pg_ms = 1000 * write_cpu.seconds.get("postgres", 0.0) / args.db_writes
    print(
        f"serial DB write of one call (prompt upsert + call row + run-image update, one transaction), "
        f"{args.db_writes} writes: {write_wall_ms:.2f} ms wall, {write_cpu_ms:.2f} ms client CPU, {pg_ms:.2f} ms PostgreSQL CPU"
    )
    print(f"Prefect API task runs by state: {api_counts}; our database, images by status: {db_counts}")
    flow_rate = float(rows[0][4])
    print(f"RESULT flow images/s: {flow_rate:.1f}  (goal >= 100 on 2 cores: {'met' if flow_rate >= 100 else 'MISSED'}, "
          f"{flow_rate / 100:.2f}x of the goal)")
    if len(rows) > 1:
        print(f"RATIO flow / plain threads, images/s: {flow_rate / float(rows[1][4]):.3f}")


if __name__ == "__main__":
    main()
