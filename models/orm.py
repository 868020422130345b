"""The provenance data model (SQLAlchemy 2, typed). Tables are created only by Alembic.

Every label value carries where it came from: a human source file, or the run,
calls and UAMC steps that generated it. Unique constraints make every write
idempotent, so a resumed run never duplicates a call, a step or a label.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    ColumnElement,
    UniqueConstraint,
    case,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.vocab import BatchStatus, Decision, ImageStatus, RunStatus, Stage, sql_in

# Deterministic constraint names, so migrations can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class LabelValueMixin:
    """One label value in the column of its type (expression: text, VA: number, AU: bool)."""

    value_text: Mapped[str | None] = mapped_column(String(32))
    value_number: Mapped[float | None] = mapped_column(Float)
    value_bool: Mapped[bool | None] = mapped_column(Boolean)

    @property
    def value(self) -> str | float | bool | None:
        if self.value_text is not None:
            return self.value_text
        if self.value_number is not None:
            return self.value_number
        return self.value_bool


def label_columns(value: str | float | bool) -> dict[str, Any]:
    """Column values for a label value of any schema type."""
    if isinstance(value, bool):
        return {"value_text": None, "value_number": None, "value_bool": value}
    if isinstance(value, str):
        return {"value_text": value, "value_number": None, "value_bool": None}
    return {"value_text": None, "value_number": float(value), "value_bool": None}


ONE_VALUE = "num_nonnulls(value_text, value_number, value_bool) = 1"


class SourceDataset(Base):
    __tablename__ = "source_datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: A dataset's name, or `review:<reviewer>` for the labels a person's review decisions wrote.
    name: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = _now()


class Subject(Base):
    """A person. The FEID/FEAB split is decided per subject (stored here) and copied onto images."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("source_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source_datasets.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    split: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[dt.datetime] = _now()


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("split IN ('FEID', 'FEAB')", name="split_value"),
        Index("ix_images_source_split", "source_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    object_key: Mapped[str] = mapped_column(String(300))
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str] = mapped_column(String(16))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    original_path: Mapped[str] = mapped_column(Text)
    source_id: Mapped[int] = mapped_column(ForeignKey("source_datasets.id"))
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    split: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[dt.datetime] = _now()


class HumanLabel(LabelValueMixin, Base):
    """A label a dataset gives an image, or a person's review decision (`review_id`, source
    `review:<reviewer>`, migration 0010). The same bytes in two datasets keep each one's labels
    (unique per image, source and field); readers wanting one value per field order by
    `preferred_last()` and let the last win: a review label over a dataset's (the reviewer looked at
    this image, and may have corrected the dataset), the newest review label first among several,
    then the lowest id, the label of the source that imported the image first."""

    __tablename__ = "human_labels"
    __table_args__ = (
        UniqueConstraint("image_id", "source_id", "field"),
        CheckConstraint(ONE_VALUE, name="one_value"),
        Index("ix_human_labels_field", "field"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    source_id: Mapped[int] = mapped_column(ForeignKey("source_datasets.id"))
    field: Mapped[str] = mapped_column(String(16))
    source_file: Mapped[str] = mapped_column(Text)
    #: The review decision this label records (NULL: a dataset's label).
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), unique=True)
    created_at: Mapped[dt.datetime] = _now()

    @staticmethod
    def preferred_last() -> tuple[ColumnElement[Any], ...]:
        """ORDER BY keys putting the label to use last among an image's labels of one field."""
        return (
            HumanLabel.review_id.is_not(None),
            case((HumanLabel.review_id.is_(None), -HumanLabel.id), else_=HumanLabel.id),
        )


