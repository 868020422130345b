"""Runs shared by many workers, and provenance queries that stay fast at a million images.

Work distribution (one run, many processes on many machines):
- run_images.lease_owner / lease_expires_at: a worker claims images with
  `SELECT … FOR UPDATE SKIP LOCKED` and holds them under a lease it renews; an
  image whose lease expired (its worker died) is claimable again, and its
  stored calls are replayed, so nothing completed is paid twice. The partial
  index covers exactly the claimable rows, so a claim stays an index probe
  however many images are done.
- runs.stop_requested: a cancel, Ctrl-C or budget seen by one worker (or the
  parent flow) is written here and every worker stops claiming.
- rate_buckets: one token bucket per endpoint, updated atomically by every
  worker, so the provider's requests/tokens per minute hold for all of them
  together.

Provenance at scale (bench/provenance.py, bench/README.md):
- run_call_totals and label_totals are summary tables kept current by
  statement-level triggers on vllm_calls and annotations (calls and labels are
  only ever inserted). Each connection adds to its own slot
  (pg_backend_pid() % 8) so concurrent writers do not queue on one hot row;
  readers sum the slots. They answer "cost per run and stage" and "labels per
  source and field" from a few hundred rows instead of scanning millions; run
  budgets read them too.
- uamc_steps(image_id): one image's UAMC decisions across runs.
- annotations(field, uncertainty, id) for generated labels only: "generated
  labels of a field above an uncertainty, most uncertain first" reads its first
  page straight off the index (and pages by keyset). It replaces
  ix_annotations_field_uncertainty, whose human rows (uncertainty NULL) no
  query wanted.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = 8

COUNT_CALLS = f"""
CREATE FUNCTION seke_count_calls() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_call_totals AS t
        (run_id, stage, slot, calls, invalid, tokens_in, tokens_out, cost_usd, latency_s)
    SELECT run_id, stage, pg_backend_pid() % {SLOTS}, count(*), count(*) FILTER (WHERE NOT valid),
           sum(tokens_in), sum(tokens_out), sum(cost_usd), sum(latency_s)
    FROM new_calls GROUP BY run_id, stage ORDER BY run_id, stage  -- one lock order: no deadlocks
    ON CONFLICT (run_id, stage, slot) DO UPDATE SET
        calls = t.calls + excluded.calls, invalid = t.invalid + excluded.invalid,
        tokens_in = t.tokens_in + excluded.tokens_in, tokens_out = t.tokens_out + excluded.tokens_out,
        cost_usd = t.cost_usd + excluded.cost_usd, latency_s = t.latency_s + excluded.latency_s;
    RETURN NULL;
END $$;
CREATE TRIGGER vllm_calls_totals AFTER INSERT ON vllm_calls
    REFERENCING NEW TABLE AS new_calls FOR EACH STATEMENT EXECUTE FUNCTION seke_count_calls();
"""

COUNT_LABELS = f"""
CREATE FUNCTION seke_count_labels() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO label_totals AS t
        (run_id, source_id, field, provenance, slot, labels, uncertainty_sum, uncertainty_n)
    SELECT a.run_id, i.source_id, a.field, a.provenance, pg_backend_pid() % {SLOTS}, count(*),
           coalesce(sum(a.uncertainty), 0), count(a.uncertainty)
    FROM new_labels a JOIN images i ON i.id = a.image_id
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, source_id, field, provenance, slot) DO UPDATE SET
        labels = t.labels + excluded.labels,
        uncertainty_sum = t.uncertainty_sum + excluded.uncertainty_sum,
        uncertainty_n = t.uncertainty_n + excluded.uncertainty_n;
    RETURN NULL;
END $$;
CREATE TRIGGER annotations_totals AFTER INSERT ON annotations
    REFERENCING NEW TABLE AS new_labels FOR EACH STATEMENT EXECUTE FUNCTION seke_count_labels();
"""

# One atomic step of an endpoint's shared token bucket (tasks/shared_limit.py): refill by the time
# elapsed since the last step, then take the request and its tokens if both fit. Returns 0 when
# taken, else the seconds until they would fit. A request larger than the token bucket waits for
# a full bucket and leaves it in debt, as the in-process limiter does.
RATE_TAKE = """
CREATE FUNCTION seke_rate_take(bucket text, want_requests float8, want_tokens float8,
                               request_capacity float8, token_capacity float8,
                               request_rate float8, token_rate float8) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    r float8; t float8; updated timestamptz; now_ timestamptz;
    needed float8 := least(want_tokens, token_capacity);
