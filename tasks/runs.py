"""Run lifecycle and run reports: plain functions over the database."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.orm import Session

from core.errors import ConfigurationError
from models.labels import Split
from models.orm import Image, Run, RunCallTotal, RunImage, UAMCStep, VLLMCall
from models.vocab import ImageStatus, RunStatus
from tasks.config import AnnotateConfig


class RunConfigMismatch(ConfigurationError, ValueError):
    """A run resumed with other settings than it was created with."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def config_differences(stored: Run, wanted: dict[str, Any], model: str, kind: str) -> list[str]:
    """The settings in which a new invocation differs from the stored run, as 'field: stored → given'.

    A setting the stored run does not name is newer than the run: the run had its default (which is
    what seke did before the setting existed)."""
    defaults = _flat(AnnotateConfig().model_dump(mode="json"))
    before = {"model": stored.model, "kind": stored.kind, **defaults, **_flat(stored.config.get("annotate") or {})}
    after = {"model": model, "kind": kind, **_flat(wanted)}
    return [
        f"{name}: {before.get(name)!r} → {after.get(name)!r}"
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]


def open_run(
    session: Session,
    name: str,
    *,
    config: AnnotateConfig,
    model: str,
    endpoint: dict[str, Any],
    code_version: str,
    limit: int | None,
    kind: str = "annotate",
    image_ids: list[int] | None = None,
    derived_from: str | None = None,
) -> int:
    """Create the run, or reopen it to resume or to join workers already on it; enqueue its images.

    Safe under races: two invocations creating the same run at once both get
    it (INSERT … ON CONFLICT), and the run row stays locked until this
    transaction commits, so invocations open one after the other. A run's
    AnnotateConfig and model are fixed at creation (resume replays the same
    seeded decisions): a different one is refused, naming the fields, before
    anything is queued. Limits and the endpoint's rate settings may change
    between invocations; a larger --limit extends the run.

    A version derived from another run (`derived_from`, tasks/versions.py) takes its origin's
    images when it is derived, and is never extended: resuming it enqueues nothing new.
    """
    wanted = config.model_dump(mode="json")
    stored_config: dict[str, Any] = {"annotate": wanted, "endpoint": endpoint}
    if derived_from is not None:
        stored_config["derived_from"] = {"run": derived_from}
    session.execute(
        insert(Run)
        .values(name=name, kind=kind, model=model, config=stored_config, code_version=code_version)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    stored = session.scalars(select(Run).where(Run.name == name).with_for_update()).one()
    differing = config_differences(stored, wanted, model, kind)
    if differing:
        raise RunConfigMismatch(
            f"run {name!r} exists with a different configuration ({'; '.join(differing)}); "
            "resume it with the same settings, or choose a new --run name"
        )
    if "derived_from" in stored.config:
        image_ids = []
    if image_ids is None:
        query = select(Image.id).where(Image.split == Split.FEID.value).order_by(Image.id)
        if limit is not None:
            query = query.limit(limit)
        image_ids = list(session.scalars(query))
    if image_ids:
        session.execute(
            insert(RunImage)
            .values([{"run_id": stored.id, "image_id": image_id} for image_id in image_ids])
            .on_conflict_do_nothing(index_elements=["run_id", "image_id"])
        )
    # Images that failed in an earlier pass are retried (their stored calls are replayed).
    session.execute(
        update(RunImage)
        .where(RunImage.run_id == stored.id, RunImage.status == ImageStatus.FAILED)
        .values(status=ImageStatus.PENDING, lease_owner=None, lease_expires_at=None)
    )
    stored.status = RunStatus.RUNNING
    stored.stop_reason = None
    stored.stop_requested = None
    stored.started_at = stored.started_at or dt.datetime.now(dt.UTC)
    return stored.id


def unfinished_images(session: Session, run_id: int) -> list[int]:
    """Images of the run that are not done (pending, half-sampled, or failed earlier), by id."""
    return list(
        session.scalars(
            select(RunImage.image_id)
            .where(RunImage.run_id == run_id, RunImage.status != ImageStatus.DONE)
            .order_by(RunImage.image_id)
        )
    )


def request_stop(session: Session, run_id: int, reason: str) -> None:
    """Ask every worker of the run to stop claiming images; the first reason given is kept."""
    session.execute(
        update(Run).where(Run.id == run_id, Run.stop_requested.is_(None)).values(stop_requested=reason)
    )


def stop_requested(session: Session, run_id: int) -> str | None:
    return session.scalar(select(Run.stop_requested).where(Run.id == run_id))


def image_counts(session: Session, run_id: int) -> dict[str, int]:
    """Images of the run per status."""
    return dict(
        session.execute(
            select(RunImage.status, func.count()).where(RunImage.run_id == run_id).group_by(RunImage.status)
        ).all()
    )


def close_run(session: Session, run_id: int, *, stop_reason: str | None) -> RunStatus:
    """Mark the run completed (every image done), stopped (budget, cancel, interrupt) or failed; returns the status.

    Every worker of the run calls it as it ends; it is idempotent, and the
    last worker's call sees the final counts.
    """
    counts = image_counts(session, run_id)
    unfinished = sum(n for status, n in counts.items() if status != ImageStatus.DONE)
    if not unfinished:
        status, stop_reason = RunStatus.COMPLETED, None
    elif stop_reason:
        status = RunStatus.STOPPED
    else:
        status = RunStatus.FAILED
        stop_reason = f"{counts.get(ImageStatus.FAILED, 0)} images failed; re-run to retry them"
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=status, stop_reason=stop_reason, finished_at=dt.datetime.now(dt.UTC))
    )
    return status


