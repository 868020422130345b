"""Exports, and the annotation_provenance view users query for provenance.

The view flattens what a provenance question needs into one row per final
label: the image, its source and split, the run and model, the value and
whether a human or the model produced it, the human source file, the summary
prompt behind a generated value, the samples UAMC drew, the task's
uncertainty, the last step's uncertainty per task, and the image's calls and
cost in that run. It is a plain view (not materialised): the lateral
sub-queries use the unique indexes on (run_id, image_id, ...) so a query for
one image or one run stays an index lookup.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:20:31.347557
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANNOTATION_PROVENANCE = """
CREATE VIEW annotation_provenance AS
SELECT
    a.id AS annotation_id,
    i.id AS image_id,
    i.sha256 AS image_sha256,
    i.original_path,
    sd.name AS source,
    s.external_id AS subject,
    i.split,
    r.id AS run_id,
    r.name AS run_name,
    r.model,
    a.field,
    COALESCE(a.value_text, a.value_number::text, a.value_bool::text) AS value,
    a.value_text,
    a.value_number,
    a.value_bool,
    a.provenance,
    hl.source_file AS human_source_file,
    a.summary_call_id,
    p.name AS summary_prompt_name,
    p.version AS summary_prompt_version,
    a.samples_used,
    a.uncertainty,
    step.uncertainties AS task_uncertainties,
    cost.calls AS image_calls,
    cost.cost_usd AS image_cost_usd
FROM annotations a
JOIN images i ON i.id = a.image_id
JOIN source_datasets sd ON sd.id = i.source_id
JOIN subjects s ON s.id = i.subject_id
JOIN runs r ON r.id = a.run_id
LEFT JOIN human_labels hl ON hl.id = a.human_label_id
LEFT JOIN vllm_calls sc ON sc.id = a.summary_call_id
LEFT JOIN prompts p ON p.sha256 = sc.prompt_sha256
LEFT JOIN LATERAL (
    SELECT u.uncertainties FROM uamc_steps u
    WHERE u.run_id = a.run_id AND u.image_id = a.image_id
    ORDER BY u.step DESC LIMIT 1
) step ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS calls, sum(c.cost_usd) AS cost_usd FROM vllm_calls c
    WHERE c.run_id = a.run_id AND c.image_id = a.image_id
) cost ON true
"""


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("manifest", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_exports_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    op.create_index(op.f("ix_exports_run_id"), "exports", ["run_id"], unique=False)
    op.execute(ANNOTATION_PROVENANCE)


def downgrade() -> None:
    op.execute("DROP VIEW annotation_provenance")
    op.drop_index(op.f("ix_exports_run_id"), table_name="exports")
    op.drop_table("exports")
