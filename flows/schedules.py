"""Schedules on the annotate deployment, through the Prefect API (`seke schedule …`).

Each schedule carries its own parameters (Prefect's per-schedule parameter
overrides), so several schedules can drive different runs through one
deployment. Schedules are named by their slug.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound

from tasks.schedule import AnnotateSchedule, parse_interval

#: infra/deployments.py registers it under this name.
ANNOTATE_DEPLOYMENT = "annotate/annotate"


@dataclass(frozen=True)
class ScheduleRow:
    slug: str | None
    id: UUID
    when: str
    active: bool
    parameters: dict[str, Any]


def _client():
    """A client of the configured server: a schedule on a throwaway ephemeral API would never run."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError(
            "schedules live on a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api, infra/README.md)"
        )
    return get_client(sync_client=True)


def _deployment(client, name: str):
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise ValueError(
            f"no deployment {name!r} on {client.api_url}: register the deployments first (python infra/deployments.py)"
        ) from None


def _describe(schedule) -> str:
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if isinstance(schedule, IntervalSchedule):
        return f"every {schedule.interval} from {schedule.anchor_date:%Y-%m-%d %H:%M:%S}"
    return str(schedule)


def create_schedule(
    slug: str,
    spec: AnnotateSchedule,
    *,
    cron: str | None = None,
    interval: str | None = None,
    timezone_name: str = "UTC",
    deployment: str = ANNOTATE_DEPLOYMENT,
) -> ScheduleRow:
    """Put a cron or interval schedule named `slug` with `spec`'s parameters on the deployment."""
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of a cron expression or an interval")
    schedule = (
        CronSchedule(cron=cron, timezone=timezone_name)
        if cron is not None
        else IntervalSchedule(interval=parse_interval(interval), anchor_date=datetime.now(UTC), timezone=timezone_name)
    )
    with _client() as client:
        target = _deployment(client, deployment)
        if any(row.slug == slug for row in client.read_deployment_schedules(target.id)):
            raise ValueError(f"deployment {deployment} already has a schedule {slug!r}: delete it first or pick another name")
        accepted = set((target.parameter_openapi_schema or {}).get("properties", {}))
        parameters = spec.parameters(accepted)
        [created] = client.create_deployment_schedules(
            target.id, [DeploymentScheduleCreate(schedule=schedule, active=True, parameters=parameters, slug=slug)]
        )
    return ScheduleRow(slug, created.id, _describe(schedule), True, parameters)


def list_schedules(deployment: str = ANNOTATE_DEPLOYMENT) -> list[ScheduleRow]:
    with _client() as client:
        rows = client.read_deployment_schedules(_deployment(client, deployment).id)
    return [ScheduleRow(row.slug, row.id, _describe(row.schedule), row.active, dict(row.parameters)) for row in rows]


def _find(client, deployment: str, slug: str):
    target = _deployment(client, deployment)
    rows = client.read_deployment_schedules(target.id)
    for row in rows:
        if row.slug == slug:
            return target, row
    names = ", ".join(str(row.slug) for row in rows) or "none"
    raise ValueError(f"deployment {deployment} has no schedule {slug!r} (it has: {names})")


def set_active(slug: str, active: bool, deployment: str = ANNOTATE_DEPLOYMENT) -> None:
    """Pause (active=False) or resume a schedule; pausing also removes the runs it had scheduled."""
    with _client() as client:
        target, row = _find(client, deployment, slug)
        client.update_deployment_schedule(target.id, row.id, active=active)
        if not active:
            _delete_waiting_runs(client, target.id, row.id)


def _delete_waiting_runs(client, deployment_id: UUID, schedule_id: UUID) -> None:
    """Delete the schedule's runs that no worker has started, those already due included.

    The server, on pausing, deletes only runs due in the future: a run whose start time
    passed a moment ago, not yet picked up by a worker, would still start after the pause.
    The scheduler names its runs by an idempotency key "scheduled <deployment> <schedule> <time>".
    """
    own = f"scheduled {deployment_id} {schedule_id} "
    waiting = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        )
    )
    for flow_run in waiting:
        if flow_run.run_count == 0 and (flow_run.idempotency_key or "").startswith(own):
            try:
                client.delete_flow_run(flow_run.id)
            except ObjectNotFound:  # a worker's or the server's own cleanup came first
                pass


def delete_schedule(slug: str, deployment: str = ANNOTATE_DEPLOYMENT) -> None:
    with _client() as client:
        target, row = _find(client, deployment, slug)
        client.delete_deployment_schedule(target.id, row.id)