class RunReport(BaseModel):
    """What a user checks before using a run's data: the annotate flow's result and `seke runs show`."""

    run_id: int
    name: str
    status: str
    model: str
    simulated: bool  # the endpoint was the offline simulator: a rehearsal, not a model's quality
    stop_reason: str | None
    images: dict[str, int] = Field(default_factory=dict)
    calls: int = 0
    invalid_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # of tokens_in, served from the provider's prompt cache
    #: Shared prefill: calls answered as a later choice of one request for n (None: shared prefill off).
    shared_choices: int | None = None
    shared_prefill_refused: bool = False  # the endpoint refused n > 1; the run went on with one call per sample
    cost_usd: float = 0.0
    samples_histogram: dict[int, int] = Field(default_factory=dict)
    mean_uncertainty: dict[str, float] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict)
    first_failure: str | None = None  # one failed image's whole reason, for the message a user acts on
    #: A version derived with --from: its origin, the images whose results it kept, those annotated again.
    derived_from: str | None = None
    kept_from_origin: int = 0
    #: Why every image was annotated again: the settings in which the version differs from its origin.
    differs_from_origin: list[str] = Field(default_factory=list)
    reannotated: int = 0


def simulated(run: Run) -> bool:
    """Whether the run's endpoint was the offline simulator, as decided where the endpoint was chosen."""
    return bool(run.config.get("endpoint", {}).get("simulated", False))


def run_report(session: Session, run_id: int) -> RunReport:
    run = session.get(Run, run_id)
    if run is None:
        raise ValueError(f"no run with id {run_id}")
    report = RunReport(
        run_id=run.id, name=run.name, status=run.status, model=run.model, simulated=simulated(run), stop_reason=run.stop_reason
    )
    report.images = image_counts(session, run_id)
    origin = run.config.get("derived_from") or {}
    report.derived_from = origin.get("run")
    report.kept_from_origin, report.reannotated = origin.get("kept", 0), origin.get("reannotated", 0)
    report.differs_from_origin = origin.get("config_differences", [])
    # From the summary kept by trigger (migration 0005): a few rows, not a scan of the run's calls.
    calls, invalid, tokens_in, tokens_out, tokens_cached, cost = session.execute(
        select(
            func.coalesce(func.sum(RunCallTotal.calls), 0),
            func.coalesce(func.sum(RunCallTotal.invalid), 0),
            func.coalesce(func.sum(RunCallTotal.tokens_in), 0),
            func.coalesce(func.sum(RunCallTotal.tokens_out), 0),
            func.coalesce(func.sum(RunCallTotal.tokens_cached), 0),
            func.coalesce(func.sum(RunCallTotal.cost_usd), 0),
        ).where(RunCallTotal.run_id == run_id)
    ).one()
    report.calls, report.invalid_calls = int(calls), int(invalid)
    report.tokens_in, report.tokens_out, report.cost_usd = int(tokens_in), int(tokens_out), float(cost)
    report.tokens_cached = int(tokens_cached)
    if run.config.get("annotate", {}).get("shared_prefill"):
        report.shared_choices, report.shared_prefill_refused = session.execute(
            select(
                func.count().filter(VLLMCall.request_params["choice_index"].as_integer() > 0),
                func.bool_or(VLLMCall.request_params.has_key("shared_prefill_refused")),
            ).where(VLLMCall.run_id == run_id)
        ).one()
        report.shared_prefill_refused = bool(report.shared_prefill_refused)
    report.samples_histogram = dict(
        sorted(
            session.execute(
                select(RunImage.samples_used, func.count())
                .where(RunImage.run_id == run_id, RunImage.status == ImageStatus.DONE)
                .group_by(RunImage.samples_used)
            ).all()
        )
    )
    # Each image's last UAMC step carries the uncertainty its summary saw.
    last = (
        select(UAMCStep.uncertainties)
        .where(UAMCStep.run_id == run_id)
        .ext(distinct_on(UAMCStep.image_id))
        .order_by(UAMCStep.image_id, UAMCStep.step.desc())
    )
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for uncertainties in session.scalars(last):
        for task, value in uncertainties.items():
            sums[task] += value
            counts[task] += 1
    report.mean_uncertainty = {task: sums[task] / counts[task] for task in sorted(counts)}
    reasons = [
        reason
        for reason in session.scalars(
            select(RunImage.failure_reason).where(RunImage.run_id == run_id, RunImage.status == ImageStatus.FAILED)
        )
        if reason
    ]
    # Group by the reason's head: the part before the first ':' names the failing stage / cause.
    report.failures = dict(Counter(reason.split(":")[0] for reason in reasons).most_common())
    report.first_failure = reasons[0] if reasons else None
    return report


def find_run(session: Session, name: str) -> Run:
    run = session.scalars(select(Run).where(Run.name == name)).one_or_none()
    if run is None:
        known = ", ".join(session.scalars(select(Run.name).order_by(Run.id.desc()).limit(10))) or "none yet"
        raise ValueError(f"no run named {name!r} (recent runs: {known})")
    return run


class RunRow(BaseModel):
    """One line of `seke runs ls`."""

    name: str
    kind: str
    status: str
    model: str
    created_at: dt.datetime
    stop_reason: str | None


def list_runs(session: Session) -> list[RunRow]:
    """Every annotation run, newest first."""
    return [
        RunRow(
            name=run.name, kind=run.kind, status=run.status, model=run.model,
            created_at=run.created_at, stop_reason=run.stop_reason,
        )  # fmt: skip
        for run in session.scalars(select(Run).order_by(Run.id.desc()))
    ]
