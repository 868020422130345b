"""Cached prompt tokens per call, and in the per-run totals.

OpenAI (and vLLM with --enable-prompt-tokens-details) report how many of a
call's prompt tokens came from the prefix cache; they are billed at the model's
cached-input rate (tasks/prices.py). `vllm_calls.tokens_cached` keeps that
count (0 for calls stored before this revision, and for endpoints that do not
report it); `run_call_totals.tokens_cached` sums it per run and stage, kept by
the same statement-level trigger as the other totals (migration 0005), so
`seke runs show` splits fresh, cached and output tokens without a scan.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = 8


def _count_calls(cached: bool) -> str:
    """The trigger function of migration 0005, with or without the cached-token sum."""
    column, total, update = (
        (", tokens_cached", ", sum(tokens_cached)", ", tokens_cached = t.tokens_cached + excluded.tokens_cached")
        if cached
        else ("", "", "")
    )
    return f"""
CREATE OR REPLACE FUNCTION seke_count_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_call_totals AS t
        (run_id, stage, slot, calls, invalid, tokens_in, tokens_out, cost_usd, latency_s{column})
    SELECT run_id, stage, pg_backend_pid() % {SLOTS}, count(*), count(*) FILTER (WHERE NOT valid),
           sum(tokens_in), sum(tokens_out), sum(cost_usd), sum(latency_s){total}
    FROM new_calls GROUP BY run_id, stage ORDER BY run_id, stage  -- one lock order: no deadlocks
    ON CONFLICT (run_id, stage, slot) DO UPDATE SET
        calls = t.calls + excluded.calls, invalid = t.invalid + excluded.invalid,
        tokens_in = t.tokens_in + excluded.tokens_in, tokens_out = t.tokens_out + excluded.tokens_out,
        cost_usd = t.cost_usd + excluded.cost_usd, latency_s = t.latency_s + excluded.latency_s{update};
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.add_column("vllm_calls", sa.Column("tokens_cached", sa.Integer(), server_default="0", nullable=False))
    op.add_column("run_call_totals", sa.Column("tokens_cached", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(_count_calls(cached=True))


def downgrade() -> None:
    op.execute(_count_calls(cached=False))
    op.drop_column("run_call_totals", "tokens_cached")
    op.drop_column("vllm_calls", "tokens_cached")
