"""Run versions: `seke annotate --run feid-v2 --from feid-v1` derives v2 from a completed v1.

An image's output is decided by the run's configuration, its model and the image's known
human labels (the prompt embeds them; the fields they cover are not generated). So v2 keeps
v1's results for every image whose inputs are unchanged, and annotates again only the rest:

- with the same configuration and model as v1, an image is annotated again when its known
  labels differ from those v1 embedded (a review added, corrected or accepted a value: review
  labels are human labels, tasks/review.py), or when a person rejected one of v1's values;
- with another configuration or model, every image is annotated again.

Kept images get v1's rows copied into v2 (status, annotations, instruction) with their
provenance still pointing at v1's calls; v1's calls and UAMC steps stay v1's. The derivation
happens once, in the transaction that creates v2, and is recorded in v2's config
(`derived_from`: origin, kept, reannotated). Resuming v2 is resuming any run.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, insert, literal_column, select
from sqlalchemy.orm import Session

from core.db import in_ids
from models.orm import Annotation, Instruction, Review, Run, RunImage
from models.vocab import ImageStatus, RunStatus
from tasks.config import AnnotateConfig
from tasks.plan import known_labels
from tasks.runs import config_differences, find_run


class VersionError(ValueError):
    """A --from that cannot be honoured; the message says what to do instead."""


def check_origin(session: Session, run_name: str, from_run: str | None) -> str | None:
    """The run `run_name` derives from: `from_run`, checked, or the origin a stored version records.

    Refused: an unknown origin, one that is not completed, the run itself, and a run that already
    exists with another origin (or none)."""
    existing = session.scalars(select(Run).where(Run.name == run_name)).one_or_none()
    recorded = (existing.config.get("derived_from") or {}).get("run") if existing else None
    if from_run is None:
        return recorded
    if from_run == run_name:
        raise VersionError(f"--from {from_run!r} names the run itself: choose a new --run name for the next version")
    try:
        origin = find_run(session, from_run)
    except ValueError as exc:
        raise VersionError(f"--from: {exc}") from None
    if origin.status != RunStatus.COMPLETED:
        raise VersionError(
            f"--from {from_run!r}: that run is {origin.status}, not completed; "
            f"finish it first (`seke annotate --run {from_run}`)"
        )
    if existing is not None and recorded != from_run:
        was = f"derived from {recorded!r}" if recorded else "not derived from another run"
        raise VersionError(
            f"run {run_name!r} already exists, {was}; resume it without --from, or choose a new --run name"
        )
    return from_run


@dataclass(frozen=True)
class Derivation:
    origin: str
    kept: int
    reannotated: int


def changed_images(session: Session, origin: Run, config: AnnotateConfig) -> set[int]:
    """Images of `origin` whose known labels now differ from those it embedded, or with a rejected value."""
    embedded: dict[int, dict[str, object]] = {}
    for annotation in session.scalars(
        select(Annotation).where(Annotation.run_id == origin.id, Annotation.provenance == "human")
    ):
        embedded.setdefault(annotation.image_id, {})[annotation.field] = annotation.value
    image_ids = list(session.scalars(select(RunImage.image_id).where(RunImage.run_id == origin.id)))
    known = known_labels(session, image_ids, config)
    rejected = set(
        session.scalars(select(Review.image_id).where(Review.run_id == origin.id, Review.decision == "reject"))
    )
    return {i for i in image_ids if embedded.get(i, {}) != known.get(i, {})} | rejected


def derive_run(session: Session, run_id: int) -> Derivation | None:
    """Fill a new version from its origin (see the module docstring); None if it was derived already.

    Runs in the transaction of tasks.runs.open_run, which holds the new run's row locked: two
    invocations creating the version at once derive it once."""
    run = session.get(Run, run_id, populate_existing=True)
    origin_name = (run.config.get("derived_from") or {}).get("run") if run else None
    if run is None or origin_name is None:
        raise ValueError(f"run {run_id} is not a derived version")
    if session.scalar(select(exists().where(RunImage.run_id == run_id))):
        return None
    origin = find_run(session, origin_name)
    config = AnnotateConfig.model_validate(run.config["annotate"])
    image_ids = list(
        session.scalars(select(RunImage.image_id).where(RunImage.run_id == origin.id).order_by(RunImage.image_id))
    )
    differences = config_differences(origin, run.config["annotate"], run.model, run.kind)
    again = set(image_ids) if differences else changed_images(session, origin, config)
    kept = [i for i in image_ids if i not in again]
    if kept:
        _copy_results(session, origin.id, run_id, kept)
    fresh = sorted(again)
    if fresh:
        session.execute(insert(RunImage), [{"run_id": run_id, "image_id": i} for i in fresh])
    run.config = {
        **run.config,
        "derived_from": {
            "run": origin.name, "run_id": origin.id, "kept": len(kept), "reannotated": len(fresh),
            "config_differences": differences,
        },  # fmt: skip
    }
    session.flush()
    return Derivation(origin.name, len(kept), len(fresh))


def _copy_results(session: Session, origin_id: int, run_id: int, image_ids: list[int]) -> None:
    """v1's rows of the kept images, as v2's: call ids still name v1's calls (the provenance of the values)."""
    new_run = literal_column(str(int(run_id)))

    def copy(table, columns: list[str], where) -> None:  # noqa: ANN001
        source = select(new_run, *(table.c[c] for c in columns)).where(table.c.run_id == origin_id, where)
        session.execute(insert(table).from_select(["run_id", *columns], source))

    runs_images = RunImage.__table__
    copy(
        runs_images,
        ["image_id", "status", "samples_used", "consistency_flags"],
        in_ids(runs_images.c.image_id, image_ids) & (runs_images.c.status == ImageStatus.DONE.value),
    )
    annotations = Annotation.__table__
    copy(
        annotations,
        [c.name for c in annotations.columns if c.name not in ("id", "run_id", "created_at")],
        in_ids(annotations.c.image_id, image_ids),
    )
    instructions = Instruction.__table__
    copy(
        instructions,
        [c.name for c in instructions.columns if c.name not in ("id", "run_id", "created_at")],
        in_ids(instructions.c.image_id, image_ids),
    )
