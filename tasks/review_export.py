"""A run's generated labels for human review, as Label Studio tasks or an Argilla dataset folder.

Label Studio: a labeling config and tasks whose one prediction carries the run's values; its `score` is
1 - the image's largest field uncertainty, because Label Studio reads score as confidence and sorts
lowest first. Argilla: one record per image with a suggestion per question (score 1 - that field's
uncertainty) and the image's uncertainty as metadata to sort by.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.store import LocalStore, ObjectStore, S3Store
from models.labels import ACTION_UNITS, EXPRESSIONS
from models.orm import Annotation, Image, Run
from tasks.export import check_out_dir
from tasks.prompts import SUMMARY_TEMPLATE

#: Presigned image links stay valid this long (seconds).
URL_EXPIRY_S = 7 * 24 * 3600


def labeling_config() -> str:
    """Label Studio's XML: image, one expression, any AUs, valence/arousal numbers, a description."""

    def choices(values: tuple[str, ...]) -> str:
        return "".join(f"<Choice value={quoteattr(v)}/>" for v in values)

    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        f'  <Choices name="expression" toName="image" choice="single" required="true">{choices(EXPRESSIONS)}</Choices>\n'
        f'  <Choices name="aus" toName="image" choice="multiple">{choices(ACTION_UNITS)}</Choices>\n'
        '  <Number name="valence" toName="image" min="-1" max="1" step="0.01"/>\n'
        '  <Number name="arousal" toName="image" min="-1" max="1" step="0.01"/>\n'
        '  <TextArea name="description" toName="image" rows="3"/>\n'
        "</View>\n"
    )


def image_url(store: ObjectStore, key: str) -> str:
    """A presigned S3 GET link, or a Label Studio local-files path for a local store."""
    if isinstance(store, S3Store):
        return store.client.generate_presigned_url(  # type: ignore[attr-defined]
            "get_object", Params={"Bucket": store.bucket, "Key": store._key(key)}, ExpiresIn=URL_EXPIRY_S
        )
    assert isinstance(store, LocalStore)
    return f"/data/local-files/?d={store._path(key)}"


@dataclass(frozen=True)
class ReviewItem:
    """One image's generated fields in a run, as a review tool gets them."""

    image: Image
    fields: list[Annotation]

    @property
    def uncertainty(self) -> float:
        """The largest field uncertainty: the image is as doubtful as its least certain field."""
        return max((a.uncertainty for a in self.fields if a.uncertainty is not None), default=0.0)

    @property
    def present_aus(self) -> list[str]:
        return [a.field for a in self.fields if a.field in ACTION_UNITS and a.value_bool]

    @property
    def call_id(self) -> int | None:
        return self.fields[0].summary_call_id


def review_items(session: Session, run_name: str) -> list[ReviewItem]:
    """The run's images with generated fields, by image id; ValueError for an unknown run."""
    run = session.scalar(select(Run).where(Run.name == run_name))
    if run is None:
        raise ValueError(f"no run named {run_name!r}")
    rows = session.execute(
        select(Annotation, Image)
        .join(Image, Image.id == Annotation.image_id)
        .where(Annotation.run_id == run.id, Annotation.provenance == "generated")
        .order_by(Image.id, Annotation.field)
    ).all()
    by_image: dict[int, list[Annotation]] = defaultdict(list)
    images: dict[int, Image] = {}
    for annotation, image in rows:
        by_image[image.id].append(annotation)
        images[image.id] = image
    return [ReviewItem(images[image_id], fields) for image_id, fields in by_image.items()]


def model_version(run_name: str) -> str:
    return f"{run_name}/{SUMMARY_TEMPLATE[0]}-v{SUMMARY_TEMPLATE[1]}"


def label_studio_tasks(session: Session, store: ObjectStore, run_name: str) -> list[dict[str, Any]]:
    tasks = []
    for item in review_items(session, run_name):
        result: list[dict[str, Any]] = []
        for a in item.fields:
            if a.field == "expression":
                result.append(_result("expression", "choices", {"choices": [a.value_text]}))
            elif a.field in ("valence", "arousal"):
                result.append(_result(a.field, "number", {"number": a.value_number}))
        if any(a.field in ACTION_UNITS for a in item.fields):
            result.append(_result("aus", "choices", {"choices": item.present_aus}))
        tasks.append(
            {
                "data": {
                    "image": image_url(store, item.image.object_key),
                    "image_id": item.image.id,
                    "run": run_name,
                    "call_id": item.call_id,
                    "uncertainty": item.uncertainty,
                },
                "predictions": [{"model_version": model_version(run_name), "score": 1.0 - item.uncertainty, "result": result}],
            }
        )
    return tasks


