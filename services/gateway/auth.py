"""``Authorization: Bearer <api_key>`` -> tenant; a missing or wrong key is 401."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.common.db import get_sessionmaker
from services.common.orm import Tenant
from services.common.security import bearer_token
from services.common.tenants import tenant_by_api_key
from services.gateway.errors import ApiError

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def current_tenant(request: Request, session: SessionDep) -> Tenant:
    api_key = bearer_token(request.headers.get("authorization"))
    if api_key is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <api_key>", UNAUTHORIZED)
    tenant = tenant_by_api_key(session, api_key)
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown API key", UNAUTHORIZED)
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
