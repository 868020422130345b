"""Audit of SEKE's generated descriptions against human labels (SEKE paper §4.5.2, Figure 5; Table 4's ablations).

Protocol (§4.5.2): take images with human labels for all three descriptions,
mask one description, let SEKE regenerate it from the other two, and compare
the regenerated labels with the masked human ones. Here this runs once per
Table 4 setting (Prior on/off × SV-UAMC on/off), so the four rows show what
each part does to the *annotations*, where the paper's Table 4 shows what it
does to a model fine-tuned on them.

"All three descriptions": expression + valence and arousal + at least one AU.
Aff-Wild2 labels 12 of the schema's 17 AUs, so requiring all 17 would leave
no Aff-Wild2 image; AUs are compared only where a human label exists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from models.labels import ACTION_UNITS, FaceLabels, Task, fields_of
from models.orm import Annotation, HumanLabel, Image, RunImage
from models.vocab import ImageStatus
from tasks.benchmark.metrics import score
from tasks.benchmark.paper import TABLE4

LabelRow = tuple[int, str, str | float | bool]  # (image_id, field, value)


class Ablation(NamedTuple):
    use_prior: bool
    uamc_enabled: bool

    @property
    def slug(self) -> str:
        """The part of an audit run's name that says which setting it ran with."""
        return f"{'prior' if self.use_prior else 'noprior'}-{'uamc' if self.uamc_enabled else 'nouamc'}"


#: The four settings in the order of the paper's Table 4 rows.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation(use_prior=False, uamc_enabled=False),
    Ablation(use_prior=True, uamc_enabled=False),
    Ablation(use_prior=False, uamc_enabled=True),
    Ablation(use_prior=True, uamc_enabled=True),
)


def _has(*fields: str) -> ColumnElement[bool]:
    """HAVING clause: the image has a human label of at least one of `fields`."""
    return func.count().filter(HumanLabel.field.in_(fields)) > 0


def complete_images(session: Session, *, limit: int | None, split: str | None = None) -> list[int]:
    """Ids of images with a human expression, valence, arousal and at least one AU label, by id."""
    query = (
        select(HumanLabel.image_id)
        .group_by(HumanLabel.image_id)
        .having(_has("expression"), _has("valence"), _has("arousal"), _has(*ACTION_UNITS))
        .order_by(HumanLabel.image_id)
    )
    if split is not None:
        query = query.join(Image, Image.id == HumanLabel.image_id).where(Image.split == split)
    return list(session.scalars(query.limit(limit)))


def _labels_by_image(rows: Iterable[LabelRow], fields: set[str]) -> dict[int, FaceLabels]:
    values: dict[int, dict[str, object]] = defaultdict(dict)
    for image_id, field, value in rows:
        if field in fields:
            values[image_id][field] = value
    return {image_id: FaceLabels.from_field_values(v) for image_id, v in values.items()}


def compare(generated: Iterable[LabelRow], human: Iterable[LabelRow], task: Task, *, failed: int = 0) -> dict[str, Any]:
    """Agreement of regenerated labels of `task` with the human ones, scored as FEAB is (metrics.score).

    Scored images: those with a human label of the task. An image without a
    generated value counts as metrics.py counts a missing prediction (wrong for
    expression and AUs, left out of MAE). `failed` (images whose regeneration
    failed or was left unfinished, so they have no generated rows) is
    reported beside, not scored: the caller passes only finished images' rows.
    """
    fields = set(fields_of(task))
    references = _labels_by_image(human, fields)
    predictions = _labels_by_image(generated, fields)
    ids = sorted(references)
    scores = score([predictions.get(i) for i in ids], [references[i] for i in ids])
    result: dict[str, Any] = {"task": task.value, "images": len(ids), "failed": failed}
    if task is Task.EXPRESSION:
        result["expression_accuracy"] = scores.expression_accuracy
        result["missing"] = scores.coverage["expression"].missing
    elif task is Task.VA:
        result["valence_mae"] = scores.valence_mae
        result["arousal_mae"] = scores.arousal_mae
        result["missing"] = scores.coverage["valence"].missing + scores.coverage["arousal"].missing
    else:
        result["au_f1_mean"] = scores.au_f1_mean
        result["au_f1"] = scores.au_f1
        result["missing"] = scores.coverage["au"].missing
    return result


