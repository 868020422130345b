"""UAMC (Algorithm 1, N=5) vs a fixed 5 samples per image: calls spent and agreement with ground truth.

    python bench/uamc_vs_fixed.py                    # demo data n=600 (its FEID split), prior on
    python bench/uamc_vs_fixed.py --demo-images 3000 --seed 1
    python bench/uamc_vs_fixed.py --prompt-layout cached   # the same comparison in the cached prompt layout

Both runs annotate the same FEID images of the demo data (tasks.demo_data:
each source's real label availability, so images lack different
descriptions) with prior knowledge on and the rewrite step off (it does not
change labels). "Fixed 5" is UAMCConfig(start_samples=5, max_samples=5):
five samples are drawn before the first decision, which is then
"max-reached". The annotate engine runs without Prefect against the
simulator in its own process, with zero latency.

Agreement is scored on generated labels only (the descriptions an image
lacked; human labels are copied through), against the ground truth embedded
in each stored image (tasks.groundtruth.read_ground_truth). The simulator's
answers are ground truth + noise calibrated to GPT-4o: these numbers show
how the two sampling policies behave under that noise model, not a model's
quality. Goal: UAMC <= 0.65x the calls of fixed 5 at equal or better agreement.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import defaultdict
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


def feid_images_with_missing(settings) -> list[int]:
    """FEID images that lack at least one description (the ones UAMC samples)."""
    from sqlalchemy import select

    from models.labels import FaceLabels, Split
    from models.orm import HumanLabel, Image
    from core.db import session_scope

    with session_scope(settings) as session:
        ids = list(session.scalars(select(Image.id).where(Image.split == Split.FEID.value).order_by(Image.id)))
        labels: dict[int, dict] = defaultdict(dict)
        for image_id, field, label in session.execute(
            select(HumanLabel.image_id, HumanLabel.field, HumanLabel).where(HumanLabel.image_id.in_(ids))
        ):
            labels[image_id][field] = label.value
    return [i for i in ids if FaceLabels.from_field_values(labels[i]).missing_tasks()]


def scored_run(settings, run_name: str) -> dict:
    """Calls, samples and agreement of a run's generated labels with the embedded ground truth."""
    from sqlalchemy import func, select

    from models.labels import ACTION_UNITS
    from models.orm import Annotation, Image, Run, RunImage, VLLMCall
    from core.db import session_scope
    from core.store import open_store
    from tasks.groundtruth import read_ground_truth

    store = open_store(settings)
    with session_scope(settings) as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        done = dict(session.execute(
            select(RunImage.image_id, RunImage.samples_used).where(RunImage.run_id == run_id, RunImage.status == "done")
        ).all())
        calls = dict(session.execute(
            select(VLLMCall.stage, func.count()).where(VLLMCall.run_id == run_id).group_by(VLLMCall.stage)
        ).all())
        keys = dict(session.execute(select(Image.id, Image.object_key).where(Image.id.in_(list(done)))).all())
        generated: dict[int, dict] = defaultdict(dict)
        for annotation in session.scalars(
            select(Annotation).where(Annotation.run_id == run_id, Annotation.provenance == "generated")
        ):
            generated[annotation.image_id][annotation.field] = annotation.value
    per_image: dict[int, dict] = {}
    for image_id, fields in generated.items():
        truth = read_ground_truth(store.get_bytes(keys[image_id]))
        if truth is None:
            raise RuntimeError(f"image {image_id} carries no ground truth; the demo data should embed it in every image")
        values = truth.field_values()
        per_image[image_id] = {name: (predicted, values[name]) for name, predicted in fields.items()}
    return {
        "images": len(done),
        "samples": sum(done.values()),
        "calls": calls,
        "per_image": per_image,
        "aus": ACTION_UNITS,
    }


def agreement(per_image: dict[int, dict], aus: tuple[str, ...], image_ids: list[int]) -> dict[str, tuple[float, int]]:
    """(value, n) per metric over `image_ids`: expression accuracy, AU agreement, mean AU F1, VA MAE."""
    from tasks.benchmark.metrics import f1_positive

    expr, au_hits, va = [], [], {"valence": [], "arousal": []}
    au_pairs: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for image_id in image_ids:
        fields = per_image.get(image_id, {})
        if "expression" in fields:
            expr.append(fields["expression"][0] == fields["expression"][1])
        for dim in va:
            if dim in fields:
                va[dim].append(abs(fields[dim][0] - fields[dim][1]))
        for au in aus:
            if au in fields:
                au_pairs[au].append(fields[au])
                au_hits.append(fields[au][0] == fields[au][1])
    f1s = [f1_positive([p for p, _ in pairs], [r for _, r in pairs]) for pairs in au_pairs.values() if any(r for _, r in pairs)]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "expression accuracy": (mean(expr), len(expr)),
        "AU agreement (accuracy)": (mean(au_hits), len(au_hits)),
        "AU mean F1 (positive class)": (mean(f1s), len(f1s)),
        "valence MAE": (mean(va["valence"]), len(va["valence"])),
        "arousal MAE": (mean(va["arousal"]), len(va["arousal"])),
    }