def _result(name: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": kind, "value": value}


def export_label_studio(session: Session, store: ObjectStore, run_name: str, out_dir: Path) -> tuple[Path, Path]:
    """Writes config.xml and tasks.json into out_dir; returns both paths."""
    tasks = label_studio_tasks(session, store, run_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, tasks_file = out_dir / "config.xml", out_dir / "tasks.json"
    for path, content in ((config, labeling_config()), (tasks_file, json.dumps(tasks, indent=2))):
        partial = path.with_name(path.name + ".partial")  # renamed when whole: a crash leaves no half file
        partial.write_text(content, encoding="utf-8")
        partial.replace(path)
    return config, tasks_file


# Argilla 2.x: the folder `Dataset.to_disk` writes and `Dataset.from_disk` reads (.argilla/dataset.json,
# .argilla/settings.json, records.json), written as plain JSON because the SDK will not build a dataset
# without a reachable server.
ARGILLA_NUMBER_QUESTIONS = ("valence", "arousal")  # RatingQuestion takes integers 0-10 only: a number as text


def argilla_settings() -> dict[str, Any]:
    """Image field; expression (one label), AUs (any), valence/arousal (a number as text); uncertainty as a
    float metadata property, because the SDK cannot sort by suggestion score and the UI can sort by metadata."""

    def options(values: tuple[str, ...]) -> list[dict[str, str]]:
        return [{"text": v, "value": v} for v in values]

    def question(name: str, settings: dict[str, Any], description: str) -> dict[str, Any]:
        # Nothing is required: a value cleared before submitting is a reject, as in Label Studio.
        return {"name": name, "title": name, "description": description, "required": False, "settings": settings}

    def metadata(name: str, kind: str) -> dict[str, Any]:
        settings: dict[str, Any] = {"type": kind, "visible_for_annotators": True}
        settings.update({"values": None} if kind == "terms" else {"min": None, "max": None})
        return {"name": name, "title": name, "visible_for_annotators": True, "settings": settings}

    number = "A number in [-1, 1]; clear it to reject the model's value."
    return {
        "guidelines": "Check the model's suggestions for this face; correct what is wrong, clear what cannot be told.",
        "allow_extra_metadata": False,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "fields": [{"name": "image", "title": "image", "required": True, "settings": {"type": "image"}}],
        "questions": [
            question("expression", {"type": "label_selection", "options": options(EXPRESSIONS)}, "The one expression."),
            question("aus", {"type": "multi_label_selection", "options": options(ACTION_UNITS), "options_order": "natural"},
                     "Every action unit present."),
            *(question(name, {"type": "text", "use_markdown": False}, number) for name in ARGILLA_NUMBER_QUESTIONS),
        ],  # fmt: skip
        "vectors": [],
        "metadata": [metadata("uncertainty", "float"), metadata("image_id", "integer"), metadata("call_id", "integer"),
                     metadata("run", "terms")],  # fmt: skip
        "mapping": None,
    }


def argilla_image(store: ObjectStore, image: Image) -> str:
    """A presigned S3 link; for a local store the image itself as a data URI (Argilla cannot read local paths)."""
    if isinstance(store, S3Store):
        return image_url(store, image.object_key)
    mime = "jpeg" if image.format.upper() in ("JPG", "JPEG") else image.format.lower()
    return f"data:image/{mime};base64,{base64.b64encode(store.get_bytes(image.object_key)).decode('ascii')}"


def argilla_records(session: Session, store: ObjectStore, run_name: str) -> Iterator[dict[str, Any]]:
    """One record per image, the run's values as suggestions (score 1 − the field's uncertainty, agent the
    run and prompt version), in the shape of Argilla's `Record.to_dict`; one at a time, as each may carry
    its image."""
    agent = model_version(run_name)
    for item in review_items(session, run_name):
        suggestions: dict[str, dict[str, Any]] = {}
        for a in item.fields:
            score = None if a.uncertainty is None else 1.0 - a.uncertainty
            if a.field == "expression":
                suggestions["expression"] = {"value": a.value_text, "score": score, "agent": agent}
            elif a.field in ARGILLA_NUMBER_QUESTIONS and a.value_number is not None:
                suggestions[a.field] = {"value": f"{a.value_number:g}", "score": score, "agent": agent}
        au_fields = [a for a in item.fields if a.field in ACTION_UNITS]
        if au_fields:
            au_uncertainty = au_fields[0].uncertainty  # UAMC's uncertainty of the AU task, the same on each AU
            suggestions["aus"] = {
                "value": item.present_aus, "score": None if au_uncertainty is None else 1.0 - au_uncertainty, "agent": agent,
            }  # fmt: skip
        yield {
            "id": f"{run_name}:{item.image.id}",
            "fields": {"image": argilla_image(store, item.image)},
            "metadata": {"uncertainty": item.uncertainty, "image_id": item.image.id, "call_id": item.call_id, "run": run_name},
            "suggestions": suggestions,
            "responses": {},
            "vectors": {},
            "status": "pending",
            "_server_id": None,
        }


def export_argilla(session: Session, store: ObjectStore, run_name: str, out_dir: Path) -> Path:
    """Write the Argilla dataset folder (for `rg.Dataset.from_disk`) at out_dir, whole or not at all."""
    check_out_dir(out_dir, overwrite=False)
    dataset = {"name": f"{run_name}-review", "guidelines": None, "allow_extra_metadata": False, "status": "draft",
               "distribution": None, "workspace_id": None, "id": None, "inserted_at": None, "updated_at": None,
               "last_activity_at": None}  # fmt: skip
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        (staging / ".argilla").mkdir()
        (staging / ".argilla" / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
        (staging / ".argilla" / "settings.json").write_text(json.dumps(argilla_settings()), encoding="utf-8")
        with (staging / "records.json").open("w", encoding="utf-8") as records:
            # A JSON list written record by record: with a local store every record carries its image.
            records.write("[")
            for number, record in enumerate(argilla_records(session, store, run_name)):
                records.write(("," if number else "") + json.dumps(record))
            records.write("]")
        check_out_dir(out_dir, overwrite=False)  # still true after the write
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
