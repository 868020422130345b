"""Human labels per source: the same image bytes in two datasets keep both datasets' labels.

Images are content-addressed, so a frame that DISFA and BP4D both ship (or
one face in two collections) is one image. Before this revision a human label
was unique per (image, field): the second dataset's labels were dropped with
only "already present". Now each label names the source it came from and is
unique per (image, source, field); the image row still belongs to the source
that imported it first (its subject and split), and readers that want one
value per field take that source's label first (lowest id).

Existing labels all came from their image's own source, so they are backfilled
from images.source_id. Downgrading keeps only those.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("human_labels", sa.Column("source_id", sa.Integer(), nullable=True))
    op.execute("UPDATE human_labels hl SET source_id = i.source_id FROM images i WHERE i.id = hl.image_id")
    op.alter_column("human_labels", "source_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_human_labels_source_id_source_datasets"), "human_labels", "source_datasets", ["source_id"], ["id"]
    )
    op.drop_constraint(op.f("uq_human_labels_image_id_field"), "human_labels", type_="unique")
    op.create_unique_constraint(
        op.f("uq_human_labels_image_id_source_id_field"), "human_labels", ["image_id", "source_id", "field"]
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM human_labels hl USING images i WHERE i.id = hl.image_id AND hl.source_id <> i.source_id"
    )
    op.drop_constraint(op.f("uq_human_labels_image_id_source_id_field"), "human_labels", type_="unique")
    op.create_unique_constraint(op.f("uq_human_labels_image_id_field"), "human_labels", ["image_id", "field"])
    op.drop_constraint(op.f("fk_human_labels_source_id_source_datasets"), "human_labels", type_="foreignkey")
    op.drop_column("human_labels", "source_id")
