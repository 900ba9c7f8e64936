"""jobs.lesion_findings and jobs.lesions_blob (lesion measurements and overlay label maps)

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lesion_findings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("lesions_blob", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("lesions_blob")
        batch_op.drop_column("lesion_findings")
