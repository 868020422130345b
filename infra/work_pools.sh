#!/bin/sh
# Work pools and concurrency limits for the compose stack. Safe to re-run.
#   docker compose run --rm seke sh infra/work_pools.sh
# (The workers would create their pools on first start too, but without the
# limits below; run this before infra/deployments.py, which needs the pools.)
set -eu

# cpu: annotate, audit, pipeline (infra/deployments.py). No pool-wide limit:
# these runs wait on the model endpoint, not on this host's CPUs, and each
# process's client keeps to the endpoint's rate (SEKE_REQUESTS_PER_MINUTE).
prefect work-pool create cpu --type process --overwrite

# gpu: finetune, benchmark. One flow run at a time: each may put a model on
# every GPU the worker has (the compose file gives it all of them).
prefect work-pool create gpu --type process --overwrite
prefect work-pool set-concurrency-limit gpu 1

# vllm-requests: a coarse cap on model requests in flight across all processes
# (each process's client-side limiter, SEKE_REQUESTS_PER_MINUTE and
# SEKE_TOKENS_PER_MINUTE, knows only its own traffic). Set
# SEKE_PREFECT_CONCURRENCY_LIMIT=vllm-requests and each image being annotated
# holds one slot, so the limit caps images in flight across all processes.
# Keep the fine-grained limiting client-side: measured here, Prefect's
# server-side limits admit well under their caps.
limit="${VLLM_REQUESTS_LIMIT:-64}"
if prefect gcl inspect vllm-requests >/dev/null 2>&1; then
    prefect gcl update vllm-requests --limit "$limit"
else
    prefect gcl create vllm-requests --limit "$limit"
fi
