"""Batch mode vs online mode: requests per image and dollars per 1,000 images, on the simulator.

    python bench/batch_cost.py                  # demo data n=300 (its FEID split)
    python bench/batch_cost.py --demo-images 2000 --seed 1

The same FEID images are annotated twice with the same run name and seed, in
two databases: online (the annotate engine, without Prefect) and in batch
rounds over the simulator's Batch API (tasks/batch.py, without Prefect). Both
store every call; the script checks that they stored the same calls with the
same parsed answers, and prints requests per image, rounds, and dollars per
1,000 images at the configured prices (GPT-4o list prices; batch at 0.5×).
Goal: batch ≤ 0.5× the dollars of online, with the same calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
    annotate_without_prefect,
    ingest_demo_data,
    machine_line,
    new_settings,
    postgres_admin_url,
    print_table,
    simulator_process,
)

RUN = "bench-batch-cost"


def stored(settings) -> tuple[int, list[tuple], float, int]:
    """(images done, calls keyed by image content, dollars, rounds) of the run."""
    from sqlalchemy import func, select

    from core.db import session_scope
    from models.orm import ApiBatch, Image, Run, RunImage, VLLMCall

    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == RUN))
        done = session.scalar(select(func.count()).select_from(RunImage).where(RunImage.run_id == run_id, RunImage.status == "done"))
        calls = [tuple(row) for row in session.execute(
            select(Image.sha256, VLLMCall.stage, VLLMCall.sample_index, VLLMCall.prompt_sha256, VLLMCall.parsed,
                   VLLMCall.tokens_in, VLLMCall.tokens_out)
            .join(Image, Image.id == VLLMCall.image_id).where(VLLMCall.run_id == run_id)
            .order_by(Image.sha256, VLLMCall.stage, VLLMCall.sample_index)
        )]
        dollars = float(session.scalar(select(func.coalesce(func.sum(VLLMCall.cost_usd), 0)).where(VLLMCall.run_id == run_id)))
        rounds = session.scalar(select(func.coalesce(func.max(ApiBatch.round), 0)).where(ApiBatch.run_id == run_id))
    return done, calls, dollars, rounds


def run_batch(settings, base_url: str, model: str, config, limit: int | None) -> None:
    """The batch rounds without Prefect (the flow minus its logging)."""
    import openai

    from core.db import database_url, session_factory
    from core.store import open_store
    from core.version import code_version
    from tasks.annotate import Annotator, Budget
    from tasks.batch import BatchConfig, BatchRunner
    from tasks.runs import close_run, open_run
    from tasks.vllm import VLLMConfig

    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model)
    with sessions.begin() as session:
        run_id = open_run(session, RUN, config=config, model=model, endpoint=vllm_config.public_snapshot(),
                          code_version=code_version(), limit=limit)
    annotator = Annotator(run_id=run_id, run_name=RUN, config=config, database_url=database_url(settings),
                          store=open_store(settings), vllm=vllm_config, budget=Budget(0, 0.0, None, None))
    with openai.OpenAI(base_url=base_url, api_key="not-needed") as client:
        stop = BatchRunner(annotator, sessions, client, BatchConfig(poll_s=0.2), lambda line: print("  " + line)).run()
    with sessions.begin() as session:
        close_run(session, run_id, stop_reason=stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=300, help="tasks.demo_data n (FEID is ~9/10 of it)")
    parser.add_argument("--limit", type=int, default=None, help="annotate at most this many FEID images")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)  # loopback: the tier limits are not what is measured
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)

    from tasks.annotate import AnnotateConfig

    print(SIMULATOR_NOTE)
    print(machine_line())
    config = AnnotateConfig(seed=args.seed)
    results = {}
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        for mode in ("online", "batch"):
            root = Path(tmp) / mode
            settings = new_settings(admin_url, root)
            ingest_demo_data(settings, root, args.demo_images, seed=args.seed)
            with simulator_process(0.0) as simulator:
                started = time.perf_counter()
                if mode == "online":
                    annotate_without_prefect(settings, RUN, simulator.base_url, simulator.model, config, args.concurrency,
                                             limit=args.limit)
                else:
                    run_batch(settings, simulator.base_url, simulator.model, config, args.limit)
                seconds = time.perf_counter() - started
            results[mode] = (*stored(settings), seconds)

    online_done, online_calls, online_usd, _, _ = results["online"]
    batch_done, batch_calls, batch_usd, _, _ = results["batch"]
    same = online_calls == batch_calls
    rows = []
    for mode, (done, calls, usd, n_rounds, seconds) in results.items():
        n = max(done, 1)
        rows.append([mode, done, f"{len(calls) / n:.2f}", f"{1000 * usd / n:.2f}", n_rounds or "-", f"{seconds:.0f}"])
    print()
    print_table(["mode", "images done", "requests/image", "$ per 1,000 images", "rounds", "seconds"], rows)
    print()
    print(f"same calls (prompts, parsed answers, tokens) in both modes: {'yes' if same else 'NO'} "
          f"({len(online_calls)} online, {len(batch_calls)} batch)")
    if not same:
        differing = [(a, b) for a, b in zip(online_calls, batch_calls) if a != b]
        print(f"{len(differing)} calls differ; the first: online {differing[0][0]} / batch {differing[0][1]}")
    ratio = batch_usd / online_usd if online_usd else float("nan")
    met = ratio <= 0.5 + 1e-9 and same and online_done == batch_done
    print(f"RATIO dollars, batch / online: {ratio:.3f}  (goal <= 0.5 with the same calls: {'met' if met else 'MISSED'})")


if __name__ == "__main__":
    main()
