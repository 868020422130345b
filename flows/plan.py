"""`seke annotate --plan [--pilot K]`: the pilot is a real annotate run of its own, then tasks/plan.py prices the run."""

from __future__ import annotations

from sqlalchemy import select

from core.config import get_settings
from core.db import session_factory
from flows.annotate import annotate_flow
from models.orm import Run
from tasks.annotate import AnnotateConfig
from tasks.plan import Plan, law_plan, measured_profile, pilot_images, pilot_plan, planned_images, run_images
from tasks.vllm import VLLMConfig


def plan_annotate(
    run_name: str,
    *,
    config: AnnotateConfig | None = None,
    limit: int | None = None,
    concurrency: int | None = None,
    pilot: int | None = None,
    base_url: str | None = None,
    model: str | None = None,
) -> Plan:
    """The plan of `seke annotate --run run_name --limit limit`; with `pilot`, after annotating that many
    of its images for real in the run `<run_name>-pilot` (paid; re-planning reuses it)."""
    settings = get_settings()
    config = config or AnnotateConfig()
    # The law's plan calls nothing: it needs the prices and limits, not an endpoint.
    endpoint = base_url or settings.vllm_base_url or ("" if pilot else "about:no-calls")
    vllm = VLLMConfig.from_settings(settings, base_url=endpoint, model=model)
    sessions = session_factory(settings)
    with sessions() as session:
        image_ids = run_images(session, run_name, limit)
        images = planned_images(session, image_ids, config, vllm)
    workers = concurrency or settings.concurrency
    if not pilot:
        return law_plan(images, config, vllm, workers)
    pilot_name = f"{run_name}-pilot"
    annotate_flow(
        run_name=pilot_name, config=config, image_ids=pilot_images(images, pilot), concurrency=concurrency,
        base_url=base_url, model=model,
    )  # fmt: skip
    with sessions() as session:
        pilot_run = session.scalars(select(Run).where(Run.name == pilot_name)).one()
        profile = measured_profile(session, pilot_run.id)
    plan = pilot_plan(images, profile, vllm, workers)
    plan.notes.append(f"the pilot is run {pilot_name} ({len(profile.images)} images, already paid for)")
    return plan
