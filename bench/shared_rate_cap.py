"""How much of a shared request cap two worker processes use, and whether they ever exceed it.

    python bench/shared_rate_cap.py                    # cap 300/min, 2 processes x 24 images
    python bench/shared_rate_cap.py --cap 600 --images 48

Two `seke annotate` processes share one run and one SEKE_REQUESTS_PER_MINUTE
cap (the PostgreSQL token bucket of tasks/shared_limit.py); the simulator
enforces the same cap and counts what it would have refused with 429. Printed:
requests/min used (calls after the first over the span of their start times),
the ratio to the cap, and the simulator's refusals (goal: ratio >= 0.8, 0
refusals). The tests check the refusals and exactly-once; the ratio is a
measurement of this machine, so it lives here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
import httpx
from harness import SIMULATOR_NOTE, REPO, ingest_demo_data, machine_line, new_settings, postgres_admin_url, prefect_api
from sqlalchemy import create_engine, text

from simulator.server import SimulatorConfig, running_simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=300, help="requests per minute, shared")
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    print(machine_line())
    print(SIMULATOR_NOTE)
    with tempfile.TemporaryDirectory() as tmp, postgres_admin_url() as admin_url, prefect_api():
        from prefect.settings import PREFECT_API_URL

        settings = new_settings(admin_url, Path(tmp))
        ingest_demo_data(settings, Path(tmp), n=max(100, 3 * args.images))
        with running_simulator(SimulatorConfig(requests_per_minute=args.cap)) as base_url:
            env = {
                **os.environ,
                "SEKE_DATABASE_URL": settings.database_url.get_secret_value(),  # type: ignore[union-attr]
                "SEKE_STORE_URL": settings.store_url,
                "SEKE_STATE_DIR": str(settings.state_dir),
                "SEKE_VLLM_BASE_URL": base_url,
                "SEKE_VLLM_MODEL": "seke-simulator",
                "SEKE_REQUESTS_PER_MINUTE": str(args.cap),
                "SEKE_VLLM_MAX_ATTEMPTS": "1",
                "PREFECT_API_URL": PREFECT_API_URL.value(),
            }
            command = [sys.executable, "-m", "seke", "annotate", "--run", "shared", "--limit", str(args.images), "--concurrency", "4"]
            workers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
            codes = [worker.wait() for worker in workers]
            refused = httpx.get(base_url.removesuffix("/v1") + "/simulator/stats").json()["over_cap"]
        engine = create_engine(settings.database_url.get_secret_value())  # type: ignore[union-attr]
        with engine.connect() as connection:
            calls, seconds = connection.execute(
                text("SELECT count(*), extract(epoch FROM max(started_at) - min(started_at)) FROM vllm_calls")
            ).one()
        engine.dispose()
    rate = (calls - 1) / float(seconds) * 60
    harness.print_table(
        ["processes", "exit codes", "calls", "requests/min used", "cap", "ratio", "429s refused by the cap"],
        [[2, codes, calls, f"{rate:.0f}", args.cap, f"{rate / args.cap:.2f}", refused]],
    )


if __name__ == "__main__":
    main()
