"""Dollars per 1,000 images by prompt layout and mode, on the simulator's OpenAI-rule prompt cache.

    python bench/cost.py                     # demo data n=200 (its FEID split), seed 0
    python bench/cost.py --demo-images 500 --seed 1

The same FEID images, seed and UAMC law in six runs, each in its own database:
(a) paper layout online, one call per sample; (b) cached layout + shared prefill
(the first two samples as one request for n=2 choices) online; (c) paper layout
in Batch API rounds; (d) cached layout + shared prefill in batch rounds; and
(e), (f): the paper layout + shared prefill online and in batch. The simulator keeps a prefix cache by
OpenAI's rules (1024-token minimum, 128-token steps, TTL) and reports
`cached_tokens`; batch lines are billed at half price with no cache discount
(pre-GPT-5). Printed per mode: requests and tokens per image by kind (fresh
input, cached input, output), dollars per 1,000 images at the list prices of
each model in tasks/prices.py, and each mode's ratio to (a). Goals (issue):
(b) <= 0.6x (a) and the best mode <= 0.35x (a) at gpt-4o prices.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from batch_cost import RUN, run_batch
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

#: mode: (prompt layout, shared prefill, online or batch)
MODES = {
    "a": ("paper", False, "online"),
    "b": ("cached", True, "online"),
    "c": ("paper", False, "batch"),
    "d": ("cached", True, "batch"),
    "e": ("paper", True, "online"),
    "f": ("paper", True, "batch"),
}
BATCH_FACTOR = 0.5  # the Batch API's price relative to online


def tokens(settings) -> tuple[int, int, int, int, int]:
    """(images done, requests, fresh input, cached input, output tokens) of the run; a request for n
    choices is stored as n calls, counted once here."""
    from sqlalchemy import func, select

    from core.db import session_scope
    from models.orm import Run, RunImage, VLLMCall

    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == RUN))
        done = session.scalar(select(func.count()).select_from(RunImage).where(RunImage.run_id == run_id, RunImage.status == "done"))
        requests, tokens_in, cached, out = session.execute(
            select(
                func.count().filter(func.coalesce(VLLMCall.request_params["choice_index"].as_integer(), 0) == 0),
                func.sum(VLLMCall.tokens_in), func.sum(VLLMCall.tokens_cached), func.sum(VLLMCall.tokens_out),
            ).where(VLLMCall.run_id == run_id)
        ).one()
    return done, requests, tokens_in - cached, cached, out


def dollars(mode: str, fresh: int, cached: int, out: int, model: str) -> float:
    from tasks.prices import MODEL_PRICES

    prices = MODEL_PRICES[model]
    if MODES[mode][2] == "batch":  # no cache discount inside the Batch API before GPT-5
        return BATCH_FACTOR * ((fresh + cached) * prices.input + out * prices.output) / 1e6
    return (fresh * prices.input + cached * prices.cached_input + out * prices.output) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=200, help="tasks.demo_data n (FEID is ~9/10 of it)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)  # loopback: the tier limits are not what is measured
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)

    from tasks.config import AnnotateConfig
    from tasks.prices import MODEL_PRICES

    print(SIMULATOR_NOTE)
    print(machine_line())
    measured = {}
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        for mode, (layout, shared, how) in MODES.items():
            root = Path(tmp) / mode
            settings = new_settings(admin_url, root)
            ingest_demo_data(settings, root, args.demo_images, seed=args.seed)
            config = AnnotateConfig(seed=args.seed, prompt_layout=layout, shared_prefill=shared)
            with simulator_process(0.0) as simulator:
                if how == "online":
                    annotate_without_prefect(settings, RUN, simulator.base_url, simulator.model, config, args.concurrency)
                else:
                    run_batch(settings, simulator.base_url, simulator.model, config, None)
            measured[mode] = tokens(settings)

    models = [m for m in ("gpt-4o", "gpt-4.1", "gpt-4o-mini") if m in MODEL_PRICES]
    rows = []
    for mode, (done, requests, fresh, cached, out) in measured.items():
        n = max(done, 1)
        layout, shared, how = MODES[mode]
        row = [f"({mode}) {layout}{' + n' if shared else ''} {how}", done, f"{requests / n:.2f}", f"{fresh / n:.0f}", f"{cached / n:.0f}", f"{out / n:.0f}"]
        for model in models:
            usd = dollars(mode, fresh, cached, out, model) / n * 1000
            base = dollars("a", *measured["a"][2:], model) / max(measured["a"][0], 1) * 1000
            row.append(f"{usd:.2f} ({usd / base:.2f}x)")
        rows.append(row)
    print()
    print_table(
        ["mode", "images", "requests/image", "fresh in/image", "cached in/image", "out/image"]
        + [f"$/1k images {m} (ratio to a)" for m in models],
        rows,
    )
    ratios = {mode: dollars(mode, *measured[mode][2:], "gpt-4o") / measured[mode][0] for mode in measured}
    b, best = ratios["b"] / ratios["a"], min(ratios.values()) / ratios["a"]
    print()
    print(f"RATIO (b)/(a) at gpt-4o prices: {b:.3f} (goal <= 0.6: {'met' if b <= 0.6 else 'MISSED'})")
    print(f"RATIO best/(a) at gpt-4o prices: {best:.3f} (goal <= 0.35: {'met' if best <= 0.35 else 'MISSED'})")


if __name__ == "__main__":
    main()
