"""Pipeline overhead: the annotate flow against a zero-latency simulator, PostgreSQL writes included.

    python bench/pipeline_overhead.py                       # 1,000 images, concurrency 32
    python bench/pipeline_overhead.py --images 5000 --no-rewrite

With no model latency, throughput is bounded by CPU: the client (Prefect
engine, HTTP, validation, UAMC, SQLAlchemy), the simulator, PostgreSQL and
the Prefect API server share this machine's cores. Measurements in one
process, one after another, on the same images (each under its own run name):

1. the annotate flow (Prefect sub-flows, one async task run per image);
2. the same engine without Prefect (tasks.annotate on one event loop), which
   separates Prefect's share from the SEKE procedure's;
3. the bare loop of bench/orchestration.py replaying the flow's requests
   (AsyncOpenAI, nothing validated or kept): the ceiling at zero latency;
4. --db-writes call rows through the run writer (RunWriter.add_call), no
   endpoint: the cost of persisting one call in batches.

`--profile N` adds a cProfile of the engine without Prefect over N images.
Goals: flow images/s >= 0.8x the bare loop's at zero latency; client CPU per
call <= 3 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
    CpuMeter,
    annotate_without_prefect,
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
from orchestration import bare_loop, call_plans

GROUPS = ["client", "simulator", "postgres", "prefect API"]


def profile_engine(settings, base_url: str, model: str, config, images: int, concurrency: int, top: int = 30) -> None:
    """cProfile of the engine without Prefect over `images` images of a new run: where client CPU goes."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    annotate_without_prefect(settings, "bench-profile", base_url, model, config, concurrency, limit=images)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    print(f"cProfile of the engine without Prefect, {images} images (zero latency), sorted by own time:")
    print(out.getvalue())


