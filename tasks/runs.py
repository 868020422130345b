"""Run lifecycle and run reports: plain functions over the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.orm import Session

from models.labels import Split
from models.orm import Image, Run, RunImage, UAMCStep, VLLMCall
from tasks.config import AnnotateConfig


class RunConfigMismatch(ValueError):
    pass


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
) -> int:
    """Create the run, or reopen it for resume; enqueue its images. Returns the run id.

    A run's AnnotateConfig is fixed at creation: resume replays the same seeded
    decisions, so reopening with a different config is refused. Limits and the
    endpoint's rate settings may change between attempts.
    """
    stored = session.scalars(select(Run).where(Run.name == name)).one_or_none()
    wanted = config.model_dump(mode="json")
    if stored is None:
        stored = Run(
            name=name,
            kind=kind,
            model=model,
            config={"annotate": wanted, "endpoint": endpoint},
            code_version=code_version,
        )
        session.add(stored)
        session.flush()
    elif stored.config.get("annotate") != wanted or stored.model != model:
        raise RunConfigMismatch(
            f"run {name!r} exists with a different configuration or model ({stored.model}); "
            "resume it with the same settings, or choose a new --run name"
        )
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
    stored.status = "running"
    stored.stop_reason = None
    stored.started_at = stored.started_at or dt.datetime.now(dt.UTC)
    return stored.id


def unfinished_images(session: Session, run_id: int) -> list[int]:
    """Images of the run that are not done (pending, half-sampled, or failed earlier), by id."""
    return list(
        session.scalars(
            select(RunImage.image_id)
            .where(RunImage.run_id == run_id, RunImage.status != "done")
            .order_by(RunImage.image_id)
        )
    )


@contextmanager
def run_lock(engine: Engine, run_id: int, run_name: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock on the run: one process annotates a run at a time.

    Session-level advisory locks outlive transactions and survive the connection
    going back to the pool, so the lock is released explicitly (or by the server
    when the process dies and its connection drops).
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": run_id}):
            raise RuntimeError(f"run {run_name!r} is being annotated by another process; wait for it or stop it first")
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": run_id})


def close_run(session: Session, run_id: int, *, stop_reason: str | None) -> str:
    """Mark the run completed, stopped (budget, abort) or failed (images failed); returns the status."""
    counts = dict(
        session.execute(
            select(RunImage.status, func.count()).where(RunImage.run_id == run_id).group_by(RunImage.status)
        ).all()
    )
    unfinished = sum(n for status, n in counts.items() if status != "done")
    if stop_reason:
        status = "stopped"
    elif unfinished:
        status = "failed"
        stop_reason = f"{counts.get('failed', 0)} images failed; re-run to retry them"
    else:
        status = "completed"
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
    cost_usd: float = 0.0
    samples_histogram: dict[int, int] = Field(default_factory=dict)
    mean_uncertainty: dict[str, float] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict)


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
    report.images = dict(
        session.execute(select(RunImage.status, func.count()).where(RunImage.run_id == run_id).group_by(RunImage.status)).all()
    )
    calls, invalid, tokens_in, tokens_out, cost = session.execute(
        select(
            func.count(VLLMCall.id),
            func.count(VLLMCall.id).filter(VLLMCall.valid.is_(False)),
            func.coalesce(func.sum(VLLMCall.tokens_in), 0),
            func.coalesce(func.sum(VLLMCall.tokens_out), 0),
            func.coalesce(func.sum(VLLMCall.cost_usd), 0),
        ).where(VLLMCall.run_id == run_id)
    ).one()
    report.calls, report.invalid_calls = int(calls), int(invalid)
    report.tokens_in, report.tokens_out, report.cost_usd = int(tokens_in), int(tokens_out), float(cost)
    report.samples_histogram = dict(
        sorted(
            session.execute(
                select(RunImage.samples_used, func.count())
                .where(RunImage.run_id == run_id, RunImage.status == "done")
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
    reasons = session.scalars(
        select(RunImage.failure_reason).where(RunImage.run_id == run_id, RunImage.status == "failed")
    )
    # Group by the reason's head: the part before the first ':' names the failing stage / cause.
    report.failures = dict(Counter(reason.split(":")[0] for reason in reasons if reason).most_common())
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
