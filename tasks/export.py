"""Export a finished run as FEID: LLaVA conversation JSONL, a provenance sidecar, and a HF dataset.

Layout of an export directory:

    feid.jsonl        {"id", "image", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}], "reviewed"}
                      `reviewed`: the fields a person reviewed, {field: {"decision", "reviewer", "run"}}: a
                      decision on this run's value, or the review whose label this run took as known
    provenance.jsonl  per image: every field's value, provenance, uncertainty, samples, call ids; a generated
                      AU carries its task's uncertainty (`uncertainty`, what UAMC decided on) and its own
                      (`au_uncertainty` = p(1−p)/0.25, p = `present_fraction` of the valid samples)
    images/           the images (copy_images=True), else "image" is the object-store key
    hf/               the same records as a Hugging Face `datasets` dataset (save_to_disk)
    manifest.json     run, model, prompt versions, code version, counts: the record travels with the data

The directory is written under a fresh temporary name beside it and renamed
when complete, so a crash never leaves a half-written export behind. Nothing
but the export folder itself is ever replaced, and a non-empty one only when
the caller says so (`overwrite`: `seke export --force`, or the default folder
under the state directory, which is ours).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS
from models.orm import Annotation, Export, HumanLabel, Image, Instruction, Prompt, Review, Run, RunImage, VLLMCall
from models.vocab import ImageStatus, Stage
from core.errors import SekeError
from core.store import ObjectStore, upload_dir
from core.version import code_version
from tasks.runs import simulated


class ExportError(SekeError, ValueError):
    """The run cannot be exported as asked (the message says why)."""


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse (ExportError) a target that is not a folder, or a non-empty folder unless `overwrite`."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir} exists and is not a folder: choose another --out")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty: choose another --out, or pass --force to replace it")
    resolved = out_dir.resolve()
    for kept in (Path.cwd(), Path.home()):
        if resolved == kept or resolved in kept.parents:  # even --force never replaces these (or "/")
            raise ExportError(f"{out_dir} holds {kept}: choose a folder of its own for --out")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    records: int
    manifest: dict[str, Any]


def _au_fractions(session: Session, run_id: int, image_ids: list[int]) -> dict[int, dict[str, float]]:
    """Per image, the share of its valid UAMC samples in which each AU is present."""
    answers: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for image_id, parsed in session.execute(
        select(VLLMCall.image_id, VLLMCall.parsed).where(
            VLLMCall.run_id == run_id, VLLMCall.image_id.in_(image_ids), VLLMCall.stage == Stage.SAMPLE, VLLMCall.valid
        )
    ):
        if isinstance((parsed or {}).get("aus"), dict):
            answers[image_id].append(parsed["aus"])
    return {
        image_id: {au: sum(bool(s.get(au)) for s in samples) / len(samples) for au in ACTION_UNITS}
        for image_id, samples in answers.items()
    }


def _provenance(session: Session, run_id: int, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    fractions = _au_fractions(session, run_id, image_ids)
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
            p = fractions.get(annotation.image_id, {}).get(annotation.field)
            if p is not None:  # an AU: its own Bernoulli variance, normalised like the task's (max 0.25)
                entry.update(present_fraction=round(p, 4), au_uncertainty=round(p * (1 - p) / 0.25, 4))
        fields[annotation.image_id][annotation.field] = entry
    return fields


def _reviewed(session: Session, run_id: int, image_ids: list[int]) -> dict[int, dict[str, dict[str, str]]]:
    """Per image, the fields a person reviewed: decisions on this run's generated values (accept, correct,
    reject: a downstream user may drop rejected or corrected ones), and the reviews whose labels this
    run embedded as known (a version derived with --from)."""
    reviewed: dict[int, dict[str, dict[str, str]]] = defaultdict(dict)
    embedded = (
        select(Review, Run.name)
        .join(HumanLabel, HumanLabel.review_id == Review.id)
        .join(Annotation, Annotation.human_label_id == HumanLabel.id)
        .join(Run, Run.id == Review.run_id)
        .where(Annotation.run_id == run_id, Annotation.image_id.in_(image_ids))
    )
    own = select(Review, Run.name).join(Run, Run.id == Review.run_id).where(Review.run_id == run_id, Review.image_id.in_(image_ids))
    for query in (embedded, own):  # this run's own decisions last: they win
        for review, run_name in session.execute(query):
            reviewed[review.image_id][review.field] = {"decision": review.decision, "reviewer": review.reviewer, "run": run_name}
    return reviewed


def export_run(
    session: Session,
    store: ObjectStore,
    run_id: int,
    out_dir: Path,
    *,
    copy_images: bool = True,
    overwrite: bool = False,
    batch: int = 500,
) -> ExportResult:
    """Write the run's finished images as an FEID export at `out_dir` (a non-empty one only if `overwrite`)."""
    run = session.get(Run, run_id)
    if run is None:
        raise ValueError(f"no run with id {run_id}")
    check_out_dir(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_export(session, store, run, staging, copy_images=copy_images, batch=batch)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = json.loads((staging / "manifest.json").read_text())
    check_out_dir(out_dir, overwrite=overwrite)  # still true after the (long) write
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return ExportResult(out_dir, manifest["records"], manifest)


def _write_export(session: Session, store: ObjectStore, run: Run, staging: Path, *, copy_images: bool, batch: int) -> None:
    import datasets

    run_id = run.id
    (staging / "images").mkdir()

    rows = session.execute(
        select(Instruction, Image)
        .join(Image, Instruction.image_id == Image.id)
        .join(RunImage, (RunImage.run_id == Instruction.run_id) & (RunImage.image_id == Instruction.image_id))
        .where(Instruction.run_id == run_id, RunImage.status == ImageStatus.DONE)
        .order_by(Image.id)
    ).all()
    records: list[dict[str, Any]] = []
    with (staging / "feid.jsonl").open("w") as feid, (staging / "provenance.jsonl").open("w") as sidecar:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            provenance = _provenance(session, run_id, [image.id for _, image in chunk])
            reviewed = _reviewed(session, run_id, [image.id for _, image in chunk])
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
                    "reviewed": reviewed.get(image.id, {}),
                }
                feid.write(json.dumps(record) + "\n")
                sidecar.write(
                    json.dumps(
                        {
                            "id": image.sha256,
                            "image_id": image.id,
                            "question_template": instruction.template_id,
                            "fields": provenance[image.id],
                            "reviewed": reviewed.get(image.id, {}),
                        }
                    )
                    + "\n"
                )
                records.append({
                    "id": image.sha256, "image": relative, "question": instruction.question, "answer": instruction.answer,
                    "reviewed": json.dumps(reviewed.get(image.id, {})),  # JSON text: one column type for any fields
                })  # fmt: skip

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


def export_prefix(run_name: str) -> str:
    return f"exports/{run_name}"


def record_export(
    session: Session, store: ObjectStore, run_id: int, out_dir: Path, *, copy_images: bool = True, overwrite: bool = False
) -> tuple[int, ExportResult]:
    """Export the run, upload it to the object store and record it (lineage: run → export → training).

    Returns the export's id: training flows on other machines fetch the export by it.
    """
    result = export_run(session, store, run_id, out_dir, copy_images=copy_images, overwrite=overwrite)
    uri = upload_dir(store, out_dir, export_prefix(result.manifest["run"]))
    export = Export(run_id=run_id, uri=uri, records=result.records, manifest=result.manifest)
    session.add(export)
    session.flush()
    return export.id, result
