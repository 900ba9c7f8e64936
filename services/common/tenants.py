"""Tenant creation: the API key is returned once; only its hash is stored."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.orm import Tenant
from services.common.security import hash_api_key, new_api_key, new_webhook_secret


def tenant_by_api_key(session: Session, api_key: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.api_key_hash == hash_api_key(api_key)))


def create_tenant(session: Session, name: str) -> dict[str, str]:
    """Insert a tenant; returns ``{"id", "name", "api_key", "webhook_secret"}``."""
    api_key, secret = new_api_key(), new_webhook_secret()
    tenant = Tenant(name=name, api_key_hash=hash_api_key(api_key), webhook_secret=secret)
    session.add(tenant)
    session.flush()
    return {"id": tenant.id, "name": name, "api_key": api_key, "webhook_secret": secret}
