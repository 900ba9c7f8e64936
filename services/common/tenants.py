"""Tenant creation: the API key is returned once; only its hash is stored."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.common.orm import Tenant
from services.common.security import hash_api_key, new_api_key, new_webhook_secret


def create_tenant(session: Session, name: str) -> dict[str, str]:
    """Insert a tenant; returns ``{"id", "name", "api_key", "webhook_secret"}``."""
    api_key, secret = new_api_key(), new_webhook_secret()
    tenant = Tenant(name=name, api_key_hash=hash_api_key(api_key), webhook_secret=secret)
    session.add(tenant)
    session.flush()
    return {"id": tenant.id, "name": name, "api_key": api_key, "webhook_secret": secret}