def batched_db_writes(settings, count: int) -> tuple[float, float, CpuMeter]:
    """(wall ms, client CPU ms) per call row written through the run writer, as the engine writes them."""
    import psycopg
    from sqlalchemy import select

    from core.db import database_url, session_factory
    from models.labels import FaceLabels
    from models.orm import Image
    from models.vocab import Stage
    from tasks.annotate import AnnotateConfig, ImageState, RunWriter, WriteBuffer, conninfo
    from tasks.prompts import RenderedPrompt
    from tasks.runs import open_run
    from tasks.vllm import CallResult

    sessions = session_factory(settings)
    with sessions.begin() as session:
        image_id, sha256, key = session.execute(select(Image.id, Image.sha256, Image.object_key).order_by(Image.id).limit(1)).one()
        run_id = open_run(
            session, "bench-db-writes", config=AnnotateConfig(), model="seke-simulator", endpoint={},
            code_version="bench", limit=None, image_ids=[image_id],
        )
    text = "Prompt: seke-prior v1\n" + "x" * 4000  # the size of a typical prior prompt
    now = datetime.now(UTC)
    answer = {"expression": "happiness", "valence": 0.5, "arousal": 0.3, "aus": {f"AU{n}": False for n in range(17)}}
    result = CallResult(
        request_params={"stage": Stage.SAMPLE, "model": "seke-simulator", "temperature": 1.0, "seed": 1, "max_tokens": 400},
        raw_text=str(answer), parsed=answer, valid=True, error=None, tokens_in=700, tokens_out=120,
        latency_s=0.0, attempts=1, cost_usd=0.003, started_at=now, finished_at=now,
    )
    state = ImageState(image_id, sha256, key, FaceLabels(), {}, {}, {}, set())

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo(database_url(settings))) as connection:
            writer = RunWriter(connection, run_id, WriteBuffer(settings.write_buffer_rows, settings.write_buffer_ms))
            for index in range(count):
                prompt = RenderedPrompt(name="seke-prior", version="1", text=f"{text}{index}", sha256=f"{index:064d}")
                await writer.add_call(state, (Stage.SAMPLE, index), prompt, result)
            await writer.close()

    with CpuMeter(None, database_url(settings)) as cpu:
        wall, process_cpu = time.perf_counter(), time.process_time()
        asyncio.run(write())
        wall, process_cpu = time.perf_counter() - wall, time.process_time() - process_cpu
    return 1000 * wall / count, 1000 * process_cpu / count, cpu


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
    parser.add_argument("--db-writes", type=int, default=2000, help="call rows written in measurement 4")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile N images without Prefect")
    parser.add_argument("--skip-plain", action="store_true", help="leave out measurement 2 (no Prefect)")
    parser.add_argument(
        "--synchronous-commit", choices=["on", "off"], default="on",
        help="diagnosis: PostgreSQL synchronous_commit for the bench database (on = the server default)",
    )
    args = parser.parse_args()
    # A loopback simulator answers far above hosted-provider limits; no client cap (the default for such hosts).
    os.environ.pop("SEKE_REQUESTS_PER_MINUTE", None)
    os.environ.pop("SEKE_TOKENS_PER_MINUTE", None)

    from tasks.annotate import AnnotateConfig

    config = AnnotateConfig(rewrite_with_llm=not args.no_rewrite)
    print(SIMULATOR_NOTE)
    print(machine_line())
    rows, cpu_rows, call_cpu_rows = [], [], []
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
                runs.append(("engine without Prefect", "bench-plain"))
            runs.append(("bare asyncio + AsyncOpenAI", "bare"))
            for label, run_name in runs:
                with CpuMeter(simulator.pid, database_url) as cpu:
                    started = time.perf_counter()
                    if run_name == "bench-flow":
                        report = annotate_flow(
                            run_name=run_name, config=config, base_url=simulator.base_url, model=simulator.model,
                            concurrency=args.concurrency, shard_size=args.shard_size,
                            images_per_task=args.images_per_task,
                        )
                        done, calls = report.images.get("done", 0), report.calls
                    elif run_name == "bench-plain":
                        report = annotate_without_prefect(
                            settings, run_name, simulator.base_url, simulator.model, config, args.concurrency
                        )
                        done, calls = report.images.get("done", 0), report.calls
                    else:
                        plans = call_plans(settings, "bench-flow")
                        started = time.perf_counter()  # the plans are read from the database first, not timed
                        _, calls = asyncio.run(bare_loop(simulator.base_url, simulator.model, plans, args.concurrency))
                        done = len(plans)
                    seconds = time.perf_counter() - started
                rows.append([label, done, calls, f"{seconds:.1f}", f"{done / seconds:.1f}", f"{calls / seconds:.1f}"])
                cpu_rows.append([label, *(f"{1000 * cpu.seconds.get(g, 0.0) / done:.1f}" for g in GROUPS),
                                 f"{1000 * sum(cpu.seconds.values()) / done:.1f}"])
                call_cpu_rows.append([label, *(f"{1000 * cpu.seconds.get(g, 0.0) / calls:.2f}" for g in GROUPS),
                                      f"{1000 * sum(cpu.seconds.values()) / calls:.2f}"])
                if run_name == "bench-flow":
                    api_counts = api_task_run_counts()
                    db_counts = database_run_counts(settings, run_name)
            if args.profile:
                profile_engine(settings, simulator.base_url, simulator.model, config, args.profile, args.concurrency)
        write_wall_ms, write_cpu_ms, write_cpu = batched_db_writes(settings, args.db_writes)

    print()
    rewrite = "off" if args.no_rewrite else "on"
    print(
        f"{args.images} images, zero simulated latency, concurrency {args.concurrency}, UAMC N=5, rewrite {rewrite}, "
        f"synchronous_commit {args.synchronous_commit}"
    )
    print_table(["path", "images", "calls", "seconds", "images/s", "calls/s"], rows)
    print()
    print("CPU ms per image, by process (2 cores = 2,000 CPU ms per wall second):")
    print_table(["path", *GROUPS, "total"], cpu_rows)
    print()
    print("CPU ms per call, by process:")
    print_table(["path", *GROUPS, "total"], call_cpu_rows)
    print()
    pg_ms = 1000 * write_cpu.seconds.get("postgres", 0.0) / args.db_writes
    print(
        f"call rows through the run writer (batched, {args.db_writes} rows): {write_wall_ms:.3f} ms wall, "
        f"{write_cpu_ms:.3f} ms client CPU, {pg_ms:.3f} ms PostgreSQL CPU per row"
    )
    print(f"Prefect API task runs by state: {api_counts}; our database, images by status: {db_counts}")
    flow_rate, bare_rate = float(rows[0][4]), float(rows[-1][4])
    client_ms = float(call_cpu_rows[0][1])
    print(f"client CPU per call, flow: {client_ms:.2f} ms (goal <= 3: {'met' if client_ms <= 3 else 'MISSED'})")
    if len(rows) > 2:
        print(f"RATIO flow / engine without Prefect, images/s: {flow_rate / float(rows[1][4]):.3f}")
    ratio = flow_rate / bare_rate
    print(f"RATIO flow / bare loop at zero latency, images/s: {ratio:.3f}  (goal >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'})")


if __name__ == "__main__":
    main()
