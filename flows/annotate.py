"""The annotate flow: SEKE over every FEID image of a run, sharded, resumable, budgeted.

Shape (measured on 2 cores, see docs/design.md "Scale facts"): the parent flow runs
sub-flows of `shard_size` images one after another; each `.map`s its shard on
a ThreadPoolTaskRunner and `.wait()`s before reading results. One flow holding
every task's state grows by ~3-9 KB per task and the ephemeral API drops task
runs past ~10k in one flow; shards keep memory flat and the UI's counts true.

Retries: the VLLM client is the one retry layer (transient HTTP failures, with
backoff and Retry-After). Prefect task retries stay at 0 so a failure is
never paid for twice; an image that still fails is marked failed with its
reason and is picked up again when the run is resumed.

Our PostgreSQL is the system of record: re-running a run resumes it.
"""

from __future__ import annotations

import threading
import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.runtime import task_run
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.task_runners import ThreadPoolTaskRunner

from sqlalchemy import func, select

from models.orm import RunImage
from core.config import get_settings
from core.db import get_engine, session_factory
from core.store import open_store
from core.version import code_version
from tasks.annotate import Annotator, Budget, ImageOutcome, spent
from tasks.config import AnnotateConfig
from tasks.runs import RunReport, close_run, open_run, run_lock, run_report, unfinished_images
from tasks.vllm import VLLMClient, VLLMConfig


class ProgressReporter:
    """Updates the run's progress artifact at most every `interval_s`, from any thread."""

    def __init__(self, artifact_id, total: int, done: int, interval_s: float = 2.0) -> None:
        self.artifact_id = artifact_id
        self.total = max(total, 1)
        self.done = done
        self.failed = 0
        self.interval_s = interval_s
        self._last = 0.0
        self._lock = threading.Lock()

    def image_finished(self, outcome: ImageOutcome, budget: Budget) -> None:
        with self._lock:
            self.done += outcome.status == "done"
            self.failed += outcome.status == "failed"
            now = time.monotonic()
            if now - self._last < self.interval_s:
                return
            self._last = now
        self.flush(budget)

    def flush(self, budget: Budget) -> None:
        update_progress_artifact(
            self.artifact_id,
            progress=100.0 * self.done / self.total,
            description=(
                f"{self.done}/{self.total} images done, {self.failed} failed; "
                f"{budget.calls} calls, ${budget.cost_usd:.4f}"
            ),
        )


def _task_run_name() -> str:
    ids = task_run.parameters["image_ids"]
    return f"image-{ids[0]}" if len(ids) == 1 else f"images-{ids[0]}-to-{ids[-1]}"


def _annotate_one(image_id: int, annotator: Annotator, progress: ProgressReporter, global_limit: str | None) -> ImageOutcome:
    reason = annotator.budget.stop_reason()
    if reason:
        return ImageOutcome(image_id, "skipped", reason=reason)
    if global_limit:
        # Coarse cross-process cap (one slot per image, not per call: each slot costs API round trips,
        # and Prefect's server-side limits were measured to admit well under their caps).
        with concurrency(global_limit, occupy=1):
            outcome = annotator.annotate(image_id)
    else:
        outcome = annotator.annotate(image_id)
    if outcome.status == "failed":
        get_run_logger().warning("image %s failed: %s", image_id, outcome.reason)
    progress.image_finished(outcome, annotator.budget)
    return outcome


@task(name="annotate-image", task_run_name=_task_run_name, cache_policy=NO_CACHE, retries=0)
def annotate_images(
    image_ids: list[int], annotator: Annotator, progress: ProgressReporter, global_limit: str | None = None
) -> list[ImageOutcome]:
    """One image per task run by default (the UI shows each image); several, one after another, to
    spend Prefect's per-task cost (~30 ms of CPU, bench/README.md) on more than one image."""
    return [_annotate_one(image_id, annotator, progress, global_limit) for image_id in image_ids]


#: The live objects of the runs this process annotates, by run id: a shard sub-flow takes the run id
#: (a serialisable parameter) and shares its parent's client, budget and progress through it.
_LIVE: dict[int, tuple[Annotator, ProgressReporter]] = {}


@flow(name="annotate-shard", flow_run_name="{run_name}-shard-{shard}")
def annotate_shard(
    run_name: str,
    run_id: int,
    shard: int,
    image_ids: list[int],
    global_limit: str | None = None,
    images_per_task: int = 1,
) -> dict[str, int]:
    """One shard of run `run_id`, annotated by the run's annotator in this process (see annotate_flow)."""
    annotator, progress = _LIVE[run_id]
    batches = [image_ids[i : i + images_per_task] for i in range(0, len(image_ids), images_per_task)]
    futures = annotate_images.map(
        batches, annotator=unmapped(annotator), progress=unmapped(progress), global_limit=unmapped(global_limit)
    )
    futures.wait()
    counts: dict[str, int] = {}
    for future in futures:
        for outcome in future.result():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def _publish_report(report: RunReport, run_name: str) -> None:
    """End-of-run artifacts: the numbers a user checks before using the data."""
    key = run_name.lower().replace("_", "-")
    simulated = " (simulator: rehearsal numbers, not a real model's quality)" if report.simulated else ""
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
    simulated: bool = False,
    image_ids: list[int] | None = None,
    kind: str = "annotate",
) -> RunReport:
    """Annotate (or resume) run `run_name`; returns the run report.

    The endpoint comes from settings (SEKE_VLLM_*); `base_url`/`model` override
    it, e.g. with a simulator started for the demo (which passes `simulated`).
    Secrets never pass through flow parameters.
    """
    logger = get_run_logger()
    settings = get_settings()
    config = config or AnnotateConfig()
    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model, simulated=simulated)

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
        with VLLMClient(vllm_config) as client:
            annotator = Annotator(
                run_id=run_id,
                run_name=run_name,
                config=config,
                sessions=sessions,
                store=open_store(settings),
                client=client,
                budget=budget,
            )
            _LIVE[run_id] = (annotator, progress)
            try:
                for shard, start in enumerate(range(0, len(todo), shard_size)):
                    stop_reason = budget.stop_reason()
                    if stop_reason:
                        break
                    # A fresh runner per shard: each sub-flow shuts its runner's thread pool down on exit.
                    runner = ThreadPoolTaskRunner(max_workers=concurrency or settings.concurrency)
                    annotate_shard.with_options(task_runner=runner)(
                        run_name,
                        run_id,
                        shard,
                        todo[start : start + shard_size],
                        settings.prefect_concurrency_limit,
                        images_per_task,
                    )
            finally:
                del _LIVE[run_id]
            stop_reason = stop_reason or budget.stop_reason()
        progress.flush(budget)
        with sessions.begin() as session:
            status = close_run(session, run_id, stop_reason=stop_reason)
            report = run_report(session, run_id)
    _publish_report(report, run_name)
    logger.info("run %s %s: %s", run_name, status, dict(report.images))
    return report