def paired_se(per_a: dict, per_b: dict, image_ids: list[int], field_fn) -> float:
    """Standard error of the mean per-image difference b - a of field_fn (images where both have it)."""
    diffs = []
    for image_id in image_ids:
        a, b = field_fn(per_a.get(image_id, {})), field_fn(per_b.get(image_id, {}))
        if a is not None and b is not None:
            diffs.append(b - a)
    if len(diffs) < 2:
        return float("nan")
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=600, help="tasks.demo_data n (FEID is ~9/10 of it)")
    parser.add_argument("--max-samples", type=int, default=5, help="N for both policies")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="demo data and run seed")
    parser.add_argument("--prompt-layout", choices=("paper", "cached"), default="paper", help="tasks/prompts.py")
    parser.add_argument("--normaliser", choices=("fixed", "attainable"), default="fixed", help="UAMC's uncertainty normaliser")
    args = parser.parse_args()
    os.environ["SEKE_REQUESTS_PER_MINUTE"] = str(10**9)  # loopback: the tier limits are not what is measured
    os.environ["SEKE_TOKENS_PER_MINUTE"] = str(10**12)

    from tasks.annotate import AnnotateConfig
    from tasks.uamc import UAMCConfig

    policies = {
        f"UAMC (start 2, N={args.max_samples}, {args.normaliser})": UAMCConfig(
            max_samples=args.max_samples, normaliser=args.normaliser
        ),
        f"fixed {args.max_samples}": UAMCConfig(start_samples=args.max_samples, max_samples=args.max_samples),
    }
    print(SIMULATOR_NOTE)
    print(machine_line())
    results = {}
    with postgres_admin_url() as admin_url, tempfile.TemporaryDirectory(prefix="seke-bench-") as tmp:
        root = Path(tmp)
        settings = new_settings(admin_url, root)
        started = time.perf_counter()
        ingest_demo_data(settings, root, args.demo_images, seed=args.seed)
        image_ids = feid_images_with_missing(settings)
        print(f"prepared demo data n={args.demo_images}: {len(image_ids)} FEID images lack a description "
              f"({time.perf_counter() - started:.0f} s, not timed)")
        with simulator_process(0.0) as simulator:
            for k, (label, uamc) in enumerate(policies.items()):
                run_name = f"bench-policy-{k}"
                config = AnnotateConfig(
                    seed=args.seed, use_prior=True, uamc=uamc, rewrite_with_llm=False, prompt_layout=args.prompt_layout
                )
                started = time.perf_counter()
                annotate_without_prefect(
                    settings, run_name, simulator.base_url, simulator.model, config, args.concurrency, image_ids=image_ids
                )
                results[label] = scored_run(settings, run_name)
                results[label]["seconds"] = time.perf_counter() - started

    (uamc_label, uamc), (fixed_label, fixed) = results.items()
    common = sorted(set(uamc["per_image"]) & set(fixed["per_image"]))
    print()
    print(f"{len(image_ids)} FEID images with missing descriptions, prior on, rewrite off; scored on {len(common)} "
          "images done by both runs, generated labels only")
    rows = []
    for label, result in results.items():
        n = max(result["images"], 1)
        sample_calls = result["calls"].get("prior-sample", 0)
        total_calls = sum(result["calls"].values())
        rows.append([label, result["images"], f"{result['samples'] / n:.2f}", f"{sample_calls / n:.2f}",
                     f"{total_calls / n:.2f}", f"{result['seconds']:.0f}"])
    print_table(["policy", "images done", "valid samples/image", "sample calls/image", "all calls/image", "seconds"], rows)
    print()
    scores = {label: agreement(r["per_image"], r["aus"], common) for label, r in results.items()}
    metric_rows = []
    for metric in scores[uamc_label]:
        (u, n), (f, _) = scores[uamc_label][metric], scores[fixed_label][metric]
        better = "higher" if "MAE" not in metric else "lower"
        metric_rows.append([metric, n, f"{u:.4f}", f"{f:.4f}", f"{u - f:+.4f}", better])
    print_table(["agreement with ground truth", "n", uamc_label, fixed_label, "UAMC - fixed", "better is"], metric_rows)
    se_expr = paired_se(
        fixed["per_image"], uamc["per_image"], common,
        lambda fields: float(fields["expression"][0] == fields["expression"][1]) if "expression" in fields else None,
    )
    se_valence = paired_se(
        fixed["per_image"], uamc["per_image"], common,
        lambda fields: abs(fields["valence"][0] - fields["valence"][1]) if "valence" in fields else None,
    )
    print(f"paired standard errors of UAMC - fixed: expression accuracy {se_expr:.4f}, valence MAE {se_valence:.4f}")
    sample_ratio = uamc["calls"].get("prior-sample", 0) / max(fixed["calls"].get("prior-sample", 0), 1)
    total_ratio = sum(uamc["calls"].values()) / max(sum(fixed["calls"].values()), 1)
    print()
    print(f"RATIO sample calls, UAMC / fixed: {sample_ratio:.3f}  (goal <= 0.65: {'met' if sample_ratio <= 0.65 else 'MISSED'})")
    print(f"RATIO all calls (samples + summary), UAMC / fixed: {total_ratio:.3f}")


if __name__ == "__main__":
    main()
