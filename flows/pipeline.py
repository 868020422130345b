"""The pipeline: annotate → export → fine-tune → benchmark, with lineage recorded.

Two ways to run it:
- in-process (no Prefect server needed): the flows run as sub-flows, one after another;
- via deployments (a Prefect server with `cpu` and `gpu` work pools, see infra/):
  the pipeline starts the fine-tune deployment and the fine-tune flow starts the
  benchmark deployment when it completes (the trigger chain, flows/deployments.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel
from sqlalchemy import func, select

from flows.annotate import annotate_flow
from flows.benchmark import BenchmarkResult, benchmark_flow
from flows.deployments import trigger
from flows.finetune import FinetuneResult, finetune_flow
from models.orm import Export, Instruction, Run
from core.config import get_settings
from core.db import session_factory
from core.store import open_store
from tasks.config import AnnotateConfig
from tasks.export import record_export
from tasks.runs import RunReport


class PipelineResult(BaseModel):
    """How far the chain got: each later field is set once its step ran (in-process) or was started."""

    annotate: RunReport
    stopped: str | None = None  # why nothing was exported: the annotate run did not complete
    export_id: int | None = None
    finetune: FinetuneResult | None = None
    benchmark: BenchmarkResult | None = None
    finetune_flow_run_id: str | None = None  # via deployments: the fine-tune flow run started


def export_for(run_name: str) -> int:
    """The run's export id: its newest export if no image finished since, else a new export."""
    settings = get_settings()
    with session_factory(settings).begin() as session:
        run = session.scalars(select(Run).where(Run.name == run_name)).one()
        latest = session.scalars(
            select(Export).where(Export.run_id == run.id).order_by(Export.id.desc()).limit(1)
        ).one_or_none()
        last_finished = session.scalar(select(func.max(Instruction.created_at)).where(Instruction.run_id == run.id))
        if latest is not None and (last_finished is None or latest.created_at >= last_finished):
            return latest.id
        export_id, _ = record_export(
            session, open_store(settings), run.id, settings.resolved_state_dir / "exports" / run_name
        )
        return export_id


@flow(name="pipeline", flow_run_name="pipeline-{run_name}")
def pipeline_flow(
    run_name: str,
    limit: int | None = None,
    annotate_config: AnnotateConfig | None = None,
    base_url: str | None = None,
    model: str | None = None,
    simulated: bool = False,
    concurrency: int | None = None,
    base_model: str | None = None,
    train_config: dict[str, Any] | None = None,
    benchmark_limit: int | None = None,
    via_deployments: bool = False,
    train: bool = True,
) -> PipelineResult:
    """Annotate `run_name`, then export it and (with `train`) fine-tune on it and benchmark the result."""
    logger = get_run_logger()
    annotated = annotate_flow(
        run_name=run_name, config=annotate_config, limit=limit, base_url=base_url, model=model, simulated=simulated,
        concurrency=concurrency,
    )  # fmt: skip
    if annotated.status != "completed":
        reason = annotated.stop_reason or annotated.status
        logger.warning("run %s did not complete (%s): not exporting or training; re-run to resume", run_name, reason)
        return PipelineResult(annotate=annotated, stopped=reason)
    export_id = export_for(run_name)
    if not train:
        return PipelineResult(annotate=annotated, export_id=export_id)
    finetune_name = f"{run_name}-finetune"
    benchmark = {"name": f"{finetune_name}-feab", "kind": "checkpoint", "limit": benchmark_limit}
    if via_deployments:
        started = trigger(
            "finetune",
            {
                "name": finetune_name,
                "export_id": export_id,
                "base_model": base_model,
                "train_config": train_config,
                "then_benchmark": benchmark,
            },
            key=f"{finetune_name}:finetune",
        )
        logger.info("started fine-tune deployment run %s; it starts the benchmark when done", started.id)
        return PipelineResult(annotate=annotated, export_id=export_id, finetune_flow_run_id=str(started.id))
    trained = finetune_flow(name=finetune_name, export_id=export_id, base_model=base_model, train_config=train_config)
    scored = benchmark_flow(**benchmark, model=trained.final_model, training_run_id=trained.training_run_id)
    return PipelineResult(annotate=annotated, export_id=export_id, finetune=trained, benchmark=scored)
