"""The annotate flow: SEKE over every FEID image of a run, on any number of workers, resumable, budgeted.

Shape: a run's images are claimed under leases in PostgreSQL (tasks/leases.py)
by workers; each worker keeps claiming until nothing is claimable and runs
its images in shard sub-flows of at most `shard_size` images (one flow holding
every task's state grows by ~3-9 KB per task and the ephemeral API drops task
runs past ~10k in one flow; shards keep memory flat and the UI's counts true).
A shard is an async flow: `concurrency` coroutines claim images and run each
as an async task run (`annotate-image`), so every image is its own task run in
the UI while all calls share one event loop, one HTTP client and one batched
database writer (tasks/annotate.py). A worker's shards run on one event loop,
the next starting as soon as the one before has claimed its last image, with
`concurrency` slots shared between them: no drain between shards.

`workers=1`: the annotate flow is the worker. `workers=K`: K worker flow runs
(`annotate-worker`), as local processes, or, with `via_deployments`, as
deployment runs that workers of the `cpu` pool execute anywhere; the parent
shows the whole run's progress and cancels them all when it is cancelled.

Retries: the VLLM client is the one retry layer (transient HTTP failures, with
backoff and Retry-After). Prefect task retries stay at 0 so a failure is
never paid for twice; an image that still fails is marked failed with its
reason and is picked up again when the run is resumed.

Our PostgreSQL is the system of record: re-running a run resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    aupdate_progress_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import concurrency as global_slot
from prefect.context import FlowRunContext
from prefect.runtime import flow_run, task_run
from prefect.states import Cancelled
from pydantic import TypeAdapter
from sqlalchemy.orm import Session, sessionmaker

from models.names import check_name, slug
from models.vocab import ImageStatus, RunStatus
from core.config import get_settings
from core.db import database_url, get_engine, release_idle_connections, session_factory
from core.store import open_store
from core.version import code_version
from flows.workers import StopSignals, Watch, flow_run_cancelled, start_deployment_workers, start_local_workers
from tasks.annotate import AnnotateSession, Annotator, Budget, ImageOutcome, WriteBuffer, drive
from tasks.config import AnnotateConfig
from tasks.budget import run_spent, shared_budget_reason
from tasks.leases import claim, expire_dead_local, new_worker_id, next_expiry_s, release
from tasks.ratelimit import RateLimiter
from tasks.runs import RunReport, close_run, image_counts, open_run, request_stop, run_report, stop_requested
from tasks.shared_limit import SharedRateLimit, bucket_key
from tasks.vllm import VLLMConfig, uncapped
from flows.progress import report
from tasks.schedule import expand_run_name
from tasks.versions import VersionError, check_origin, derive_run


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

    async def image_finished(self, outcome: ImageOutcome, budget: Budget) -> None:
        with self._lock:
            self.done += outcome.status == ImageStatus.DONE
            self.failed += outcome.status == ImageStatus.FAILED
            report("annotate", self.done + self.failed, self.total, budget.cost_usd)
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
    if outcome.status == ImageStatus.FAILED:
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


# Images one claim query leases, in units of the images a coroutine asks for: fewer round trips to
# PostgreSQL per image, while a worker holds only a few images nobody works on yet (released at its end).
CLAIM_AHEAD = 4


class Feeder:
    """One worker's claims: leased images from PostgreSQL, one task's worth at a time, until none is left or a stop.

    The engine's `drive` calls `claim()` from each of its coroutines; the
    database work runs in threads so the event loop keeps serving calls.
    """

    def __init__(
        self,
        *,
        run_id: int,
        worker: str,
        sessions: sessionmaker[Session],
        annotator: Annotator,
        progress: ProgressReporter,
        watch: Watch,
        images_per_task: int,
        lease_s: float,
        max_calls: int | None,
        max_cost_usd: float | None,
        global_limit: str | None,
    ) -> None:
        self.run_id, self.worker, self.sessions = run_id, worker, sessions
        self.annotator, self.progress, self.watch = annotator, progress, watch
        self.images_per_task, self.lease_s = images_per_task, lease_s
        self.max_calls, self.max_cost_usd, self.global_limit = max_calls, max_cost_usd, global_limit
        self.counts: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.exhausted = False
        # Images leased ahead of the coroutines, so one claim query serves several of them.
        self._ready: list[int] = []
        self._claiming = asyncio.Lock()
        # Notified when an image of this worker finishes: claims waiting for the run's last images look again.
        self._finished = asyncio.Condition()

    async def work_done(self) -> None:
        async with self._finished:
            self._finished.notify_all()

    async def _check_stop(self) -> str | None:
        reason = self.watch.stop_reason() or self.annotator.budget.stop_reason()
        if reason or (self.max_calls is None and self.max_cost_usd is None):
            return reason
        return await asyncio.to_thread(self._shared_budget_reason)

    def _shared_budget_reason(self) -> str | None:
        with self.sessions() as session:
            return shared_budget_reason(session, self.run_id, self.max_calls, self.max_cost_usd)

    async def _take(self, n: int) -> list[int]:
        """Up to n leased images: from those claimed ahead, else from one claim query for several coroutines' worth."""
        if len(self._ready) < n:
            async with self._claiming:  # one query at a time; coroutines waiting here take from what it brought
                if len(self._ready) < n:
                    self._ready += await asyncio.to_thread(self._claim, n * CLAIM_AHEAD - len(self._ready))
        taken, self._ready = self._ready[:n], self._ready[n:]
        return taken

    def _claim(self, n: int) -> list[int]:
        with self.sessions.begin() as session:
            return claim(session, self.run_id, self.worker, n, self.lease_s)

    def _requested_stop(self) -> str | None:
        with self.sessions() as session:
            return stop_requested(session, self.run_id)

    def _next_expiry_s(self) -> float | None:
        with self.sessions() as session:
            return next_expiry_s(session, self.run_id)

    def claims(self, max_images: int, ended: asyncio.Event):  # noqa: ANN201 (a tasks.annotate.Claim)
        """A Claim for one shard: up to `max_images` images, then None; `ended` is set once it claims no more."""
        claimed = 0

        async def claim_next() -> list[int] | None:
            image_ids = await next_images()
            if image_ids is None or claimed >= max_images:
                ended.set()
            return image_ids

        async def next_images() -> list[int] | None:
            nonlocal claimed
            while claimed < max_images:
                self.stop_reason = self.stop_reason or await self._check_stop()
                if self.stop_reason:
                    return None
                wanted = min(self.images_per_task, max_images - claimed)
                claimed += wanted  # counted before the await, so coroutines claiming at once stay within max_images
                image_ids = await self._take(wanted)
                claimed -= wanted - len(image_ids)
                if image_ids:
                    return image_ids
                # Nothing claimed: the run may have been stopped by another process before our heartbeat saw it.
                self.stop_reason = await asyncio.to_thread(self._requested_stop)
                if self.stop_reason:
                    return None
                wait = await asyncio.to_thread(self._next_expiry_s)
                if wait is None:  # nothing claimable and nothing leased by anyone: the run has no work left
                    self.exhausted = True
                    return None
                # Others (or our own coroutines) hold the rest: look again once one of ours finishes, or after
                # at most half a second (another worker's image finished or a lease expired). Polling alone
                # ended each run up to half a second after its last image.
                async with self._finished:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._finished.wait(), min(0.5, wait))
            return None

        return claim_next

    def count(self, outcomes: list[ImageOutcome]) -> dict[str, int]:
        shard: dict[str, int] = {}
        for outcome in outcomes:
            shard[outcome.status] = shard.get(outcome.status, 0) + 1
            self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        return shard


