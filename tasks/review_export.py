"""Label Studio export of a run for human review: a labeling config and tasks with the model's predictions.

Each task's one prediction carries the run's values; its `score` is 1 - the image's largest field
uncertainty, because Label Studio reads score as confidence and sorts lowest first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.store import LocalStore, ObjectStore, S3Store
from models.labels import ACTION_UNITS, EXPRESSIONS
from models.orm import Annotation, Image, Run
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


def label_studio_tasks(session: Session, store: ObjectStore, run_name: str) -> list[dict[str, Any]]:
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
    version = f"{run_name}/{SUMMARY_TEMPLATE[0]}-v{SUMMARY_TEMPLATE[1]}"
    tasks = []
    for image_id, fields in by_image.items():
        result: list[dict[str, Any]] = []
        aus = [a.field for a in fields if a.field in ACTION_UNITS and a.value_bool]
        for a in fields:
            if a.field == "expression":
                result.append(_result("expression", "choices", {"choices": [a.value_text]}))
            elif a.field in ("valence", "arousal"):
                result.append(_result(a.field, "number", {"number": a.value_number}))
        if any(a.field in ACTION_UNITS for a in fields):
            result.append(_result("aus", "choices", {"choices": aus}))
        uncertainty = max((a.uncertainty for a in fields if a.uncertainty is not None), default=0.0)
        calls = {a.field: a.summary_call_id for a in fields}
        tasks.append(
            {
                "data": {
                    "image": image_url(store, images[image_id].object_key),
                    "image_id": image_id,
                    "run": run_name,
                    "call_id": next(iter(calls.values())),
                    "uncertainty": uncertainty,
                },
                "predictions": [{"model_version": version, "score": 1.0 - uncertainty, "result": result}],
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
