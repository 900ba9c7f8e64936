"""api_keys, webhook_secrets (rotatable, encrypted), jobs.purged_at and jobs.heartbeat_at

Moves tenants.api_key_hash into api_keys and tenants.webhook_secret, encrypted with the
configured key (services.common.secretbox), into webhook_secrets.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:40:00
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from services.common.config import get_settings
from services.common.secretbox import decrypt, encrypt

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_key_hash"), ["key_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_secrets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_secrets_tenant_id"), ["tenant_id"], unique=False
        )

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))

    bind = op.get_bind()
    settings = get_settings()
    tenants = bind.execute(
        sa.text("SELECT id, api_key_hash, webhook_secret, created_at FROM tenants")
    ).fetchall()
    for tenant_id, key_hash, secret, created_at in tenants:
        bind.execute(
            sa.text(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at) "
                "VALUES (:id, :tenant_id, :key_hash, :prefix, :created_at)"
            ),
            # The clear key was never stored, so its prefix is unknown.
            dict(id=str(uuid.uuid4()), tenant_id=tenant_id, key_hash=key_hash,
                 prefix="(legacy)", created_at=created_at),
        )  # fmt: skip
        bind.execute(
            sa.text(
                "INSERT INTO webhook_secrets (id, tenant_id, secret_encrypted, created_at) "
                "VALUES (:id, :tenant_id, :secret, :created_at)"
            ),
            dict(id=str(uuid.uuid4()), tenant_id=tenant_id,
                 secret=encrypt(settings, secret), created_at=created_at),
        )  # fmt: skip

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenants_api_key_hash"))
        batch_op.drop_column("api_key_hash")
        batch_op.drop_column("webhook_secret")


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=100), nullable=True))
    bind = op.get_bind()
    settings = get_settings()
    # The oldest active key and secret of each tenant go back (one of each fits the old schema).
    for tenant_id, key_hash in bind.execute(
        sa.text(
            "SELECT tenant_id, key_hash FROM api_keys WHERE revoked_at IS NULL "
            "ORDER BY created_at DESC"
        )
    ).fetchall():
        bind.execute(
            sa.text("UPDATE tenants SET api_key_hash = :h WHERE id = :t"),
            dict(h=key_hash, t=tenant_id),
        )
    for tenant_id, token in bind.execute(
        sa.text(
            "SELECT tenant_id, secret_encrypted FROM webhook_secrets WHERE retired_at IS NULL "
            "ORDER BY created_at DESC"
        )
    ).fetchall():
        bind.execute(
            sa.text("UPDATE tenants SET webhook_secret = :s WHERE id = :t"),
            dict(s=decrypt(settings, token), t=tenant_id),
        )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenants_api_key_hash"), ["api_key_hash"], unique=True)
    op.drop_table("webhook_secrets")
    op.drop_table("api_keys")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("purged_at")
