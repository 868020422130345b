"""The pipeline: annotate → export → fine-tune → benchmark, with lineage recorded.

Two ways to run it:
- in-process (no Prefect server needed): the flows run as sub-flows, one after another;
- via deployments (a Prefect server with `cpu` and `gpu` work pools, see infra/):
  the pipeline starts the fine-tune deployment with `run_deployment(timeout=0,
  idempotency_key=...)`, and the fine-tune flow starts the benchmark deployment
  the same way when it completes. The pipeline run does not wait for them: it
  ends in a Completed state named "Submitted" whose message names the fine-tune
  flow run, or "Already submitted" ("already done: <flow run>") when the key
  returned a run an earlier pipeline started. The idempotency keys are derived from the run
  names, so a retried trigger returns the flow run it already started instead
  of starting a duplicate; our own tables are keyed by the same names, so even a
  duplicate that got through would resume rather than redo the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed
from pydantic import BaseModel
from sqlalchemy import func, select

from flows.annotate import annotate_flow
from flows.benchmark import BenchmarkResult, benchmark_flow
from flows.deployments import trigger
from flows.finetune import FinetuneResult, finetune_flow
from models.names import Name, check_name
from models.orm import Export, Instruction, Run
from models.vocab import RunStatus
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
    finetune_flow_run_id: str | None = None  # via deployments: the fine-tune flow run started (or found)
    message: str | None = None  # via deployments: what was submitted, or that it already was


@dataclass(frozen=True)
class Submitted:
    """A deployment run the pipeline handed work to, and whether this call started it."""

    flow_run_id: str
    flow_run_name: str
    state: str
    new: bool

    def describe(self, what: str) -> str:
        run = f"{what} flow run {self.flow_run_name} ({self.flow_run_id})"
        if self.new:
            return f"submitted {run}"
        if self.state in ("Completed", "Failed", "Crashed", "Cancelled"):
            return f"already done: {run}, {self.state}"
        return f"already submitted: {run}, {self.state}"


def submit(flow_key: str, parameters: dict[str, Any], *, key: str) -> Submitted:
    """`trigger`, telling a new flow run from the one an earlier call with the same key started."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

    with get_client(sync_client=True) as client:
        earlier = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])), limit=1
        )
    flow_run = trigger(flow_key, parameters, key=key)
    state = flow_run.state.name if flow_run.state else "Scheduled"
    return Submitted(str(flow_run.id), flow_run.name, state, new=not earlier)


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
            session, open_store(settings), run.id, settings.resolved_state_dir / "exports" / run_name, overwrite=True
        )
        return export_id


@flow(name="pipeline", flow_run_name="pipeline-{run_name}")
def pipeline_flow(
    run_name: Name,
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
    # The chain's names derive from the run's: checked before any call is paid for.
    finetune_name = check_name(f"{run_name}-finetune", "fine-tune name")
    benchmark_name = check_name(f"{finetune_name}-feab", "benchmark name")
    annotated = annotate_flow(
        run_name=run_name, config=annotate_config, limit=limit, base_url=base_url, model=model, simulated=simulated,
        concurrency=concurrency,
    )  # fmt: skip
    if annotated.status != RunStatus.COMPLETED:
        reason = annotated.stop_reason or annotated.status
        logger.warning("run %s did not complete (%s): not exporting or training; re-run to resume", run_name, reason)
        return PipelineResult(annotate=annotated, stopped=reason)
    export_id = export_for(run_name)
    if not train:
        return PipelineResult(annotate=annotated, export_id=export_id)
    benchmark = {"name": benchmark_name, "kind": "checkpoint", "limit": benchmark_limit}
    if via_deployments:
        submitted = submit(
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
        # Not waiting for hours of training on the cpu pool: the pipeline ends here, and its state says so.
        message = submitted.describe("fine-tune") + ("; it starts the benchmark when it completes" if submitted.new else "")
        logger.info(message)
        result = PipelineResult(
            annotate=annotated, export_id=export_id, finetune_flow_run_id=submitted.flow_run_id, message=message
        )
        return Completed(name="Submitted" if submitted.new else "Already submitted", message=message, data=result)
    trained = finetune_flow(name=finetune_name, export_id=export_id, base_model=base_model, train_config=train_config)
    scored = benchmark_flow(**benchmark, model=trained.final_model, training_run_id=trained.training_run_id)
    return PipelineResult(annotate=annotated, export_id=export_id, finetune=trained, benchmark=scored)
