"""Prefect deployments of the platform's flows, and the trigger chain that starts them.

One deployment per flow, on the `cpu` or `gpu` work pool. Entrypoints are
module paths (`flows.annotate.annotate_flow`), not file paths: the workers run
our image, where `pip install .` put the `flows` package on sys.path, so a flow
run imports its flow from there and the deployment needs no code storage and
no pull step.

The trigger chain (annotate → export → fine-tune → benchmark via deployments):
the pipeline flow starts the fine-tune deployment with `trigger`, and the
fine-tune flow starts the benchmark deployment the same way when it completes.
`trigger` uses `run_deployment(timeout=0, idempotency_key=...)` with keys
derived from the run names, so a retried trigger returns the flow run it
already started instead of starting a duplicate; our own tables are keyed by
the same names, so even a duplicate that got through would resume rather than
redo the work.

Importing this module imports neither Prefect nor any flow (nor, through them,
torch): each flow is loaded by its entrypoint only when its deployment is
built, so every flow may import `trigger` from here without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

# key: (entrypoint, work pool). The key is the flow's name (its @flow(name=...))
# and its deployment's name alike.
FLOWS: dict[str, tuple[str, str]] = {
    "annotate": ("flows.annotate.annotate_flow", "cpu"),
    # One of K workers of an annotate run (`seke annotate --workers K --via-deployments`).
    "annotate-worker": ("flows.annotate.annotate_worker", "cpu"),
    "finetune": ("flows.finetune.finetune_flow", "gpu"),
    "benchmark": ("flows.benchmark.benchmark_flow", "gpu"),
    "audit": ("flows.audit.audit_flow", "cpu"),
    # The pipeline annotates in-process and hands training to the gpu pool's deployment.
    "pipeline": ("flows.pipeline.pipeline_flow", "cpu"),
}

# "flow-name/deployment-name", as `run_deployment` and `prefect deployment run` take them.
DEPLOYMENTS: dict[str, str] = {key: f"{key}/{key}" for key in FLOWS}


def trigger(flow_key: str, parameters: dict[str, Any], *, key: str) -> FlowRun:
    """Start a deployment without waiting; the same key returns the same flow run (no duplicate)."""
    from prefect.deployments import run_deployment

    return run_deployment(name=DEPLOYMENTS[flow_key], parameters=parameters, timeout=0, idempotency_key=key)


def build_deployment(key: str) -> RunnerDeployment:
    """The deployment of flow `key`, ready to apply; imports the flow's module."""
    from prefect.deployments.runner import EntrypointType
    from prefect.flows import load_flow_from_entrypoint

    entrypoint, work_pool = FLOWS[key]
    flow = load_flow_from_entrypoint(entrypoint)
    if flow.name != key:
        raise ValueError(
            f"{entrypoint} is the flow {flow.name!r}, but DEPLOYMENTS names it {key!r}: "
            f"give it @flow(name={key!r}) or change FLOWS in flows/deployments.py"
        )
    return flow.to_deployment(name=key, work_pool_name=work_pool, entrypoint_type=EntrypointType.MODULE_PATH)


def deploy_all() -> list[str]:
    """Create or update every deployment; returns their ids.

    Applies each deployment itself rather than through `prefect.deploy`: with
    prefect 3.8.8 and fastapi 0.154.0 (the pair pyproject.toml pins), the
    server answers 422 to the worker listing `deploy` makes first.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for work_pool in sorted({pool for _, pool in FLOWS.values()}):
            try:
                client.read_work_pool(work_pool)
            except ObjectNotFound:
                raise ValueError(
                    f"work pool {work_pool!r} does not exist: create the pools first "
                    "(docker compose run --rm seke sh infra/work_pools.sh)"
                ) from None
    return [str(build_deployment(key).apply()) for key in FLOWS]
