"""The annotate flow: SEKE over every FEID image of a run, sharded, resumable, budgeted.

Shape (measured on 2 cores, see bench/README.md): the parent flow runs async
sub-flows of `shard_size` images one after another, each on an event loop of
its own; in a sub-flow `concurrency` workers claim images and run each as an
async task run (`annotate-image`), so every image is its own task run in the
UI while all calls share one event loop, one HTTP client and one database
writer (tasks/annotate.py). One flow holding every task's state grows by
~3-9 KB per task and the ephemeral API drops task runs past ~10k in one flow;
shards keep memory flat and the UI's counts true.

Retries: the VLLM client is the one retry layer (transient HTTP failures, with
backoff and Retry-After). Prefect task retries stay at 0 so a failure is
never paid for twice; an image that still fails is marked failed with its
reason and is picked up again when the run is resumed.

Our PostgreSQL is the system of record: re-running a run resumes it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict
from functools import partial

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run
from prefect.artifacts import (
    aupdate_progress_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import concurrency as global_slot

from sqlalchemy import func, select

from models.orm import RunImage
from core.config import get_settings
from core.db import database_url, get_engine, session_factory
from core.store import open_store
from core.version import code_version
from tasks.annotate import AnnotateConfig, AnnotateSession, Annotator, Budget, ImageOutcome, WriteBuffer, claim_from, drive, spent
from tasks.runs import RunReport, close_run, open_run, run_lock, run_report, unfinished_images
from tasks.vllm import VLLMConfig


class ProgressReporter:
    """Updates the run's progress artifact at most every `interval_s`."""

    def __init__(self, artifact_id, total: int, done: int, interval_s: float = 2.0) -> None:
        self.artifact_id = artifact_id
        self.total = max(total, 1)
        self.done = done
        self.failed = 0
        self.interval_s = interval_s
        self._last = 0.0
        self._lock = threading.Lock()

    async def image_finished(self, outcome: ImageOutcome, budget: Budget) -> None:
        with self._lock:
            self.done += outcome.status == "done"
            self.failed += outcome.status == "failed"
            now = time.monotonic()
            if now - self._last < self.interval_s:
                return
            self._last = now
        await aupdate_progress_artifact(self.artifact_id, progress=self._percent(), description=self._description(budget))

    def flush(self, budget: Budget) -> None:
        update_progress_artifact(self.artifact_id, progress=self._percent(), description=self._description(budget))

    def _percent(self) -> float:
        return 100.0 * self.done / self.total

    def _description(self, budget: Budget) -> str:
        return f"{self.done}/{self.total} images done, {self.failed} failed; {budget.calls} calls, ${budget.cost_usd:.4f}"


def _task_run_name() -> str:
    ids = task_run.parameters["image_ids"]
    return f"image-{ids[0]}" if len(ids) == 1 else f"images-{ids[0]}-to-{ids[-1]}"


async def _annotate_one(
    image_id: int, session: AnnotateSession, progress: ProgressReporter, global_limit: str | None
) -> ImageOutcome:
    reason = session.budget.stop_reason()
    if reason:
        return ImageOutcome(image_id, "skipped", reason=reason)
    if global_limit:
        # Coarse cross-process cap (one slot per image, not per call: each slot costs API round trips,
        # and Prefect's server-side limits were measured to admit well under their caps).
        async with global_slot(global_limit, occupy=1):
            outcome = await session.annotate(image_id)
    else:
        outcome = await session.annotate(image_id)
    if outcome.status == "failed":
        get_run_logger().warning("image %s failed: %s", image_id, outcome.reason)
    await progress.image_finished(outcome, session.budget)
    return outcome


@task(name="annotate-image", task_run_name=_task_run_name, cache_policy=NO_CACHE, retries=0)
async def annotate_images(
    image_ids: list[int], session: AnnotateSession, progress: ProgressReporter, global_limit: str | None = None
) -> list[ImageOutcome]:
    """One image per task run by default (the UI shows each image); several, one after another, to
    spend Prefect's per-task cost on more than one image."""
    return [await _annotate_one(image_id, session, progress, global_limit) for image_id in image_ids]


