"""jobs: study/series identifiers and verdict category (worklist); slices.info (slice mapping)

The worklist sorts, filters and searches on the server, so the identifiers the preprocess
stage reads from the DICOM headers (after de-identification when it is on) are columns;
each slice row keeps its source mapping (InstanceNumber, SliceLocation, SOPInstanceUID) and
where its native image lies in the job's ``native.bin`` blob.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

JOB_COLUMNS = (
    ("patient_id", 200),
    ("accession_number", 64),
    ("study_date", 8),
    ("series_description", 200),
    ("study_instance_uid", 128),
    ("series_instance_uid", 128),
    ("category", 40),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, length in JOB_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length=length), nullable=True))
        batch_op.create_index("ix_jobs_tenant_study_date", ["tenant_id", "study_date"])
    with op.batch_alter_table("slices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("info", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slices", schema=None) as batch_op:
        batch_op.drop_column("info")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_study_date")
        for name, _length in reversed(JOB_COLUMNS):
            batch_op.drop_column(name)
