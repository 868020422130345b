"""Review decisions become human labels: `human_labels.review_id`.

A person's `correct` (or `accept`) of a generated field is a human label of the
image like a dataset's, from the source dataset `review:<reviewer>`, and the
next run version embeds it as known. `review_id` links the label to the review
row (and through its `call_id` to the reviewed summary call); it is NULL for
labels a dataset import wrote. A review writes at most one label (unique), and
deleting the review deletes its label. Source names stay at 32 characters (two
views depend on the column), so a reviewer name is at most 25.

Downgrading deletes the review labels and the `review:` sources no image uses.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("human_labels", sa.Column("review_id", sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f("fk_human_labels_review_id_reviews"), "human_labels", "reviews", ["review_id"], ["id"], ondelete="CASCADE"
    )
    op.create_unique_constraint(op.f("uq_human_labels_review_id"), "human_labels", ["review_id"])


def downgrade() -> None:
    op.execute("DELETE FROM human_labels WHERE review_id IS NOT NULL")
    op.drop_constraint(op.f("uq_human_labels_review_id"), "human_labels", type_="unique")
    op.drop_constraint(op.f("fk_human_labels_review_id_reviews"), "human_labels", type_="foreignkey")
    op.drop_column("human_labels", "review_id")
    op.execute(
        "DELETE FROM source_datasets sd WHERE sd.name LIKE 'review:%'"
        " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.source_id = sd.id)"
        " AND NOT EXISTS (SELECT 1 FROM subjects s WHERE s.source_id = sd.id)"
        " AND NOT EXISTS (SELECT 1 FROM human_labels hl WHERE hl.source_id = sd.id)"
        " AND NOT EXISTS (SELECT 1 FROM label_totals t WHERE t.source_id = sd.id)"
    )
