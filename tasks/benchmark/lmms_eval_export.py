"""Write FEAB as an lmms-eval task folder: `lmms_eval --include_path DIR --tasks feab`.

Layout of the folder:

    feab.yaml      the task (lmms-eval's TaskConfig keys; hooks as `!function utils.<name>`)
    utils.py       the hooks: a copy of tasks/benchmark/lmms_eval_hooks.py (seke's parser and metrics)
    dataset/       FEAB as a Hugging Face DatasetDict with one split, "test" (save_to_disk;
                   the YAML reads it with dataset_kwargs.load_from_disk)
    manifest.json  images, prompt version, code version, time

The YAML names the dataset by absolute path (lmms-eval resolves `dataset_path`
against its working directory): re-export after moving the folder. Like a FEID
export, the folder is written under a temporary name beside it and renamed when
complete, so a crash never leaves half a task behind.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from core.store import ObjectStore
from core.version import code_version
from tasks.benchmark import lmms_eval_hooks
from tasks.benchmark.prompt import benchmark_prompt
from tasks.benchmark.runner import FeabItem
from tasks.export import check_out_dir

TASK_NAME = "feab"  # not an lmms-eval built-in: a built-in task of the same name would win over ours
SPLIT = "test"


def task_yaml(dataset_dir: Path, *, max_new_tokens: int = 200) -> str:
    """The task YAML; generation is greedy, as `seke benchmark` answers with a checkpoint."""
    metrics = "\n".join(
        f"  - metric: {name}\n    aggregation: !function utils.agg_{name}\n    higher_is_better: {str(higher).lower()}"
        for name, higher in lmms_eval_hooks.METRICS.items()
    )
    prompt = benchmark_prompt()
    return f"""# FEAB (seke): expression, valence/arousal and action units of the subject-disjoint benchmark split.
task: {TASK_NAME}
dataset_path: {json.dumps(str(dataset_dir))}
dataset_kwargs:
  load_from_disk: true
test_split: {SPLIT}
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: reference
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
metric_list:
{metrics}
metadata:
  version: 1
  prompt: {json.dumps(f"{prompt.name} v{prompt.version}")}
  prompt_sha256: {prompt.sha256}
"""


def _records(items: Sequence[FeabItem], store: ObjectStore, question: str) -> Iterator[dict[str, Any]]:
    for item in items:
        yield {
            "image_id": item.image_id,
            "object_key": item.object_key,
            "image": {"bytes": store.get_bytes(item.object_key), "path": None},
            "question": question,
            "reference": json.dumps(item.reference.model_dump(mode="json"), sort_keys=True),
        }


def write_lmms_eval_task(
    items: Sequence[FeabItem], store: ObjectStore, out_dir: Path, *, overwrite: bool = False
) -> Path:
    """Write the task folder for `items` (FEAB, by image id) at `out_dir`; returns it."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    if not items:
        raise ValueError("no FEAB images: import data and run `seke split` first")
    check_out_dir(out_dir, overwrite=overwrite)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        features = datasets.Features(
            image_id=datasets.Value("int64"), object_key=datasets.Value("string"), image=datasets.Image(),
            question=datasets.Value("string"), reference=datasets.Value("string"),
        )  # fmt: skip
        datasets.disable_progress_bars()  # the CLI shows its own progress
        # Written record by record, so FEAB is never all in memory (Dataset.from_generator would also
        # pickle the store to fingerprint it, which an S3 client refuses); the file goes with staging.
        arrow = staging / "feab.arrow"
        with ArrowWriter(features=features, path=str(arrow)) as writer:
            for record in _records(items, store, benchmark_prompt().text):
                writer.write(features.encode_example(record))
            writer.finalize()
        datasets.DatasetDict({SPLIT: datasets.Dataset.from_file(str(arrow))}).save_to_disk(str(staging / "dataset"))
        arrow.unlink()
        (staging / "feab.yaml").write_text(task_yaml(out_dir / "dataset"))
        shutil.copyfile(lmms_eval_hooks.__file__, staging / "utils.py")
        prompt = benchmark_prompt()
        manifest = {
            "task": TASK_NAME, "images": len(items), "prompt": {"name": prompt.name, "version": prompt.version},
            "code_version": code_version(), "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        }  # fmt: skip
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        check_out_dir(out_dir, overwrite=overwrite)
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
