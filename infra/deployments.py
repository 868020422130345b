"""Prefect deployments of the platform's flows, one per flow, on the `cpu` or `gpu` work pool.

Register (or update) them all against the compose stack, after the work pools
exist (infra/work_pools.sh):

    docker compose run --rm seke python infra/deployments.py

Entrypoints are module paths (`flows.annotate.annotate_flow`), not file paths:
the workers run our image, where `pip install .` put the `flows` package on
sys.path, so a flow run imports its flow from there and the deployment needs
no code storage and no pull step.

Importing this module imports neither Prefect nor the flows (nor, through
them, torch): each flow is loaded only when its deployment is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def build_deployment(key: str) -> RunnerDeployment:
    """The deployment of flow `key`, ready to apply; imports the flow's module."""
    from prefect.deployments.runner import EntrypointType
    from prefect.flows import load_flow_from_entrypoint

    entrypoint, work_pool = FLOWS[key]
    flow = load_flow_from_entrypoint(entrypoint)
    if flow.name != key:
        raise ValueError(
            f"{entrypoint} is the flow {flow.name!r}, but DEPLOYMENTS names it {key!r}: "
            f"give it @flow(name={key!r}) or change FLOWS and DEPLOYMENTS in infra/deployments.py"
        )
    return flow.to_deployment(name=key, work_pool_name=work_pool, entrypoint_type=EntrypointType.MODULE_PATH)


def deploy_all() -> list[str]:
    """Create or update every deployment; returns their ids.

    Applies each deployment itself rather than through `prefect.deploy`, which
    also builds images and checks for workers; here the image and the workers
    come from the compose file.
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


if __name__ == "__main__":
    deploy_all()