BEGIN
    INSERT INTO rate_buckets (key, requests, tokens) VALUES (bucket, request_capacity, token_capacity)
    ON CONFLICT (key) DO NOTHING;
    SELECT requests, tokens, updated_at INTO r, t, updated FROM rate_buckets WHERE key = bucket FOR UPDATE;
    now_ := clock_timestamp();  -- after the lock: time spent waiting for it counts as refill
    r := least(request_capacity, r + greatest(0, extract(epoch FROM now_ - updated)) * request_rate);
    t := least(token_capacity, t + greatest(0, extract(epoch FROM now_ - updated)) * token_rate);
    IF r >= want_requests AND t >= needed THEN
        UPDATE rate_buckets SET requests = r - want_requests, tokens = t - want_tokens, updated_at = now_ WHERE key = bucket;
        RETURN 0;
    END IF;
    UPDATE rate_buckets SET requests = r, tokens = t, updated_at = now_ WHERE key = bucket;
    RETURN greatest((want_requests - r) / request_rate, (needed - t) / token_rate, 0.001);
END $$;
"""

# Rows written before this revision (and bench/provenance.py's bulk load, which bypasses triggers).
BACKFILL = """
INSERT INTO run_call_totals (run_id, stage, slot, calls, invalid, tokens_in, tokens_out, cost_usd, latency_s)
SELECT run_id, stage, 0, count(*), count(*) FILTER (WHERE NOT valid), sum(tokens_in), sum(tokens_out),
       sum(cost_usd), sum(latency_s)
FROM vllm_calls GROUP BY run_id, stage;
INSERT INTO label_totals (run_id, source_id, field, provenance, slot, labels, uncertainty_sum, uncertainty_n)
SELECT a.run_id, i.source_id, a.field, a.provenance, 0, count(*), coalesce(sum(a.uncertainty), 0), count(a.uncertainty)
FROM annotations a JOIN images i ON i.id = a.image_id GROUP BY 1, 2, 3, 4;
"""


def upgrade() -> None:
    op.add_column("runs", sa.Column("stop_requested", sa.Text(), nullable=True))
    op.add_column("run_images", sa.Column("lease_owner", sa.String(length=64), nullable=True))
    op.add_column("run_images", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_run_images_claimable",
        "run_images",
        ["run_id", "image_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'sampling')"),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("requests", sa.Double(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_buckets")),
    )
    op.create_table(
        "run_call_totals",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("invalid", sa.BigInteger(), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=16, scale=6), nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_call_totals_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "stage", "slot", name=op.f("pk_run_call_totals")),
    )
    op.create_table(
        "label_totals",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("provenance", sa.String(length=16), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("labels", sa.BigInteger(), nullable=False),
        sa.Column("uncertainty_sum", sa.Double(), nullable=False),
        sa.Column("uncertainty_n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_label_totals_run_id_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["source_id"], ["source_datasets.id"], name=op.f("fk_label_totals_source_id_source_datasets")),
        sa.PrimaryKeyConstraint("run_id", "source_id", "field", "provenance", "slot", name=op.f("pk_label_totals")),
    )
    op.execute(RATE_TAKE)
    op.execute(COUNT_CALLS)
    op.execute(COUNT_LABELS)
    op.execute(BACKFILL)
    op.create_index("ix_uamc_steps_image", "uamc_steps", ["image_id"], unique=False)
    op.drop_index("ix_annotations_field_uncertainty", table_name="annotations")
    op.create_index(
        "ix_annotations_generated_uncertainty",
        "annotations",
        ["field", "uncertainty", "id"],
        unique=False,
        postgresql_where=sa.text("provenance = 'generated'"),
    )


def downgrade() -> None:
    op.drop_index("ix_annotations_generated_uncertainty", table_name="annotations")
    op.create_index("ix_annotations_field_uncertainty", "annotations", ["field", "uncertainty"], unique=False)
    op.drop_index("ix_uamc_steps_image", table_name="uamc_steps")
    op.execute("DROP TRIGGER annotations_totals ON annotations; DROP FUNCTION seke_count_labels()")
    op.execute("DROP TRIGGER vllm_calls_totals ON vllm_calls; DROP FUNCTION seke_count_calls()")
    op.drop_table("label_totals")
    op.drop_table("run_call_totals")
    op.execute("DROP FUNCTION seke_rate_take(text, float8, float8, float8, float8, float8, float8)")
    op.drop_table("rate_buckets")
    op.drop_index("ix_run_images_claimable", table_name="run_images")
    op.drop_column("run_images", "lease_expires_at")
    op.drop_column("run_images", "lease_owner")
    op.drop_column("runs", "stop_requested")
