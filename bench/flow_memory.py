"""Memory of the annotate flow process as runs grow (1k to 26k images), and the Prefect API's task-run count.

    python bench/flow_memory.py                          # sizes 1,000 and 3,000
    python bench/flow_memory.py --sizes 1000,5000,26000  # the full range (~1 h on 2 cores at ~10 images/s)

One PostgreSQL database holds max(--sizes) synthetic FEID images (made first,
not timed). Each size runs in a fresh Python process of its own, with its own
Prefect API (prefect_test_harness, recorder batch 500 as docs/design.md says),
against one shared simulator process with zero latency, rewrite off (quick;
the shape of the flow is the same). In that process a 20-image warm-up run
loads every lazily imported module first; then RSS is read (the baseline),
the annotate flow runs `size` images under a new run name, and a sampler
thread reads RSS every 0.25 s. Growth = peak RSS - baseline, in the flow's
own process (the Prefect API server and the simulator are other processes).

After each run the Prefect API's task runs by state are compared with our
database's images by status (docs/design.md, "Scale facts": check the API against the database).
Goal: growth < 200 MB at every size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
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

MB = 1024 * 1024
WARMUP_IMAGES = 20


class RssSampler(threading.Thread):
    """Largest RSS of this process seen by polling every `interval_s`."""

    def __init__(self, interval_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil

        self._process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self._process.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss)


def child(size: int, base_url: str, model: str, shard_size: int, concurrency: int) -> None:
    """One size, in this fresh process; prints one JSON line for the parent."""
    import gc
    import resource

    import psutil

    from flows.annotate import annotate_flow
    from core.config import Settings
    from tasks.annotate import AnnotateConfig

    config = AnnotateConfig(rewrite_with_llm=False)
    run = dict(base_url=base_url, model=model, config=config, concurrency=concurrency, shard_size=shard_size)
    with prefect_api():
        # Warm-up: imports, the engine's first flow and task runs, the connection pool.
        annotate_flow(run_name=f"warmup-{size}", limit=WARMUP_IMAGES, **run)
        gc.collect()
        baseline = psutil.Process().memory_info().rss
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        report = annotate_flow(run_name=f"memory-{size}", limit=size, **run)
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        gc.collect()
        after = psutil.Process().memory_info().rss
        api = api_task_run_counts(settle_s=60)
        db = database_run_counts(Settings(), f"memory-{size}")
        db_warmup = database_run_counts(Settings(), f"warmup-{size}")
    result = {
        "size": size,
        "seconds": seconds,
        "done": report.images.get("done", 0),
        "calls": report.calls,
        "baseline": baseline,
        "peak": peak,
        "after": after,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "api": api,
        "db": db,
        "db_warmup": db_warmup,
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,3000", help="comma-separated images per run")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)  # loopback: the tier limits are not what is measured
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)
    if args.child:
        child(args.child, args.base_url, args.model, args.shard_size, args.concurrency)
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(SIMULATOR_NOTE)
    print(machine_line())
    results = []
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        root = Path(tmp)
        settings = new_settings(admin_url, root)
        started = time.perf_counter()
        imported = ingest_synthetic(settings, root, max(sizes) + WARMUP_IMAGES)
        print(f"prepared {imported} synthetic FEID images in {time.perf_counter() - started:.0f} s (not timed)")
        export_settings(settings)
        with simulator_process(0.0) as simulator:
            for size in sizes:
                command = [
                    sys.executable, __file__, "--child", str(size), "--base-url", simulator.base_url,
                    "--model", simulator.model, "--shard-size", str(args.shard_size), "--concurrency", str(args.concurrency),
                ]
                process = subprocess.run(command, capture_output=True, text=True)
                line = next((l for l in process.stdout.splitlines() if l.startswith("RESULT ")), None)
                if process.returncode or line is None:
                    sys.exit(f"size {size} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
                results.append(json.loads(line.removeprefix("RESULT ")))
                r = results[-1]
                print(f"  size {size}: {r['seconds']:.0f} s, peak growth {(r['peak'] - r['baseline']) / MB:.0f} MB")

    print()
    print(f"annotate flow, zero latency, rewrite off, shard size {args.shard_size}, concurrency {args.concurrency}; "
          "RSS of the flow's own process")
    print_table(
        ["images", "seconds", "images/s", "baseline MB", "peak MB", "growth MB", "after MB", "KB/image"],
        [[r["size"], f"{r['seconds']:.0f}", f"{r['done'] / r['seconds']:.1f}", f"{r['baseline'] / MB:.0f}",
          f"{r['peak'] / MB:.0f}", f"{(r['peak'] - r['baseline']) / MB:.0f}", f"{r['after'] / MB:.0f}",
          f"{(r['peak'] - r['baseline']) / 1024 / r['size']:.1f}"] for r in results],
    )
    print()
    print("task runs: Prefect API (annotate-image runs, by state) vs our database (run images, by status)")
    print_table(
        ["images", "API total", "API by state", "DB by status", "match"],
        [[r["size"], r["api"]["total"], {k: v for k, v in r["api"].items() if k != "total"},
          {k: v + r["db_warmup"].get(k, 0) for k, v in r["db"].items()},
          "yes" if r["api"].get("completed", 0) == r["size"] + WARMUP_IMAGES == r["api"]["total"] else "NO"]
         for r in results],
    )
    print(f"(API counts include the {WARMUP_IMAGES}-image warm-up run; DB counts above add it in too)")
    growth = max((r["peak"] - r["baseline"]) / MB for r in results)
    if len(results) > 1:
        first, last = results[0], results[-1]
        slope = ((last["peak"] - last["baseline"]) - (first["peak"] - first["baseline"])) / (last["size"] - first["size"])
        print(f"growth between {first['size']} and {last['size']} images: {slope / 1024:.2f} KB per extra image "
              f"(x 26,000 = {slope * 26000 / MB:.0f} MB)")
    print(f"RESULT largest peak RSS growth: {growth:.0f} MB  (goal < 200 MB: {'met' if growth < 200 else 'MISSED'}, "
          f"{growth / 200:.2f}x of the limit)")


if __name__ == "__main__":
    main()
