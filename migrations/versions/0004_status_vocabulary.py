"""Run and image statuses checked by the database, like stages and UAMC decisions already are.

The allowed words now live in one place in the code (models/vocab.py); these
CHECK constraints make the database refuse a status the code does not know,
so a typo cannot leave an image in a state resume would not recognise. The
stored words do not change: the sample stage keeps its stored name
'prior-sample', which the prompts module now uses too. The values are written
out here (not imported) so this revision means the same thing forever.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = ("pending", "running", "completed", "stopped", "failed")
IMAGE_STATUSES = ("pending", "sampling", "done", "failed")


def _in(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    op.create_check_constraint(op.f("ck_runs_status_value"), "runs", _in(RUN_STATUSES))
    op.create_check_constraint(op.f("ck_run_images_status_value"), "run_images", _in(IMAGE_STATUSES))


def downgrade() -> None:
    op.drop_constraint(op.f("ck_run_images_status_value"), "run_images", type_="check")
    op.drop_constraint(op.f("ck_runs_status_value"), "runs", type_="check")
