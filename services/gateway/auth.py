"""``Authorization: Bearer <api_key>`` -> tenant; a missing or wrong key is 401."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import get_sessionmaker
from services.common.orm import Tenant
from services.common.security import hash_api_key
from services.gateway.errors import ApiError

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def tenant_for_key(session: Session, api_key: str | None) -> Tenant:
    if api_key is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <api_key>", UNAUTHORIZED)
    tenant = session.scalar(select(Tenant).where(Tenant.api_key_hash == hash_api_key(api_key)))
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown API key", UNAUTHORIZED)
    return tenant


def current_tenant(request: Request, session: SessionDep) -> Tenant:
    return tenant_for_key(session, bearer_key(request))


TenantDep = Annotated[Tenant, Depends(current_tenant)]