@dataclass
class _ShardInputs:
    feeder: Feeder
    slots: asyncio.Semaphore  # shared with the shard before and after this one
    ended: asyncio.Event  # set once this shard claims no more


# The live objects a shard works with reach it through the context its task copies when created,
# not as flow parameters: Prefect encodes parameters for its API, walking whatever objects they hold.
_SHARD_INPUTS: ContextVar[_ShardInputs] = ContextVar("annotate_shard_inputs")


@flow(name="annotate-shard", flow_run_name="{run_name}-shard-{shard}")
async def annotate_shard(run_name: str, shard: str, max_images: int, concurrency: int) -> dict[str, int]:
    """Up to `max_images` of the run's images, claimed as coroutines free up; every image a task run."""
    inputs = _SHARD_INPUTS.get()
    feeder, slots, ended = inputs.feeder, inputs.slots, inputs.ended
    # A sub-flow's engine puts Prefect's SIGTERM bridge back (a SIGTERM would crash it): ours again, for its span.
    with feeder.watch.signals.installed():
        async with feeder.annotator.open() as session:
            async def work(image_ids: list[int]) -> list[ImageOutcome]:
                outcomes = await annotate_images(image_ids, session=session, progress=feeder.progress, global_limit=feeder.global_limit)
                await feeder.work_done()
                return outcomes

            outcomes = await drive(feeder.claims(max_images, ended), work, concurrency, slots)
    return feeder.count(outcomes)


