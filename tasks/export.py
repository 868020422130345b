"""Export a finished run as FEID: LLaVA conversation JSONL, a provenance sidecar, and a HF dataset.

Layout of an export directory:

    feid.jsonl        {"id", "image", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}
    provenance.jsonl  per image: every field's value, provenance, uncertainty, samples, call ids
    images/           the images (copy_images=True), else "image" is the object-store key
    hf/               the same records as a Hugging Face `datasets` dataset (save_to_disk)
    manifest.json     run, model, prompt versions, code version, counts: the record travels with the data

The directory is written under a temporary name and renamed when complete,
so a crash never leaves a half-written export behind.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.orm import Annotation, Export, HumanLabel, Image, Instruction, Prompt, Run, RunImage, VLLMCall
from core.store import ObjectStore, upload_dir
from core.version import code_version
from tasks.runs import simulated


@dataclass(frozen=True)
class ExportResult:
    path: Path
    records: int
    manifest: dict[str, Any]


def _provenance(session: Session, run_id: int, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = session.execute(
        select(Annotation, HumanLabel.source_file)
        .outerjoin(HumanLabel, Annotation.human_label_id == HumanLabel.id)
        .where(Annotation.run_id == run_id, Annotation.image_id.in_(image_ids))
    ).all()
    fields: dict[int, dict[str, Any]] = defaultdict(dict)
    for annotation, source_file in rows:
        entry: dict[str, Any] = {"value": annotation.value, "provenance": annotation.provenance}
        if annotation.provenance == "human":
            entry["source_file"] = source_file
        else:
            entry.update(
                summary_call_id=annotation.summary_call_id,
                uncertainty=annotation.uncertainty,
                samples_used=annotation.samples_used,
            )
        fields[annotation.image_id][annotation.field] = entry
    return fields


def export_run(
    session: Session, store: ObjectStore, run_id: int, out_dir: Path, *, copy_images: bool = True, batch: int = 500
) -> ExportResult:
    """Write the run's finished images as an FEID export at `out_dir` (replaced if it exists)."""
    import datasets

    run = session.get(Run, run_id)
    if run is None:
        raise ValueError(f"no run with id {run_id}")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)

    rows = session.execute(
        select(Instruction, Image)
        .join(Image, Instruction.image_id == Image.id)
        .join(RunImage, (RunImage.run_id == Instruction.run_id) & (RunImage.image_id == Instruction.image_id))
        .where(Instruction.run_id == run_id, RunImage.status == "done")
        .order_by(Image.id)
    ).all()
    records: list[dict[str, Any]] = []
    with (staging / "feid.jsonl").open("w") as feid, (staging / "provenance.jsonl").open("w") as sidecar:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            provenance = _provenance(session, run_id, [image.id for _, image in chunk])
            for instruction, image in chunk:
                if copy_images:
                    relative = f"images/{image.sha256}.{image.format.lower()}"
                    (staging / relative).write_bytes(store.get_bytes(image.object_key))
                else:
                    relative = image.object_key
                record = {
                    "id": image.sha256,
                    "image": relative,
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + instruction.question},
                        {"from": "gpt", "value": instruction.answer},
                    ],
                }
                feid.write(json.dumps(record) + "\n")
                sidecar.write(
                    json.dumps(
                        {
                            "id": image.sha256,
                            "image_id": image.id,
                            "question_template": instruction.template_id,
                            "fields": provenance[image.id],
                        }
                    )
                    + "\n"
                )
                records.append({"id": image.sha256, "image": relative, "question": instruction.question, "answer": instruction.answer})

    prompt_versions = sorted(
        {
            f"{name} v{version}"
            for name, version in session.execute(
                select(Prompt.name, Prompt.version).join(VLLMCall, VLLMCall.prompt_sha256 == Prompt.sha256).where(VLLMCall.run_id == run_id).distinct()
            )
        }
    )
    manifest = {
        "format": "llava-conversations",
        "run": run.name,
        "run_id": run.id,
        "model": run.model,
        "run_config": run.config,
        "prompts": prompt_versions,
        "records": len(records),
        "images": "copied" if copy_images else "object-store keys",
        "store": store.uri(""),
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if simulated(run):
        manifest["note"] = "generated by the offline simulator: for rehearsal, not a real model's annotations"
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    datasets.disable_progress_bars()  # the CLI shows its own progress
    datasets.Dataset.from_list(records).save_to_disk(str(staging / "hf"))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return ExportResult(out_dir, len(records), manifest)


def export_prefix(run_name: str) -> str:
    return f"exports/{run_name}"


def record_export(
    session: Session, store: ObjectStore, run_id: int, out_dir: Path, *, copy_images: bool = True
) -> tuple[int, ExportResult]:
    """Export the run, upload it to the object store and record it (lineage: run → export → training).

    Returns the export's id: training flows on other machines fetch the export by it.
    """
    result = export_run(session, store, run_id, out_dir, copy_images=copy_images)
    uri = upload_dir(store, out_dir, export_prefix(result.manifest["run"]))
    export = Export(run_id=run_id, uri=uri, records=result.records, manifest=result.manifest)
    session.add(export)
    session.flush()
    return export.id, result