class Run(Base):
    """An annotation (or audit) run: its full configuration, never a secret."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(sql_in("status", RunStatus), name="status_value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), server_default="annotate")
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    model: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]]
    code_version: Mapped[str] = mapped_column(String(64))
    stop_reason: Mapped[str | None] = mapped_column(Text)
    #: Why every worker should stop claiming (cancelled, interrupted, budget); cleared when the run reopens.
    stop_requested: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Prompt(Base):
    """A rendered prompt, stored once and referenced by its sha256."""

    __tablename__ = "prompts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()


class RunImage(Base):
    """Per-run state of one image: the system of record for resume."""

    __tablename__ = "run_images"
    __table_args__ = (
        Index("ix_run_images_run_status", "run_id", "status"),
        Index(
            "ix_run_images_claimable", "run_id", "image_id", postgresql_where=text("status IN ('pending', 'sampling')")
        ),
        CheckConstraint(sql_in("status", ImageStatus), name="status_value"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    samples_used: Mapped[int] = mapped_column(Integer, server_default="0")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    consistency_flags: Mapped[list[Any]] = mapped_column(JSONB, server_default="[]")
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    #: The worker holding the image (tasks/leases.py) and until when; an expired lease is claimable again.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class VLLMCall(Base):
    __tablename__ = "vllm_calls"
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", "stage", "sample_index"),
        CheckConstraint(sql_in("stage", Stage), name="stage_value"),
        Index("ix_vllm_calls_image", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    stage: Mapped[str] = mapped_column(String(16))
    #: Order of the call within (run, image, stage), invalid answers included.
    sample_index: Mapped[int]
    prompt_sha256: Mapped[str] = mapped_column(ForeignKey("prompts.sha256"))
    request_params: Mapped[dict[str, Any]]
    raw_text: Mapped[str] = mapped_column(Text)
    parsed: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    valid: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    #: Of tokens_in, those the provider served from its prompt cache (usage.prompt_tokens_details.cached_tokens).
    tokens_cached: Mapped[int] = mapped_column(server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(12, 6))
    latency_s: Mapped[float]
    attempts: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    #: Batch mode: the provider's batch id and the line's custom_id (run/image/stage/index); NULL online.
    batch_id: Mapped[str | None] = mapped_column(String(200))
    custom_id: Mapped[str | None] = mapped_column(String(200))


class ApiBatch(Base):
    """One batch of a batch-mode run's round, recorded before it is submitted (a resume never submits twice)."""

    __tablename__ = "api_batches"
    __table_args__ = (
        UniqueConstraint("run_id", "round", "part"),
        CheckConstraint(sql_in("status", BatchStatus), name="status_value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    round: Mapped[int]
    part: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    input_file_id: Mapped[str] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    output_file_id: Mapped[str | None] = mapped_column(String(200))
    error_file_id: Mapped[str | None] = mapped_column(String(200))
    request_count: Mapped[int]
    completed_count: Mapped[int] = mapped_column(server_default="0")
    failed_count: Mapped[int] = mapped_column(server_default="0")
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = _now()


class UAMCStep(Base):
    """One draw of Algorithm 1 (lines 4-13): uncertainties, p_acc (Eq. 4), p and the decision."""

    __tablename__ = "uamc_steps"
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", "step"),
        CheckConstraint(sql_in("decision", Decision), name="decision_value"),
        Index("ix_uamc_steps_u_max", "u_max"),
        Index("ix_uamc_steps_image", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    step: Mapped[int]
    valid_samples: Mapped[int]
    #: Normalised uncertainty per task, e.g. {"expression": 0.43, "au": 0.12}.
    uncertainties: Mapped[dict[str, Any]]
    u_max: Mapped[float]
    p_acc: Mapped[float | None] = mapped_column(Float)
    p: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = _now()


class Annotation(LabelValueMixin, Base):
    """The final value of one field of one image in one run, with its provenance."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", "field"),
        CheckConstraint(ONE_VALUE, name="one_value"),
        CheckConstraint(
            "(provenance = 'human' AND human_label_id IS NOT NULL)"
            " OR (provenance = 'generated' AND summary_call_id IS NOT NULL)",
            name="provenance_link",
        ),
        Index(
            "ix_annotations_generated_uncertainty",
            "field",
            "uncertainty",
            "id",
            postgresql_where=text("provenance = 'generated'"),
        ),
        Index("ix_annotations_image", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    field: Mapped[str] = mapped_column(String(16))
    provenance: Mapped[str] = mapped_column(String(16))
    human_label_id: Mapped[int | None] = mapped_column(ForeignKey("human_labels.id"))
    summary_call_id: Mapped[int | None] = mapped_column(ForeignKey("vllm_calls.id"))
    #: Normalised UAMC uncertainty of the field's task at the last step (generated only).
    uncertainty: Mapped[float | None] = mapped_column(Float)
    samples_used: Mapped[int | None]
    created_at: Mapped[dt.datetime] = _now()


class Review(Base):
    """A person's decision on one generated field (migration 0009); `call_id` is the reviewed summary call."""

    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("run_id", "image_id", "field"),
        CheckConstraint("decision IN ('accept', 'correct', 'reject')", name="decision_value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    field: Mapped[str] = mapped_column(String(16))
    model_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    reviewer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))
    corrected_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    call_id: Mapped[int | None] = mapped_column(ForeignKey("vllm_calls.id"))
    reviewed_at: Mapped[dt.datetime] = _now()


class RunCallTotal(Base):
    """Calls, tokens and cost of a run per stage, kept current by a trigger on vllm_calls (migration 0005).

    Each connection adds to its own `slot`, so concurrent writers never wait on one row: sum the slots.
    """

    __tablename__ = "run_call_totals"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    invalid: Mapped[int] = mapped_column(BigInteger)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    tokens_cached: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(16, 6))
    latency_s: Mapped[float]


class LabelTotal(Base):
    """Final labels per run, source, field and provenance, kept current by a trigger on annotations."""

    __tablename__ = "label_totals"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source_datasets.id"), primary_key=True)
    field: Mapped[str] = mapped_column(String(16), primary_key=True)
    provenance: Mapped[str] = mapped_column(String(16), primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    labels: Mapped[int] = mapped_column(BigInteger)
    uncertainty_sum: Mapped[float]
    uncertainty_n: Mapped[int] = mapped_column(BigInteger)


class RateBucket(Base):
    """A token bucket per endpoint shared by every worker (tasks/shared_limit.py): requests and tokens left."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    requests: Mapped[float]
    tokens: Mapped[float]
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())


class Instruction(Base):
    __tablename__ = "instructions"
    __table_args__ = (UniqueConstraint("run_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    template_id: Mapped[int]
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    rewrite_call_id: Mapped[int | None] = mapped_column(ForeignKey("vllm_calls.id"))
    created_at: Mapped[dt.datetime] = _now()


class Export(Base):
    """An FEID export of a run: where it is and the manifest written beside it."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    records: Mapped[int]
    manifest: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = _now()


class TrainingRun(Base):
    """A fine-tune of a base checkpoint on an export: lineage export → training run → checkpoints."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id"), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    device: Mapped[str | None] = mapped_column(String(32))
    final_uri: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    code_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _now()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("training_run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()


class BenchmarkRun(Base):
    """One model scored on FEAB: a checkpoint (in-process) or an OpenAI-compatible endpoint."""

    __tablename__ = "benchmark_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(Text)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"), index=True)
    prompt_sha256: Mapped[str] = mapped_column(ForeignKey("prompts.sha256"))
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    code_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _now()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class BenchmarkAnswer(Base):
    """A model's raw answer for one FEAB image and what the parser read from it."""

    __tablename__ = "benchmark_answers"
    __table_args__ = (UniqueConstraint("benchmark_run_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    benchmark_run_id: Mapped[int] = mapped_column(ForeignKey("benchmark_runs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    raw_text: Mapped[str] = mapped_column(Text)
    parsed: Mapped[dict[str, Any]]
    parse_method: Mapped[str] = mapped_column(String(8))
    problems: Mapped[list[Any]] = mapped_column(JSONB, server_default="[]")
    created_at: Mapped[dt.datetime] = _now()
