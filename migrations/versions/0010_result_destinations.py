"""result_destinations, destination_deliveries, destination_attempts

Per-tenant places a finished job's DICOM SR and SEG are sent to (a DICOMweb STOW-RS
endpoint or a DICOM node by C-STORE), with the webhook outbox's delivery records.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_destinations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("ae_title", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("result_destinations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_result_destinations_tenant_id"), ["tenant_id"], unique=False
        )
    op.create_table(
        "destination_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["destination_id"], ["result_destinations.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "destination_id"),
    )
    with op.batch_alter_table("destination_deliveries", schema=None) as batch_op:
        for column in ("destination_id", "job_id", "next_attempt_at"):
            batch_op.create_index(
                batch_op.f(f"ix_destination_deliveries_{column}"), [column], unique=False
            )
    op.create_table(
        "destination_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["destination_deliveries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id", "attempt"),
    )
    with op.batch_alter_table("destination_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_destination_attempts_delivery_id"), ["delivery_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("destination_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_destination_attempts_delivery_id"))
    op.drop_table("destination_attempts")
    with op.batch_alter_table("destination_deliveries", schema=None) as batch_op:
        for column in ("next_attempt_at", "job_id", "destination_id"):
            batch_op.drop_index(batch_op.f(f"ix_destination_deliveries_{column}"))
    op.drop_table("destination_deliveries")
    with op.batch_alter_table("result_destinations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_result_destinations_tenant_id"))
    op.drop_table("result_destinations")
