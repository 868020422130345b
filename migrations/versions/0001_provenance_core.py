"""Provenance core: images, human labels, runs, prompts, calls, UAMC steps, annotations.

Everything the annotation engine writes lands here. Unique constraints on
(run, image, stage, sample_index), (run, image, step) and (run, image, field)
are what make a resumed run idempotent: a retried write hits the constraint
instead of duplicating a paid call.

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 02:15:05.279609
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('prompts',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_prompts'))
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='annotate', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('stop_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_runs_name'))
    )
    op.create_table('source_datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_datasets')),
    sa.UniqueConstraint('name', name=op.f('uq_source_datasets_name'))
    )
    op.create_table('subjects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('split', sa.String(length=4), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['source_id'], ['source_datasets.id'], name=op.f('fk_subjects_source_id_source_datasets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subjects')),
    sa.UniqueConstraint('source_id', 'external_id', name=op.f('uq_subjects_source_id_external_id'))
    )
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=300), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('byte_size', sa.BigInteger(), nullable=False),
    sa.Column('original_path', sa.Text(), nullable=False),
    sa.Column('source_id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=4), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("split IN ('FEID', 'FEAB')", name=op.f('ck_images_split_value')),
    sa.ForeignKeyConstraint(['source_id'], ['source_datasets.id'], name=op.f('fk_images_source_id_source_datasets')),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_images_subject_id_subjects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('sha256', name=op.f('uq_images_sha256'))
    )
    op.create_index('ix_images_source_split', 'images', ['source_id', 'split'], unique=False)
    op.create_index(op.f('ix_images_subject_id'), 'images', ['subject_id'], unique=False)
    op.create_table('human_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('field', sa.String(length=16), nullable=False),
    sa.Column('source_file', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('value_text', sa.String(length=32), nullable=True),
    sa.Column('value_number', sa.Float(), nullable=True),
    sa.Column('value_bool', sa.Boolean(), nullable=True),
    sa.CheckConstraint('num_nonnulls(value_text, value_number, value_bool) = 1', name=op.f('ck_human_labels_one_value')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_human_labels_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_human_labels')),
    sa.UniqueConstraint('image_id', 'field', name=op.f('uq_human_labels_image_id_field'))
    )
    op.create_index('ix_human_labels_field', 'human_labels', ['field'], unique=False)
    op.create_table('run_images',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('samples_used', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('consistency_flags', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_run_images_image_id_images')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_images_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'image_id', name=op.f('pk_run_images'))
    )
    op.create_index('ix_run_images_run_status', 'run_images', ['run_id', 'status'], unique=False)
    op.create_table('uamc_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('valid_samples', sa.Integer(), nullable=False),
    sa.Column('uncertainties', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('u_max', sa.Double(), nullable=False),
    sa.Column('p_acc', sa.Float(), nullable=True),
    sa.Column('p', sa.Float(), nullable=True),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("decision IN ('sample', 'stop', 'max-reached')", name=op.f('ck_uamc_steps_decision_value')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_uamc_steps_image_id_images')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_uamc_steps_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_uamc_steps')),
    sa.UniqueConstraint('run_id', 'image_id', 'step', name=op.f('uq_uamc_steps_run_id_image_id_step'))
    )
    op.create_index('ix_uamc_steps_u_max', 'uamc_steps', ['u_max'], unique=False)
    op.create_table('vllm_calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('request_params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('raw_text', sa.Text(), nullable=False),
    sa.Column('parsed', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('valid', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Numeric(precision=12, scale=6), nullable=False),
    sa.Column('latency_s', sa.Double(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("stage IN ('prior-sample', 'summary', 'rewrite')", name=op.f('ck_vllm_calls_stage_value')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_vllm_calls_image_id_images')),
    sa.ForeignKeyConstraint(['prompt_sha256'], ['prompts.sha256'], name=op.f('fk_vllm_calls_prompt_sha256_prompts')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_vllm_calls_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vllm_calls')),
    sa.UniqueConstraint('run_id', 'image_id', 'stage', 'sample_index', name=op.f('uq_vllm_calls_run_id_image_id_stage_sample_index'))
    )
    op.create_index('ix_vllm_calls_image', 'vllm_calls', ['image_id'], unique=False)
    op.create_table('annotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('field', sa.String(length=16), nullable=False),
    sa.Column('provenance', sa.String(length=16), nullable=False),
    sa.Column('human_label_id', sa.Integer(), nullable=True),
    sa.Column('summary_call_id', sa.Integer(), nullable=True),
    sa.Column('uncertainty', sa.Float(), nullable=True),
    sa.Column('samples_used', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('value_text', sa.String(length=32), nullable=True),
    sa.Column('value_number', sa.Float(), nullable=True),
    sa.Column('value_bool', sa.Boolean(), nullable=True),
    sa.CheckConstraint("(provenance = 'human' AND human_label_id IS NOT NULL) OR (provenance = 'generated' AND summary_call_id IS NOT NULL)", name=op.f('ck_annotations_provenance_link')),
    sa.CheckConstraint('num_nonnulls(value_text, value_number, value_bool) = 1', name=op.f('ck_annotations_one_value')),
    sa.ForeignKeyConstraint(['human_label_id'], ['human_labels.id'], name=op.f('fk_annotations_human_label_id_human_labels')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_annotations_image_id_images')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_annotations_run_id_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['summary_call_id'], ['vllm_calls.id'], name=op.f('fk_annotations_summary_call_id_vllm_calls')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotations')),
    sa.UniqueConstraint('run_id', 'image_id', 'field', name=op.f('uq_annotations_run_id_image_id_field'))
    )
    op.create_index('ix_annotations_field_uncertainty', 'annotations', ['field', 'uncertainty'], unique=False)
    op.create_index('ix_annotations_image', 'annotations', ['image_id'], unique=False)
    op.create_table('instructions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('rewrite_call_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_instructions_image_id_images')),
    sa.ForeignKeyConstraint(['rewrite_call_id'], ['vllm_calls.id'], name=op.f('fk_instructions_rewrite_call_id_vllm_calls')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_instructions_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instructions')),
    sa.UniqueConstraint('run_id', 'image_id', name=op.f('uq_instructions_run_id_image_id'))
    )


def downgrade() -> None:
    op.drop_table('instructions')
    op.drop_index('ix_annotations_image', table_name='annotations')
    op.drop_index('ix_annotations_field_uncertainty', table_name='annotations')
    op.drop_table('annotations')
    op.drop_index('ix_vllm_calls_image', table_name='vllm_calls')
    op.drop_table('vllm_calls')
    op.drop_index('ix_uamc_steps_u_max', table_name='uamc_steps')
    op.drop_table('uamc_steps')
    op.drop_index('ix_run_images_run_status', table_name='run_images')
    op.drop_table('run_images')
    op.drop_index('ix_human_labels_field', table_name='human_labels')
    op.drop_table('human_labels')
    op.drop_index(op.f('ix_images_subject_id'), table_name='images')
    op.drop_index('ix_images_source_split', table_name='images')
    op.drop_table('images')
    op.drop_table('subjects')
    op.drop_table('source_datasets')
    op.drop_table('runs')
    op.drop_table('prompts')
