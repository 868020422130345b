"""The words stored in the provenance database: call stages, run and image statuses, UAMC decisions.

One definition each, shared by the code (StrEnum members compare equal to
their strings), the ORM's CHECK constraints (`sql_in`) and the docs. The
values are what the database stores; a change of a value needs a migration
that rewrites the stored rows and the constraint.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """vllm_calls.stage: which step of SEKE a model call belongs to."""

    SAMPLE = "prior-sample"  # a prior-knowledge UAMC sample (paper §3.1)
    SUMMARY = "summary"  # self-verification (§3.2)
    REWRITE = "rewrite"  # the instruction's answer


class ImageStatus(StrEnum):
    """run_images.status: where one image of one run stands (the system of record for resume)."""

    PENDING = "pending"  # no call stored yet
    SAMPLING = "sampling"  # calls stored, final rows not yet
    DONE = "done"  # final annotations and instruction committed
    FAILED = "failed"  # with failure_reason; retried when the run is resumed


class RunStatus(StrEnum):
    """runs.status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # every image done
    STOPPED = "stopped"  # a budget or an abort ended it early; resumable
    FAILED = "failed"  # some images failed; resumable


class Decision(StrEnum):
    """uamc_steps.decision: Algorithm 1's choice after a step."""

    SAMPLE = "sample"  # p < p_acc: draw one more sample
    STOP = "stop"
    MAX_REACHED = "max-reached"  # S_n = N


class BatchStatus(StrEnum):
    """api_batches.status: OpenAI's batch statuses, plus ours before and after them."""

    UPLOADED = "uploaded"  # input file uploaded, batch not yet confirmed created (resume looks it up by file id)
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    IMPORTED = "imported"  # its answered lines are stored as calls


def sql_in(column: str, values: type[StrEnum]) -> str:
    """`column IN ('a', 'b', …)` over every value of `values`, for a CHECK constraint."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