async def run_shards(params: WorkerSettings, worker: str, feeder: Feeder, concurrency: int) -> None:
    """Shard sub-flows back to back on one event loop until the run has no work left, stops, or a shard fails.

    The next shard starts as soon as the one before has claimed its last image, not once its
    slowest image is done: waiting for that drain left most coroutines idle for about one
    image's time per shard (seconds at real latencies). `concurrency` slots shared by the
    shards keep the images in flight at `concurrency` through the hand-over. A failed shard
    cancels the others and its error ends the worker, as it would alone: its images stay
    leased by this worker until the worker releases them, so a later shard would only wait.
    """
    slots = asyncio.Semaphore(concurrency)
    shards: list[asyncio.Task] = []
    failed = asyncio.Event()

    def watch(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            failed.set()

    while not (feeder.exhausted or feeder.stop_reason or failed.is_set()):
        inputs = _ShardInputs(feeder, slots, asyncio.Event())
        token = _SHARD_INPUTS.set(inputs)
        shard = asyncio.create_task(annotate_shard(params.run_name, f"{worker}-{len(shards)}", params.shard_size, concurrency))
        _SHARD_INPUTS.reset(token)
        shard.add_done_callback(watch)
        shards.append(shard)
        wakers = {asyncio.create_task(inputs.ended.wait()), asyncio.create_task(failed.wait())}
        await asyncio.wait({shard, *wakers}, return_when=asyncio.FIRST_COMPLETED)
        for waker in wakers:
            waker.cancel()
    if failed.is_set():
        for shard in shards:
            shard.cancel()
    outcomes = await asyncio.gather(*shards, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)]
    if errors:
        raise errors[0]


def _publish_report(report: RunReport, run_name: str) -> None:
    """End-of-run artifacts: the numbers a user checks before using the data."""
    key = slug(run_name)
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
        + (
            f"- derived from {report.derived_from}: {report.kept_from_origin} images kept, "
            f"{report.reannotated} annotated again\n"
            if report.derived_from
            else ""
        )
        + (f"- stopped: {report.stop_reason}\n" if report.stop_reason else ""),
        key=f"{key}-summary",
        description="Run summary and cost",
    )


@dataclass
class WorkerSettings:
    """What every worker of one invocation shares (JSON-able: it travels as deployment parameters)."""

    run_name: str
    run_id: int
    config: AnnotateConfig
    max_calls: int | None = None
    max_cost_usd: float | None = None
    concurrency: int | None = None
    shard_size: int = 1000
    images_per_task: int = 1
    base_url: str | None = None
    model: str | None = None
    lease_s: float = 30.0
    simulated: bool = False


def params_payload(params: WorkerSettings) -> dict[str, Any]:
    """The settings as JSON (deployment parameters, a worker process's argument)."""
    return TypeAdapter(WorkerSettings).dump_python(params, mode="json")


def params_from(payload: WorkerSettings | dict[str, Any]) -> WorkerSettings:
    return payload if isinstance(payload, WorkerSettings) else TypeAdapter(WorkerSettings).validate_python(payload)


