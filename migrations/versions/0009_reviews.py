"""Human review of generated labels, and the queue of what to review first.

`reviews` keeps one row per reviewed (run, image, field): the model's value and
UAMC uncertainty at review time, the reviewer, the decision (accept/correct/reject),
the corrected value, when, and the summary call whose answer was reviewed.
`review_queue` lists a run's generated annotations not yet reviewed, most
uncertain first, with the image's source and its knowledge-consistency flags.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE = """
CREATE VIEW review_queue AS
SELECT a.run_id, r.name AS run_name, a.image_id, i.sha256, s.name AS source, a.field,
       a.value_text, a.value_number, a.value_bool, a.uncertainty, a.summary_call_id,
       ri.consistency_flags, jsonb_array_length(ri.consistency_flags) > 0 AS inconsistent
FROM annotations a
JOIN runs r ON r.id = a.run_id
JOIN images i ON i.id = a.image_id
JOIN source_datasets s ON s.id = i.source_id
JOIN run_images ri ON ri.run_id = a.run_id AND ri.image_id = a.image_id
WHERE a.provenance = 'generated'
  AND NOT EXISTS (SELECT 1 FROM reviews v WHERE v.run_id = a.run_id AND v.image_id = a.image_id AND v.field = a.field)
"""


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("field", sa.String(16), nullable=False),
        sa.Column("model_value", postgresql.JSONB(), nullable=True),
        sa.Column("uncertainty", sa.Float(), nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("corrected_value", postgresql.JSONB(), nullable=True),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("vllm_calls.id"), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("run_id", "image_id", "field", name="uq_reviews_run_id_image_id_field"),
        sa.CheckConstraint("decision IN ('accept', 'correct', 'reject')", name="ck_reviews_decision_value"),
    )
    op.execute(QUEUE)


def downgrade() -> None:
    op.execute("DROP VIEW review_queue")
    op.drop_table("reviews")