@flow(name="annotate-shard", flow_run_name="{run_name}-shard-{shard}", validate_parameters=False)
async def annotate_shard(
    run_name: str,
    shard: int,
    image_ids: list[int],
    annotator: Annotator,
    progress: ProgressReporter,
    global_limit: str | None = None,
    images_per_task: int = 1,
    concurrency: int = 32,
) -> dict[str, int]:
    async with annotator.open() as session:
        work = partial(annotate_images, session=session, progress=progress, global_limit=global_limit)
        outcomes = await drive(claim_from(image_ids, images_per_task), work, concurrency)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _publish_report(report: RunReport, run_name: str) -> None:
    """End-of-run artifacts: the numbers a user checks before using the data."""
    key = run_name.lower().replace("_", "-")
    simulated = " (simulator: rehearsal numbers, not a real model's quality)" if "simulator" in report.model else ""
    create_table_artifact(
        [{"samples": k, "images": v} for k, v in report.samples_histogram.items()],
        key=f"{key}-samples-per-image",
        description=f"UAMC samples per image{simulated}",
    )
    create_table_artifact(
        [{"task": k, "mean normalised uncertainty": round(v, 4)} for k, v in report.mean_uncertainty.items()],
        key=f"{key}-uncertainty",
        description=f"Mean uncertainty per task at the last UAMC step{simulated}",
    )
    create_table_artifact(
        [{"reason": k, "images": v} for k, v in report.failures.items()] or [{"reason": "none", "images": 0}],
        key=f"{key}-failures",
        description="Failed images by reason",
    )
    create_markdown_artifact(
        f"# Run {report.name}: {report.status}\n\n"
        f"- model: {report.model}{simulated}\n"
        f"- images: {dict(report.images)}\n"
        f"- calls: {report.calls} ({report.invalid_calls} invalid answers)\n"
        f"- tokens: {report.tokens_in} in, {report.tokens_out} out\n"
        f"- cost: ${report.cost_usd:.4f}\n"
        + (f"- stopped: {report.stop_reason}\n" if report.stop_reason else ""),
        key=f"{key}-summary",
        description="Run summary and cost",
    )


@flow(name="annotate", flow_run_name="annotate-{run_name}")
def annotate_flow(
    run_name: str,
    config: AnnotateConfig | None = None,
    limit: int | None = None,
    max_calls: int | None = None,
    max_cost_usd: float | None = None,
    concurrency: int | None = None,
    shard_size: int = 1000,
    images_per_task: int = 1,
    base_url: str | None = None,
    model: str | None = None,
    image_ids: list[int] | None = None,
    kind: str = "annotate",
) -> dict:
    """Annotate (or resume) run `run_name`; returns the run report as a dict.

    The endpoint comes from settings (SEKE_VLLM_*); `base_url`/`model` override
    it, e.g. with a simulator started for the demo. Secrets never pass through
    flow parameters.
    """
    logger = get_run_logger()
    settings = get_settings()
    config = config or AnnotateConfig()
    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model)

    with sessions.begin() as session:
        run_id = open_run(
            session,
            run_name,
            config=config,
            model=vllm_config.model,
            endpoint=vllm_config.public_snapshot(),
            code_version=code_version(),
            limit=limit,
            kind=kind,
            image_ids=image_ids,
        )
    with run_lock(get_engine(settings), run_id, run_name):
        with sessions() as session:
            todo = unfinished_images(session, run_id)
            total = session.scalar(select(func.count()).where(RunImage.run_id == run_id))
            budget = Budget(*spent(session, run_id), max_calls, max_cost_usd)
        logger.info("run %s (id %s): %s of %s images to annotate", run_name, run_id, len(todo), total)
        progress = ProgressReporter(
            create_progress_artifact(0.0, description=f"run {run_name}: starting"), total, total - len(todo)
        )
        stop_reason = None
        annotator = Annotator(
            run_id=run_id,
            run_name=run_name,
            config=config,
            database_url=database_url(settings),
            store=open_store(settings),
            vllm=vllm_config,
            budget=budget,
            buffer=WriteBuffer(settings.write_buffer_rows, settings.write_buffer_ms),
        )
        for shard, start in enumerate(range(0, len(todo), shard_size)):
            stop_reason = budget.stop_reason()
            if stop_reason:
                break
            # Each sub-flow runs on an event loop of its own; its client, pool and writer live and end there.
            asyncio.run(
                annotate_shard(
                    run_name,
                    shard,
                    todo[start : start + shard_size],
                    annotator,
                    progress,
                    settings.prefect_concurrency_limit,
                    images_per_task,
                    concurrency or settings.concurrency,
                )
            )
        stop_reason = stop_reason or budget.stop_reason()
        progress.flush(budget)
        with sessions.begin() as session:
            status = close_run(session, run_id, stop_reason=stop_reason)
            report = run_report(session, run_id)
    _publish_report(report, run_name)
    logger.info("run %s %s: %s", run_name, status, dict(report.images))
    return {**asdict(report), "run_id": run_id}