def work(params: WorkerSettings, watch_flow_runs: list[UUID]) -> tuple[dict[str, int], str | None]:
    """Be one worker of the run until nothing is claimable or it must stop; returns (image counts, stop reason).

    Leases are released and the run is closed on the way out, whatever ends it.
    """
    settings = get_settings()
    concurrency = params.concurrency or settings.concurrency
    sessions = session_factory(settings, concurrency)
    vllm_config = VLLMConfig.from_settings(settings, base_url=params.base_url, model=params.model, simulated=params.simulated)
    worker = new_worker_id()
    with sessions.begin() as session:
        expire_dead_local(session, params.run_id)
        counts = image_counts(session, params.run_id)
        budget = Budget(*run_spent(session, params.run_id), params.max_calls, params.max_cost_usd)
    total, done = sum(counts.values()), counts.get(ImageStatus.DONE, 0)
    get_run_logger().info("run %s (id %s): worker %s joins, %s of %s images left", params.run_name, params.run_id, worker, total - done, total)
    progress = ProgressReporter(create_progress_artifact(100.0 * done / max(total, 1), description=f"run {params.run_name}: starting"), total, done)
    # The endpoint's caps, shared with every other worker through PostgreSQL; no cap, nothing to share.
    limiter = None
    if vllm_config.requests_per_minute or vllm_config.tokens_per_minute:
        rpm, tpm = uncapped(vllm_config.requests_per_minute), uncapped(vllm_config.tokens_per_minute)
        key = bucket_key(vllm_config.base_url, vllm_config.model)
        shared = SharedRateLimit(get_engine(settings, concurrency), key, rpm, tpm, burst_s=vllm_config.rate_burst_s)
        limiter = RateLimiter(rpm, tpm, burst_s=vllm_config.rate_burst_s, shared=shared)
    annotator = Annotator(
        run_id=params.run_id,
        run_name=params.run_name,
        config=params.config,
        database_url=database_url(settings),
        store=open_store(settings),
        vllm=vllm_config,
        budget=budget,
        buffer=WriteBuffer(settings.write_buffer_rows, settings.write_buffer_ms),
        limiter=limiter,
    )
    signals = StopSignals()
    with signals.installed(), Watch(sessions, params.run_id, worker, params.lease_s, signals, watch_flow_runs) as watch:
        feeder = Feeder(
            run_id=params.run_id,
            worker=worker,
            sessions=sessions,
            annotator=annotator,
            progress=progress,
            watch=watch,
            images_per_task=params.images_per_task,
            lease_s=params.lease_s,
            max_calls=params.max_calls,
            max_cost_usd=params.max_cost_usd,
            global_limit=settings.prefect_concurrency_limit,
        )
        try:
            # One event loop for the worker's shards; each shard's client, connections and writer live and end in it.
            asyncio.run(run_shards(params, worker, feeder, concurrency))
        except Exception as exc:
            # While stopping, a shard that cannot start (a busy SQLite-backed Prefect API answered 503
            # after minutes) is no failure: the run stops as asked and resumes from PostgreSQL.
            if not (feeder.stop_reason or watch.stop_reason()):
                raise
            get_run_logger().warning("run %s: stopping; a shard could not start: %s", params.run_name, exc)
        finally:
            stop_reason = feeder.stop_reason or watch.stop_reason()
            with sessions.begin() as session:
                if stop_reason:
                    request_stop(session, params.run_id, stop_reason)  # every other worker stops claiming too
                release(session, params.run_id, worker)
                close_run(session, params.run_id, stop_reason=stop_reason)
            progress.flush(budget)
            release_idle_connections()  # up to concurrency + 4 of them, no longer needed
    return feeder.counts, stop_reason


def _final_state(result: Any, stop_reason: str | None):
    """Cancelled for a cancel or an interrupt (a terminal state, never CANCELLING); Completed otherwise."""
    if stop_reason and (stop_reason.startswith("cancelled") or stop_reason.startswith("interrupted")):
        return Cancelled(message=f"run stopped: {stop_reason}", data=result)
    return result


def _worker_run_name() -> str:
    parameters = flow_run.parameters
    return f"{params_from(parameters['params']).run_name}-worker-{parameters.get('index', 0)}"


