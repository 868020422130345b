"""Batch mode: the provider batches of each round, and which batch line each call came from.

A batch-mode run submits each round's calls as OpenAI Batch API batches. The
`api_batches` row is written once the input file is uploaded and before the
batch is created, then updated with the batch id: a crash between creating a
batch and reading its id back is resolved on resume by looking the batch up
by its input file id, so no batch is ever submitted twice. `vllm_calls`
gains the batch id and custom id of the line that answered it (NULL for
calls made online), so a call's provenance names its batch.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "uploaded", "validating", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled", "failed",
    "imported",
)


def upgrade() -> None:
    op.add_column("vllm_calls", sa.Column("batch_id", sa.String(length=200), nullable=True))
    op.add_column("vllm_calls", sa.Column("custom_id", sa.String(length=200), nullable=True))
    op.create_table(
        "api_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input_file_id", sa.String(length=200), nullable=False),
        sa.Column("batch_id", sa.String(length=200), nullable=True),
        sa.Column("output_file_id", sa.String(length=200), nullable=True),
        sa.Column("error_file_id", sa.String(length=200), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("completed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name=op.f("ck_api_batches_status_value")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_api_batches_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_batches")),
        sa.UniqueConstraint("batch_id", name=op.f("uq_api_batches_batch_id")),
        sa.UniqueConstraint("run_id", "round", "part", name=op.f("uq_api_batches_run_id_round_part")),
    )


def downgrade() -> None:
    op.drop_table("api_batches")
    op.drop_column("vllm_calls", "custom_id")
    op.drop_column("vllm_calls", "batch_id")
