"""Orchestration overhead: the annotate flow vs a bare asyncio + openai loop, same endpoint, same requests.

    python bench/orchestration.py                                   # 2,000 images, 200 ms, concurrency 32
    python bench/orchestration.py --images 500 --latency-ms 50 --concurrency 16
    python bench/orchestration.py --workers 2 --concurrency 64   # 1 vs 2 worker processes, same total concurrency

Like for like: the flow runs first (SEKE as configured by default: prior on,
UAMC N=5, rewrite by the LLM). Its stored calls then become the bare loop's
script: per image, the same requests in the same order (the stored prompt
texts, image bytes as a data URL, temperature, seed, max_tokens and the same
json_schema response_format), one image per asyncio task under a semaphore of
the same concurrency, calls of one image one after another as in the flow.
So both sides send the same number of calls per image (UAMC's random sample
counts replayed exactly); the bare loop only parses each answer's JSON and
keeps nothing. The flow additionally validates answers, runs UAMC, persists
every call, step and annotation in PostgreSQL and reports to Prefect.

Both are timed end to end (flow: from the call of annotate_flow to its return,
run setup and report included). The simulator serves with a fixed latency in
its own process; client, simulator, PostgreSQL and the Prefect API server
share this machine's cores. Goal: flow images/s >= 0.95x the bare loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
    CpuMeter,
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

from models.vocab import Stage  # noqa: E402  (after harness has put the repository on sys.path)

RUN_NAME = "bench-orchestration"
STAGE_ORDER = {Stage.SAMPLE: 0, Stage.SUMMARY: 1, Stage.REWRITE: 2}


@dataclass(frozen=True)
class Request:
    prompt: str
    temperature: float
    seed: int | None
    max_tokens: int
    response_format: dict


@dataclass(frozen=True)
class ImagePlan:
    image_path: Path
    mime: str
    requests: tuple[Request, ...]


def call_plans(settings, run_name: str) -> list[ImagePlan]:
    """Per image of the run, the requests the flow sent, in the order it sent them."""
    from sqlalchemy import select

    from models.answers import RewriteAnswer, json_schema_for, sample_answer_model, summary_answer_model
    from models.orm import Image, Prompt, Run, VLLMCall
    from core.db import session_scope
    from core.store import open_store
    from tasks.prompts import requested_tasks_in

    store = open_store(settings)
    schemas: dict[tuple[str, tuple], dict] = {}

    def schema(stage: str, prompt: str) -> dict:
        tasks = tuple(requested_tasks_in(prompt))
        key = (stage, tasks)
        if key not in schemas:
            model = {Stage.SAMPLE: sample_answer_model, Stage.SUMMARY: summary_answer_model}.get(stage)
            schemas[key] = json_schema_for(model(tasks) if model else RewriteAnswer)
        return schemas[key]

    calls: dict[int, list] = defaultdict(list)
    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        rows = session.execute(
            select(VLLMCall.image_id, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.request_params, Prompt.text)
            .join(Prompt, Prompt.sha256 == VLLMCall.prompt_sha256)
            .where(VLLMCall.run_id == run_id)
        ).all()
        for image_id, stage, index, params, text in rows:
            calls[image_id].append((STAGE_ORDER[stage], index, stage, params, text))
        keys = dict(session.execute(select(Image.id, Image.object_key).where(Image.id.in_(list(calls)))).all())
    plans = []
    for image_id in sorted(calls):
        requests = tuple(
            Request(text, params["temperature"], params["seed"], params["max_tokens"], schema(stage, text))
            for _, _, stage, params, text in sorted(calls[image_id], key=lambda c: c[:2])
        )
        key = keys[image_id]
        path = Path(store.uri(key).removeprefix("file://"))
        plans.append(ImagePlan(path, "image/png" if key.endswith(".png") else "image/jpeg", requests))
    return plans


async def bare_loop(base_url: str, model: str, plans: list[ImagePlan], concurrency: int) -> tuple[float, int]:
    """(seconds, calls): the plans replayed with AsyncOpenAI, `concurrency` images at a time."""
    from openai import AsyncOpenAI

    started = time.perf_counter()
    calls = 0
    semaphore = asyncio.Semaphore(concurrency)
    # The SDK's default retries (2), as a user's loop would have: at high concurrency a loopback server
    # occasionally drops an idle keep-alive connection just as it is reused.
    async with AsyncOpenAI(base_url=base_url, api_key="not-needed", timeout=120) as client:

        async def one_image(plan: ImagePlan) -> None:
            nonlocal calls
            async with semaphore:
                url = f"data:{plan.mime};base64,{base64.b64encode(plan.image_path.read_bytes()).decode('ascii')}"
                for request in plan.requests:
                    completion = await client.chat.completions.create(
                        model=model,
                        messages=[
                            {
                                "role": "user",
                                "content": [
                                    {"type": "text", "text": request.prompt},
                                    {"type": "image_url", "image_url": {"url": url}},
                                ],
                            }
                        ],
                        temperature=request.temperature,
                        seed=request.seed,
                        max_tokens=request.max_tokens,
                        response_format=request.response_format,  # type: ignore[arg-type]
                    )
                    json.loads(completion.choices[0].message.content or "{}")
                    calls += 1

        await asyncio.gather(*(one_image(plan) for plan in plans))
    return time.perf_counter() - started, calls


def flow_call_window(settings, run_name: str) -> tuple[float, float]:
    """(epoch of the first call's start, epoch of the last call's end) of the run, from the database."""
    from sqlalchemy import func, select

    from models.orm import Run, VLLMCall
    from core.db import session_scope

    with session_scope(settings) as session:
        first, last = session.execute(
            select(func.min(VLLMCall.started_at), func.max(VLLMCall.finished_at))
            .join(Run, Run.id == VLLMCall.run_id)
            .where(Run.name == run_name)
        ).one()
    return first.timestamp(), last.timestamp()


class PeakRss:
    """Resident memory of this process, sampled every 0.25 s over a section: (baseline, peak) in MB."""

    def __enter__(self) -> PeakRss:
        import threading

        import psutil

        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss / 2**20)


def report_endpoint_limits(base_url: str) -> str:
    """The client-side caps the flow ran under, as configured for this endpoint."""
    from core.config import get_settings
    from tasks.vllm import VLLMConfig

    config = VLLMConfig.from_settings(get_settings(), base_url=base_url, model="any")
    if config.requests_per_minute is None and config.tokens_per_minute is None:
        return "no cap (not a hosted provider's host)"
    return f"{config.requests_per_minute} requests/min, {config.tokens_per_minute} tokens/min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="the simulator's fixed latency per call")
    parser.add_argument("--concurrency", type=int, default=32, help="images in flight, both sides")
    parser.add_argument("--shard-size", type=int, default=1000, help="the flow's images per sub-flow")
    parser.add_argument("--images-per-task", type=int, default=1, help="the flow's images per Prefect task run")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="> 1: compare one worker process with this many (concurrency split between them) instead of the bare loop",
    )
    args = parser.parse_args()
    if args.workers > 1:
        compare_workers(args)
        return

    print(SIMULATOR_NOTE)
    print(machine_line())
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        root = Path(tmp)
        settings = new_settings(admin_url, root)
        started = time.perf_counter()
        imported = ingest_synthetic(settings, root, args.images)
        print(f"prepared {imported} synthetic FEID images in {time.perf_counter() - started:.0f} s (not timed below)")
        export_settings(settings)

        with simulator_process(args.latency_ms) as simulator, prefect_api():
            from flows.annotate import annotate_flow

            database_url = settings.database_url.get_secret_value()  # type: ignore[union-attr]
            start_epoch = time.time()
            started = time.perf_counter()
            with CpuMeter(simulator.pid, database_url) as flow_cpu, PeakRss() as memory:
                report = annotate_flow(
                    run_name=RUN_NAME,
                    base_url=simulator.base_url,
                    model=simulator.model,
                    concurrency=args.concurrency,
                    shard_size=args.shard_size,
                    images_per_task=args.images_per_task,
                )
            flow_s = time.perf_counter() - started
            end_epoch = start_epoch + flow_s
            api_counts = api_task_run_counts()
            db_counts = database_run_counts(settings, RUN_NAME)
            first_call, last_call = flow_call_window(settings, RUN_NAME)

            plans = call_plans(settings, RUN_NAME)
            with CpuMeter(simulator.pid, database_url) as bare_cpu:
                bare_s, bare_calls = asyncio.run(bare_loop(simulator.base_url, simulator.model, plans, args.concurrency))

    flow_images = report.images.get("done", 0)
    flow_calls = report.calls
    calls_per_image = flow_calls / max(flow_images, 1)
    ideal = args.concurrency / (calls_per_image * args.latency_ms / 1000) if args.latency_ms else float("nan")
    flow_rate, bare_rate = flow_images / flow_s, len(plans) / bare_s
    print()
    print(
        f"{args.images} images, {args.latency_ms:g} ms per call, concurrency {args.concurrency}; both sides send the flow's "
        f"per-image call sequence: {calls_per_image:.2f} calls/image (UAMC N=5 samples, summary, rewrite)"
    )
    print_table(
        ["path", "images", "calls", "seconds", "images/s", "calls/s", "of ideal"],
        [
            ["annotate flow (Prefect + Postgres)", flow_images, flow_calls, f"{flow_s:.1f}", f"{flow_rate:.2f}",
             f"{flow_calls / flow_s:.1f}", f"{flow_rate / ideal:.3f}"],
            ["bare asyncio + AsyncOpenAI", len(plans), bare_calls, f"{bare_s:.1f}", f"{bare_rate:.2f}",
             f"{bare_calls / bare_s:.1f}", f"{bare_rate / ideal:.3f}"],
        ],
    )
    print(f"ideal (concurrency / (calls per image x latency)): {ideal:.2f} images/s")
    tokens_per_call = (report.tokens_in + report.tokens_out) / max(flow_calls, 1)
    endpoint = report_endpoint_limits(simulator.base_url)
    print(
        f"client rate limiter: {endpoint} ({tokens_per_call:.0f} tokens per call; OpenAI's default of "
        f"2,000,000 tokens/min would allow {2e6 / 60 / tokens_per_call:.1f} calls/s)"
    )
    growth = memory.peak - memory.baseline
    print(
        f"flow process memory: {memory.baseline:.0f} MB before, {memory.peak:.0f} MB peak, growth {growth:.0f} MB "
        f"(goal < 200: {'met' if growth < 200 else 'MISSED'})"
    )
    print(
        f"flow time outside the call window: {first_call - start_epoch:.1f} s before the first call, "
        f"{end_epoch - last_call:.1f} s after the last"
    )
    groups = ["client", "simulator", "postgres", "prefect API"]
    print("CPU ms per call, by process (2 cores = 2,000 CPU ms per wall second):")
    print_table(
        ["path", *groups, "total"],
        [
            [name, *(f"{1000 * cpu.seconds.get(g, 0.0) / calls:.2f}" for g in groups), f"{1000 * sum(cpu.seconds.values()) / calls:.2f}"]
            for name, cpu, calls in (("annotate flow", flow_cpu, flow_calls), ("bare loop", bare_cpu, bare_calls))
        ],
    )
    print(f"Prefect API task runs by state: {api_counts}; our database, images by status: {db_counts}")
    ratio = flow_rate / bare_rate
    print(f"RATIO flow / bare loop, images/s: {ratio:.3f}  (goal >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'})")


def compare_workers(args: argparse.Namespace) -> None:
    """The same images annotated twice, as two runs: by 1 worker process, then by K (`--workers K`).

    The total concurrency is the same on both sides (split between the K workers),
    so the ratio shows what processes add where one process is CPU-bound under
    its GIL. Both runs start from the CLI's entry point, annotate_flow, with the
    same database, simulator and Prefect API.
    """
    print(SIMULATOR_NOTE)
    print(machine_line())
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        root = Path(tmp)
        settings = new_settings(admin_url, root)
        imported = ingest_synthetic(settings, root, args.images)
        print(f"prepared {imported} synthetic FEID images (not timed)")
        export_settings(settings)
        rows, checks = [], []
        with simulator_process(args.latency_ms) as simulator, prefect_api():
            from flows.annotate import annotate_flow

            api_before = 0
            for workers in (1, args.workers):
                run_name = f"{RUN_NAME}-{workers}-workers"
                started = time.perf_counter()
                report = annotate_flow(
                    run_name=run_name,
                    base_url=simulator.base_url,
                    model=simulator.model,
                    concurrency=args.concurrency // workers,
                    shard_size=args.shard_size,
                    images_per_task=args.images_per_task,
                    workers=workers,
                )
                seconds = time.perf_counter() - started
                api_total = api_task_run_counts()["total"]
                db_done = database_run_counts(settings, run_name).get("done", 0)
                checks.append(f"{workers} worker(s): Prefect API task runs {api_total - api_before}, database images done {db_done}")
                api_before = api_total
                done = report.images.get("done", 0)
                first_call, last_call = flow_call_window(settings, run_name)
                window = last_call - first_call
                rows.append([workers, args.concurrency // workers, done, report.calls, f"{seconds:.1f}", f"{window:.1f}",
                             done / seconds, done / window])
    print(f"\n{args.images} images, {args.latency_ms:g} ms per call, total concurrency {args.concurrency}")
    print_table(
        ["worker processes", "concurrency each", "images", "calls", "seconds", "first to last call, s", "images/s", "images/s in calls"],
        [[*row[:-2], f"{row[-2]:.2f}", f"{row[-1]:.2f}"] for row in rows],
    )
    for line in checks:
        print(line)
    # End to end includes starting K Python processes (imports, Prefect client: seconds on a busy machine);
    # between the first and the last call is the steady state a long run spends its time in.
    print(f"RATIO {args.workers} workers / 1 worker, images/s end to end: {rows[1][-2] / rows[0][-2]:.3f}")
    ratio = rows[1][-1] / rows[0][-1]
    print(f"RATIO {args.workers} workers / 1 worker, images/s first to last call: {ratio:.3f}  (goal >= 1.6 where one process is CPU-bound)")


if __name__ == "__main__":
    main()
