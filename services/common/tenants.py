"""Tenants and their credentials.

An API key is returned once and only its SHA-256 is stored; a webhook secret is stored
encrypted (``common.secretbox``). Each can be rotated without downtime: a tenant has at most
``MAX_ACTIVE`` active keys (and secrets) at a time, the old one is revoked (retired) once every
client uses the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.config import Settings
from services.common.orm import ApiKey, Tenant, WebhookSecret, utcnow
from services.common.secretbox import decrypt, encrypt, reencrypt
from services.common.security import hash_api_key, new_api_key, new_webhook_secret

MAX_ACTIVE = 2
PREFIX_CHARS = 12  # "cct_" + 8 random characters: enough to tell keys apart, useless to guess


class TenantNotFound(LookupError):
    pass


class TooManyActive(RuntimeError):
    """A third key (or secret) while two are active: revoke one first."""


class LastActive(RuntimeError):
    """Revoking this would leave the tenant without any active key."""


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def tenant_by_api_key(session: Session, api_key: str) -> Tenant | None:
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    )


def tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise TenantNotFound(name)
    return tenant


def _active_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at)
        )
    )


def _active_secrets(session: Session, tenant_id: str) -> list[WebhookSecret]:
    return list(
        session.scalars(
            select(WebhookSecret)
            .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.retired_at.is_(None))
            .order_by(WebhookSecret.created_at)
        )
    )


def _add_key(session: Session, tenant_id: str) -> str:
    api_key = new_api_key()
    session.add(
        ApiKey(tenant_id=tenant_id, key_hash=hash_api_key(api_key), prefix=api_key[:PREFIX_CHARS])
    )
    return api_key


def _add_secret(session: Session, settings: Settings, tenant_id: str) -> str:
    secret = new_webhook_secret()
    session.add(WebhookSecret(tenant_id=tenant_id, secret_encrypted=encrypt(settings, secret)))
    return secret


def create_tenant(session: Session, settings: Settings, name: str) -> dict[str, str]:
    """Insert a tenant; returns ``{"id", "name", "api_key", "webhook_secret"}``."""
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    api_key = _add_key(session, tenant.id)
    secret = _add_secret(session, settings, tenant.id)
    session.flush()
    return {"id": tenant.id, "name": name, "api_key": api_key, "webhook_secret": secret}


def add_api_key(session: Session, tenant: Tenant) -> str:
    """A second active key for ``tenant`` (the first keeps working until revoked)."""
    if len(_active_keys(session, tenant.id)) >= MAX_ACTIVE:
        raise TooManyActive(f"{tenant.name} has {MAX_ACTIVE} active API keys; revoke one first")
    api_key = _add_key(session, tenant.id)
    session.flush()
    return api_key


def revoke_api_key(session: Session, tenant: Tenant, prefix: str) -> int:
    """Revoke the active keys of ``tenant`` that start with ``prefix``; returns how many."""
    active = _active_keys(session, tenant.id)
    matching = [k for k in active if k.prefix.startswith(prefix) or prefix.startswith(k.prefix)]
    if matching and len(matching) == len(active):
        raise LastActive(f"that would leave {tenant.name} without an active API key")
    now = utcnow()
    for key in matching:
        key.revoked_at = now
    return len(matching)


def list_api_keys(session: Session, tenant: Tenant) -> list[KeyInfo]:
    rows = session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at)
    )
    return [KeyInfo(k.prefix, k.created_at, k.revoked_at) for k in rows]


def add_webhook_secret(session: Session, settings: Settings, tenant: Tenant) -> str:
    """A new signing secret; callbacks carry both signatures until the old one is retired."""
    if len(_active_secrets(session, tenant.id)) >= MAX_ACTIVE:
        raise TooManyActive(
            f"{tenant.name} has {MAX_ACTIVE} active webhook secrets; retire the old one first"
        )
    secret = _add_secret(session, settings, tenant.id)
    session.flush()
    return secret


def retire_old_webhook_secrets(session: Session, tenant: Tenant) -> int:
    """Keep only the newest active secret; returns how many were retired."""
    older = _active_secrets(session, tenant.id)[:-1]
    now = utcnow()
    for secret in older:
        secret.retired_at = now
    return len(older)


def webhook_secrets(session: Session, settings: Settings, tenant_id: str) -> list[str]:
    """The tenant's active signing secrets in clear, oldest first."""
    return [decrypt(settings, s.secret_encrypted) for s in _active_secrets(session, tenant_id)]


def reencrypt_webhook_secrets(session: Session, settings: Settings) -> int:
    """Re-encrypt every stored secret under the first configured key (key rotation)."""
    rows = list(session.scalars(select(WebhookSecret)))
    for row in rows:
        row.secret_encrypted = reencrypt(settings, row.secret_encrypted)
    return len(rows)
