"""Register (or update) the Prefect deployments of every flow against the compose stack.

Run it after the work pools exist (infra/work_pools.sh):

    docker compose run --rm seke python infra/deployments.py

The deployments themselves (flow entrypoints, work pools, the trigger chain)
are defined in flows/deployments.py; this file is only the entry point.
"""

from __future__ import annotations

from flows.deployments import deploy_all

if __name__ == "__main__":
    for deployment_id in deploy_all():
        print(deployment_id)
