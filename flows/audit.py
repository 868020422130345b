"""The audit flow: mask one human description, regenerate it, compare (SEKE §4.5.2), for each Table 4 setting.

12 annotate runs (4 settings × 3 masked tasks) over the same images, run one
after another as sub-flows: each is an ordinary, resumable annotate run of
kind "audit", so re-running the audit with the same name (and limit) resumes all
of them and only unfinished images cost calls.

The rewrite call is switched off: it only rephrases the final labels into an
instruction answer and never changes them, and the audit reads the labels
alone, so it would cost one call per image per run for nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.annotate import annotate_flow
from models.labels import Task
from models.names import Name, check_name, slug
from core.config import get_settings
from core.db import session_factory
from tasks.config import AnnotateConfig
from tasks.audit import ABLATIONS, AblationResult, ablation_result, ablation_table, agreement, complete_images
from tasks.uamc import UAMCConfig
from tasks.vllm import VLLMConfig


class AuditResult(BaseModel):
    """Regenerated vs. human labels, one row per Table 4 setting."""

    table: str  # markdown in Table 4's layout, the paper's rows included and labelled
    rows: list[AblationResult]
    simulated: bool  # the endpoint was the offline simulator: a rehearsal, not a model's quality


@flow(name="audit", flow_run_name="audit-{name}")
def audit_flow(
    name: Name,
    limit: int = 20,
    base_url: str | None = None,
    model: str | None = None,
    seed: int = 0,
    concurrency: int | None = None,
    simulated: bool = False,
) -> AuditResult:
    """Audit `limit` fully labelled images against the endpoint (`simulated`: it is the offline simulator)."""
    logger = get_run_logger()
    settings = get_settings()
    sessions = session_factory(settings)
    for ablation in ABLATIONS:  # the runs' names derive from the audit's: checked before any call
        for task in Task:
            check_name(f"{name}-{ablation.slug}-mask-{task.value}", "audit run name")
    endpoint = VLLMConfig.from_settings(settings, base_url=base_url, model=model, simulated=simulated)  # fails fast without one
    with sessions() as session:
        image_ids = complete_images(session, limit=limit)
    if not image_ids:
        raise ValueError(
            "no image has human expression, valence/arousal and AU labels to audit against; "
            "import Aff-Wild2 (or a manifest with all three descriptions) first"
        )
    logger.info("audit %s: %s images, %s settings × %s masked tasks", name, len(image_ids), len(ABLATIONS), len(Task))

    rows: list[AblationResult] = []
    for ablation in ABLATIONS:
        by_task: dict[Task, dict[str, Any]] = {}
        for task in Task:
            config = AnnotateConfig(
                seed=seed,
                use_prior=ablation.use_prior,
                uamc=UAMCConfig(enabled=ablation.uamc_enabled),
                tasks_to_mask=[task],
                rewrite_with_llm=False,
            )
            report = annotate_flow(
                run_name=f"{name}-{ablation.slug}-mask-{task.value}",
                config=config,
                concurrency=concurrency,
                base_url=base_url,
                model=model,
                simulated=simulated,
                image_ids=image_ids,
                kind="audit",
            )
            with sessions() as session:
                by_task[task] = agreement(session, report.run_id, task)
        rows.append(ablation_result(ablation, by_task))

    table = ablation_table(rows, model=endpoint.model, simulated=endpoint.simulated)
    create_markdown_artifact(
        f"# Audit {name}\n\n{table}\n",
        key=f"audit-{slug(name)}",
        description="Regenerated vs. human labels per Table 4 setting (SEKE §4.5.2)",
    )
    return AuditResult(table=table, rows=rows, simulated=endpoint.simulated)
