"""Review then --from: how much a 10% human review of generated fields improves FEID labels (simulator).

    python bench/review.py                    # demo data n=200 (its FEID split)

Annotates the FEID images on the simulator as v1, once per strategy in a database of its own (same
images, run name and seed, so the same v1: checked), then, for (a) the 10% most uncertain generated
fields (tasks/review.py review_queue) and (b) a seeded random 10% of them, answers each review with the
ground truth embedded in the image through record_reviews ("correct" where the model was wrong,
"accept" otherwise), derives the next version (tasks/versions.py, as `--from` does) and scores the
labels of both versions against the ground truth. The simulator's answers are ground truth + noise
calibrated to GPT-4o: a rehearsal of the review loop, not a model's quality.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import harness  # noqa: F401  (puts the repository on sys.path)
from harness import (
    SIMULATOR_NOTE,
    annotate_without_prefect,
    ingest_demo_data,
    machine_line,
    new_settings,
    postgres_admin_url,
    simulator_process,
)
from uamc_vs_fixed import agreement


def all_labels(settings, run_name: str) -> dict[int, dict]:
    """Every final label of the run (human and generated), per image, with its ground truth."""
    from sqlalchemy import select

    from core.db import session_scope
    from core.store import open_store
    from models.orm import Annotation, Image, Run
    from tasks.groundtruth import read_ground_truth

    store = open_store(settings)
    out: dict[int, dict] = {}
    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        keys = dict(session.execute(select(Image.id, Image.object_key)).all())
        for a in session.scalars(select(Annotation).where(Annotation.run_id == run_id)):
            out.setdefault(a.image_id, {})[a.field] = a.value
    return {
        image_id: {
            f: (v, read_ground_truth(store.get_bytes(keys[image_id])).field_values()[f]) for f, v in fields.items()
        }
        for image_id, fields in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=200)
    parser.add_argument("--share", type=float, default=0.10, help="share of generated fields reviewed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)

    from core.db import session_scope
    from tasks.annotate import AnnotateConfig
    from tasks.review import ReviewDecision, record_reviews, review_queue
    from tasks.runs import find_run, open_run
    from tasks.versions import derive_run

    print(SIMULATOR_NOTE)
    print(machine_line())
    config = AnnotateConfig(seed=args.seed, rewrite_with_llm=False)
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        with simulator_process(0.0) as sim:
            results = {}
            for name in ("top-uncertain", "random"):
                # Both strategies review the same v1: its own database each, the same images, name and seed.
                root = Path(tmp) / name
                settings = new_settings(admin_url, root)
                ingest_demo_data(settings, root, args.demo_images, seed=args.seed)
                run = "v1"
                annotate_without_prefect(settings, run, sim.base_url, sim.model, config, 16)
                before = all_labels(settings, run)
                with session_scope(settings) as session:
                    queue = review_queue(session, run, top=10**9)
                k = max(1, round(args.share * len(queue)))
                items = queue[:k] if name == "top-uncertain" else random.Random(args.seed).sample(queue, k)
                with session_scope(settings) as session:
                    decisions = []
                    for i in items:
                        truth = before[i.image_id][i.field][1]
                        wrong = i.value != truth if not isinstance(truth, float) else abs(i.value - truth) > 0.1
                        decisions.append(
                            ReviewDecision(
                                f"item {i.image_id}/{i.field}",
                                run,
                                i.image_id,
                                i.field,
                                "bench",
                                "correct" if wrong else "accept",
                                truth if wrong else None,
                            )
                        )
                    record_reviews(session, decisions)
                with session_scope(settings) as session:
                    origin = find_run(session, run)
                    run_id = open_run(
                        session,
                        f"{run}-v2",
                        config=config,
                        model=origin.model,
                        endpoint={},
                        code_version="bench",
                        limit=None,
                        derived_from=run,
                    )
                    derivation = derive_run(session, run_id)
                annotate_without_prefect(settings, f"{run}-v2", sim.base_url, sim.model, config, 16)
                results[name] = (derivation, all_labels(settings, run), all_labels(settings, f"{run}-v2"))
    v1s = [v1 for _, v1, _ in results.values()]
    print(f"\n{len(queue)} generated fields, {k} reviewed per strategy; the same v1 for both: {v1s[0] == v1s[1]}")
    from models.labels import ACTION_UNITS

    gains = {}
    for name, (derivation, v1, v2) in results.items():
        ids = sorted(v1)
        a, b = agreement(v1, ACTION_UNITS, ids), agreement(v2, ACTION_UNITS, ids)
        print(f"\n{name}: {derivation.kept} images kept, {derivation.reannotated} annotated again (all labels scored)")
        for metric in a:
            print(f"  {metric:30s} {a[metric][0]:.4f} -> {b[metric][0]:.4f}")
            # Improvement: up for accuracy/F1, down for an error.
            gains.setdefault(metric, []).append((b[metric][0] - a[metric][0]) * (-1 if "MAE" in metric else 1))
    print("\nimprovement, top-uncertain / random:")
    for metric, (top, rnd) in gains.items():
        print(f"  {metric:30s} {top:+.4f} / {rnd:+.4f}" + (f" = {top / rnd:.2f}x" if rnd else ""))


if __name__ == "__main__":
    main()
