"""Training and benchmark lineage: export → training run → checkpoints → benchmark runs → answers.

Benchmark answers keep the model's raw text next to what the parser read, so
a parser change can be re-scored without calling the model again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 02:28:41.856998
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('device', sa.String(length=32), nullable=True),
    sa.Column('final_uri', sa.Text(), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], name=op.f('fk_training_runs_export_id_exports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_training_runs_name'))
    )
    op.create_index(op.f('ix_training_runs_export_id'), 'training_runs', ['export_id'], unique=False)
    op.create_table('benchmark_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model_kind', sa.String(length=16), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('scores', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['prompt_sha256'], ['prompts.sha256'], name=op.f('fk_benchmark_runs_prompt_sha256_prompts')),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id'], name=op.f('fk_benchmark_runs_training_run_id_training_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_benchmark_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_benchmark_runs_name'))
    )
    op.create_index(op.f('ix_benchmark_runs_training_run_id'), 'benchmark_runs', ['training_run_id'], unique=False)
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id'], name=op.f('fk_checkpoints_training_run_id_training_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoints')),
    sa.UniqueConstraint('training_run_id', 'step', name=op.f('uq_checkpoints_training_run_id_step'))
    )
    op.create_table('benchmark_answers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('benchmark_run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('raw_text', sa.Text(), nullable=False),
    sa.Column('parsed', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('parse_method', sa.String(length=8), nullable=False),
    sa.Column('problems', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['benchmark_run_id'], ['benchmark_runs.id'], name=op.f('fk_benchmark_answers_benchmark_run_id_benchmark_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_benchmark_answers_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_benchmark_answers')),
    sa.UniqueConstraint('benchmark_run_id', 'image_id', name=op.f('uq_benchmark_answers_benchmark_run_id_image_id'))
    )


def downgrade() -> None:
    op.drop_table('benchmark_answers')
    op.drop_table('checkpoints')
    op.drop_index(op.f('ix_benchmark_runs_training_run_id'), table_name='benchmark_runs')
    op.drop_table('benchmark_runs')
    op.drop_index(op.f('ix_training_runs_export_id'), table_name='training_runs')
    op.drop_table('training_runs')