def agreement(session: Session, run_id: int, task: Task) -> dict[str, Any]:
    """`compare` for an audit run that masked `task`: its generated labels vs. the same images' human labels.

    Images the run did not finish (failed, or stopped by a budget) are counted in "failed", not scored.
    """
    fields = fields_of(task)
    done = select(RunImage.image_id).where(RunImage.run_id == run_id, RunImage.status == ImageStatus.DONE)
    failed = session.scalar(
        select(func.count()).select_from(RunImage).where(RunImage.run_id == run_id, RunImage.status != ImageStatus.DONE)
    )
    generated = session.execute(
        select(Annotation.image_id, Annotation.field, Annotation.value_text, Annotation.value_number, Annotation.value_bool)
        .where(Annotation.run_id == run_id, Annotation.provenance == "generated", Annotation.field.in_(fields))
    ).all()
    human = session.execute(
        select(HumanLabel.image_id, HumanLabel.field, HumanLabel.value_text, HumanLabel.value_number, HumanLabel.value_bool)
        .where(HumanLabel.image_id.in_(done), HumanLabel.field.in_(fields))
        .order_by(*HumanLabel.preferred_last())  # last wins: a review's label, else the first-importing source's
    ).all()
    return compare(_values(generated), _values(human), task, failed=int(failed or 0))


def _values(rows: Iterable[Sequence[Any]]) -> list[LabelRow]:
    """(image, field, text, number, bool) rows -> (image, field, value): each label lives in one typed column."""
    return [(image_id, field, next(v for v in (text, number, flag) if v is not None)) for image_id, field, text, number, flag in rows]


@dataclass(frozen=True)
class AblationResult:
    """One Table 4-shaped row of an audit: each metric from the run that masked its task."""

    use_prior: bool
    uamc_enabled: bool
    expression_accuracy: float | None
    au_f1_mean: float | None
    valence_mae: float | None
    arousal_mae: float | None
    images: int
    failed: dict[str, int]  # task -> images whose regeneration failed in that task's run


def ablation_result(ablation: Ablation, by_task: dict[Task, dict[str, Any]]) -> AblationResult:
    """Combine the three masked runs of one setting: EXP from mask-expression, AU from mask-au, VA from mask-va."""
    return AblationResult(
        use_prior=ablation.use_prior,
        uamc_enabled=ablation.uamc_enabled,
        expression_accuracy=by_task[Task.EXPRESSION]["expression_accuracy"],
        au_f1_mean=by_task[Task.AU]["au_f1_mean"],
        valence_mae=by_task[Task.VA]["valence_mae"],
        arousal_mae=by_task[Task.VA]["arousal_mae"],
        images=max(result["images"] for result in by_task.values()),
        failed={task.value: result["failed"] for task, result in by_task.items()},
    )


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _mae(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def ablation_table(rows: Sequence[AblationResult], *, model: str, simulated: bool) -> str:
    """Markdown in Table 4's layout: our audit rows, then the paper's Table 4 rows, with what each means."""
    header = "| Numbers | Prior | SV-UAMC | EXP Acc (%) | AU F1 (%) | Valence MAE | Arousal MAE |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = (
            f"audit ({model})", _mark(row.use_prior), _mark(row.uamc_enabled), _percent(row.expression_accuracy),
            _percent(row.au_f1_mean), _mae(row.valence_mae), _mae(row.arousal_mae),
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for paper in TABLE4:
        cells = (
            "paper Table 4", _mark(paper.prior), _mark(paper.sv_uamc), f"{paper.expression_accuracy:.1f}",
            f"{paper.au_f1_mean:.1f}", f"{paper.valence_mae:.3f}", f"{paper.arousal_mae:.3f}",
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    images = max((row.images for row in rows), default=0)
    failed = {
        Ablation(row.use_prior, row.uamc_enabled).slug: row.failed for row in rows if any(row.failed.values())
    }
    lines += [
        "",
        f"Audit rows: {images} images with human expression, valence/arousal and AU labels; in each run one "
        "description is masked and regenerated from the other two (SEKE paper §4.5.2), then compared with the "
        "masked human labels. EXP Acc comes from the expression-masked run, AU F1 from the AU-masked run "
        "(positive-class F1, mean over AUs with a human label and at least one positive), VA MAE from the "
        "VA-masked run.",
        f"Failed regenerations (not scored): {failed}." if failed else "Failed regenerations: none.",
        "Paper rows are the SEKE paper's published Table 4: LLaVA-OneVision fine-tuned on data generated each "
        "way, scored on FEAB. That is a different quantity (a fine-tuned model's test scores, not annotation "
        "agreement): compare the direction of the differences, not the values.",
    ]
    if simulated:
        lines.append(
            f"Model {model} is the offline simulator: these audit numbers are a rehearsal of the procedure, "
            "not a real model's quality."
        )
    return "\n".join(lines)