@flow(name="annotate-worker", flow_run_name=_worker_run_name, validate_parameters=False)
def annotate_worker(params: WorkerSettings | dict[str, Any], index: int = 0, parent_flow_run_id: str | None = None):
    """One of K workers of a run (a local process or a deployment run): claims images until none is left."""
    params = params_from(params)
    watched = [context.flow_run.id] if (context := FlowRunContext.get()) and context.flow_run else []
    if parent_flow_run_id:
        watched.append(UUID(parent_flow_run_id))
    counts, stop_reason = work(params, watched)
    return _final_state({"images": counts, "stop_reason": stop_reason}, stop_reason)


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
    workers: int = 1,
    via_deployments: bool = False,
    lease_s: float = 30.0,
    from_run: str | None = None,
) -> RunReport:
    """Annotate (or resume, or join) run `run_name` with `workers` workers; returns the run report.

    `from_run` makes the run a new version of that completed run (tasks/versions.py): images
    whose known labels did not change keep its results, the others are annotated again.

    The endpoint comes from settings (SEKE_VLLM_*); `base_url`/`model` override
    it, e.g. with a simulator started for the demo (which passes `simulated`).
    Secrets never pass through flow parameters.
    """
    logger = get_run_logger()
    # A schedule's runs share one pattern: `nightly-{scheduled:%Y%m%d}` names each after its own start time.
    # The name (once expanded) becomes keys and folders: checked before any work (models/names.py).
    run_name = check_name(expand_run_name(run_name, flow_run.scheduled_start_time), "run name")
    settings = get_settings()
    config = config or AnnotateConfig()
    sessions = session_factory(settings, concurrency)
    vllm_config = VLLMConfig.from_settings(settings, base_url=base_url, model=model, simulated=simulated)

    with sessions.begin() as session:
        origin = check_origin(session, run_name, from_run)
        if from_run is not None and (limit is not None or image_ids is not None):
            raise VersionError("--from takes no --limit: a version covers the images of the run it derives from")
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
            derived_from=origin,
        )
        derivation = derive_run(session, run_id) if origin else None
    if derivation is not None:
        logger.info(
            "run %s derives from %s: %s images kept, %s to annotate again",
            run_name, derivation.origin, derivation.kept, derivation.reannotated,
        )  # fmt: skip
    params = WorkerSettings(
        run_name, run_id, config, max_calls, max_cost_usd, concurrency, shard_size, images_per_task, base_url, model, lease_s,
        simulated,
    )  # fmt: skip
    own_id = FlowRunContext.get().flow_run.id
    if workers == 1 and not via_deployments:
        _, stop_reason = work(params, [own_id])
    else:
        stop_reason = supervise(params, workers, own_id, via_deployments)
    with sessions.begin() as session:
        status = close_run(session, run_id, stop_reason=stop_reason)
        report = run_report(session, run_id)
    _publish_report(report, run_name)
    logger.info("run %s %s: %s", run_name, status, dict(report.images))
    return _final_state(report, report.stop_reason if status == RunStatus.STOPPED else None)


def supervise(params: WorkerSettings, workers: int, own_id: UUID, via_deployments: bool) -> str | None:
    """Start K workers, show the run's progress until they have all ended, pass a cancel or interrupt on.

    Returns the run's stop reason, if it was stopped.
    """
    settings = get_settings()
    sessions = session_factory(settings, params.concurrency)
    start = start_deployment_workers if via_deployments else start_local_workers
    handles = start(params_payload(params), workers, own_id)
    with sessions() as session:
        counts = image_counts(session, params.run_id)
    total = max(sum(counts.values()), 1)
    artifact = create_progress_artifact(100.0 * counts.get(ImageStatus.DONE, 0) / total, description=f"run {params.run_name}: {workers} workers")
    signals = StopSignals()
    stop_reason = None
    with signals.installed():
        while True:
            finished = handles.finished()
            with sessions.begin() as session:
                counts = image_counts(session, params.run_id)
                calls, cost = run_spent(session, params.run_id)
                if not stop_reason:
                    stop_reason = signals.reason or ("cancelled" if flow_run_cancelled([own_id]) else None)
                    if stop_reason:
                        request_stop(session, params.run_id, stop_reason)
                        handles.stop()
                requested = stop_requested(session, params.run_id)
            update_progress_artifact(
                artifact,
                progress=100.0 * counts.get(ImageStatus.DONE, 0) / total,
                description=(
                    f"{counts.get(ImageStatus.DONE, 0)}/{total} images done, {counts.get(ImageStatus.FAILED, 0)} failed; {calls} calls, ${cost:.4f}; "
                    f"{workers - finished} of {workers} workers running" + (f"; stopping: {requested}" if requested else "")
                ),
            )
            if finished == workers:
                failed = handles.failed()
                if failed and not (stop_reason or requested) and counts.get(ImageStatus.DONE, 0) < total:
                    return f"{len(failed)} of {workers} workers failed ({', '.join(failed)}); re-run to resume"
                return stop_reason or requested
            signals.event.wait(2.0)



def main(argv: list[str]) -> int:
    """A worker process started by `supervise` (`python -m flows.annotate '<json>'`); exit 0 unless it failed."""
    payload = json.loads(argv[1])
    params = params_from(payload["params"])
    try:
        state = annotate_worker(params, payload["index"], payload["parent"], return_state=True)
    except Exception as exc:
        # A worker that cannot even create its flow run while the run is being stopped has nothing
        # to do: a busy SQLite-backed Prefect API answered 503 after minutes. Anything else is a failure.
        with session_factory(get_settings())() as session:
            requested = stop_requested(session, params.run_id)
        if not requested:
            raise
        print(f"worker {payload['index']} of run {params.run_name}: stopping ({requested}); Prefect API: {exc}", file=sys.stderr)
        return 0
    return 0 if state.is_completed() or state.is_cancelled() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
