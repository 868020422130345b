"""The batch-mode annotate flow: SEKE in rounds over the OpenAI Batch API (tasks/batch.py).

One flow run drives every round of the run: it opens (or resumes) the run as
the online flow does, then submits, waits for and imports each round's
batches, logging each round's progress. Re-running it resumes: submitted
batches are recorded in PostgreSQL before they are created, so none is
submitted twice, and a batch still in progress is waited for.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from sqlalchemy import select

from core.config import get_settings
from core.db import database_url, session_factory
from core.store import open_store
from core.version import code_version
from models.names import Name, slug
from models.orm import ApiBatch
from models.vocab import ImageStatus
from tasks.annotate import Annotator, Budget
from tasks.batch import BatchConfig, BatchRunner
from tasks.budget import run_spent
from tasks.config import AnnotateConfig
from tasks.runs import RunReport, close_run, image_counts, open_run, run_report
from tasks.vllm import VLLMConfig

#: The endpoint recorded for a run whose rounds run as files on a machine this one cannot reach.
OFFLINE_URL = "http://vllm-run-batch.offline/v1"


@flow(name="annotate-batch", flow_run_name="annotate-batch-{run_name}")
def annotate_batch_flow(
    run_name: Name,
    config: AnnotateConfig | None = None,
    limit: int | None = None,
    base_url: str | None = None,
    model: str | None = None,
    simulated: bool = False,
    price_factor: float = 0.5,
    max_requests_per_batch: int = 50_000,
    poll_s: float = 30.0,
    fallback_online: bool = False,
    plan_chunk: int = 1000,
    say: Callable[[str], None] | None = None,
) -> RunReport:
    """Annotate (or resume) run `run_name` in batch rounds; returns the run report.

    Each round's progress goes to the flow's log, and to `say` too when given (the CLI prints it)."""
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
        )
        budget = Budget(*run_spent(session, run_id), None, None)
    annotator = Annotator(
        run_id=run_id,
        run_name=run_name,
        config=config,
        database_url=database_url(settings),
        store=open_store(settings),
        vllm=vllm_config,
        budget=budget,
    )
    batch = BatchConfig(price_factor=price_factor, max_requests=max_requests_per_batch, poll_s=poll_s,
                        fallback_online=fallback_online, plan_chunk=plan_chunk)
    artifact = create_progress_artifact(0.0, description=f"run {run_name}: batch mode starting")
    client = openai.OpenAI(base_url=vllm_config.base_url, api_key=vllm_config.api_key.get_secret_value(),
                           timeout=vllm_config.timeout_s)
    try:
        def progress(line: str) -> None:
            logger.info(line)
            if say is not None:
                say(line)
            with sessions() as session:
                counts = image_counts(session, run_id)
            total = max(sum(counts.values()), 1)
            update_progress_artifact(artifact, progress=100.0 * counts.get(ImageStatus.DONE, 0) / total, description=line)

        stop_reason = BatchRunner(annotator, sessions, client, batch, progress).run()
    finally:
        client.close()
    with sessions.begin() as session:
        status = close_run(session, run_id, stop_reason=stop_reason)
        report = run_report(session, run_id)
        batches = session.scalars(select(ApiBatch).where(ApiBatch.run_id == run_id).order_by(ApiBatch.round, ApiBatch.part))
        create_table_artifact(
            [{"round": b.round, "part": b.part, "batch": b.batch_id, "status": b.status, "requests": b.request_count,
              "answered": b.completed_count, "failed": b.failed_count} for b in batches],
            key=f"{slug(run_name)}-batches",
            description="The run's batches, round by round",
        )
    logger.info("run %s %s: %s", run_name, status, dict(report.images))
    return report


def offline_runner(run_name: str, config: AnnotateConfig, limit: int | None, model: str | None,
                   price_factor: float) -> BatchRunner:
    """A run's rounds as files (`seke batch export-round` / `import-round`), for `vllm run-batch` elsewhere.

    The request bodies are those an endpoint configured by SEKE_VLLM_* would get; with no endpoint configured,
    the model named here (or SEKE_VLLM_MODEL) and an offline placeholder URL, recorded with the run.
    """
    settings = get_settings()
    sessions = session_factory(settings)
    vllm_config = VLLMConfig.from_settings(settings, base_url=settings.vllm_base_url or OFFLINE_URL, model=model)
    with sessions.begin() as session:
        run_id = open_run(session, run_name, config=config, model=vllm_config.model,
                          endpoint=vllm_config.public_snapshot(), code_version=code_version(), limit=limit)
        budget = Budget(*run_spent(session, run_id), None, None)
    annotator = Annotator(run_id=run_id, run_name=run_name, config=config, database_url=database_url(settings),
                          store=open_store(settings), vllm=vllm_config, budget=budget)
    return BatchRunner(annotator, sessions, None, BatchConfig(price_factor=price_factor), lambda line: None)
