"""Transactional outbox: jobs.step / step_attempt / step_crashes / step_due_at and
webhook_deliveries.next_attempt_at

Jobs in flight at upgrade get the step of their status, due at once: the sweeper sends each
once, and a message still in the broker finds the step claimed or claims it (either way, once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STEP_OF_STATUS = {
    "queued": "preprocess",
    "preprocessing": "preprocess",
    "scoring": "inference",
    "ensembling": "ensemble",
}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step", sa.String(length=20), nullable=True))
        batch_op.add_column(
            sa.Column("step_attempt", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("step_crashes", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("step_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_step_due_at"), ["step_due_at"], unique=False)
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_webhook_deliveries_next_attempt_at"), ["next_attempt_at"], unique=False
        )
    bind = op.get_bind()
    # Bound through the column type, so SQLite stores the same text form as the ORM writes.
    now = sa.bindparam("now", datetime.now(UTC), type_=sa.DateTime(timezone=True))
    for status, step in STEP_OF_STATUS.items():
        bind.execute(
            sa.text(
                "UPDATE jobs SET step = :step, step_due_at = :now WHERE status = :status"
            ).bindparams(now),
            dict(step=step, status=status),
        )
    bind.execute(
        sa.text(
            "UPDATE webhook_deliveries SET next_attempt_at = :now WHERE status = 'pending'"
        ).bindparams(now)
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_next_attempt_at"))
        batch_op.drop_column("next_attempt_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_step_due_at"))
        batch_op.drop_column("step_due_at")
        batch_op.drop_column("step_crashes")
        batch_op.drop_column("step_attempt")
        batch_op.drop_column("step")
