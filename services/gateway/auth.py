"""``Authorization: Bearer <api_key>`` -> tenant; a missing or wrong key is 401.

Session lifecycle (why the gateway cannot deadlock on its connection pool): no dependency
holds a session. ``api_key`` is async and only reads the header (no database, no thread).
Each route handler is a plain ``def`` that FastAPI runs as one call on one AnyIO worker
thread; inside it, ``tenant_session`` opens a session, looks the key up, does the route's
work and closes the session before the call returns. So a thread that holds a connection
never waits for another thread (nor for the event loop): it only waits for the database,
and it gives the connection back on that same thread. Every other user of the database in
the web process does the same (``session_scope`` inside one threadpool call), so at most
``gateway_threads`` (+1 for a hook on the event loop) connections are checked out at once,
and ``create_app`` refuses a pool smaller than that: a checkout never waits at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.common.db import session_scope
from services.common.orm import Tenant
from services.common.security import bearer_token
from services.common.tenants import tenant_by_api_key
from services.common.throttle import auth_failures, identities
from services.gateway.errors import ApiError

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}

# Documents the scheme in OpenAPI (components.securitySchemes); never raises by itself, so
# the 401 bodies stay ours.
bearer_scheme = HTTPBearer(
    scheme_name="ApiKey",
    bearerFormat="cct_...",
    description="The tenant's API key: `Authorization: Bearer <api_key>`.",
    auto_error=False,
)
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


@dataclass(frozen=True)
class Credentials:
    key: str
    throttled_as: tuple[str, ...]  # what a failure counts against (address, key prefix)
    throttled_for: float | None = None  # seconds those identities are throttled, if they are


def refused(credentials_missing: bool, throttled_for: float | None) -> ApiError:
    """What a failed authentication is answered: 429 while its address or key prefix is
    throttled, else 401. Only failures are throttled: a valid key is never refused."""
    if throttled_for is not None:
        return ApiError(
            429, "too_many_failed_auth", "too many failed authentications; retry later",
            {"Retry-After": str(math.ceil(throttled_for))},
        )  # fmt: skip
    message = (
        "missing Authorization: Bearer <api_key>" if credentials_missing else "unknown API key"
    )
    return ApiError(401, "unauthorized", message, UNAUTHORIZED)


async def api_key(request: Request, _documented: BearerDoc) -> Credentials:
    """The caller's key from the header, or 401 (429 while its address has failed too
    often); touches neither database nor threadpool. Whether the key is valid is decided by
    ``tenant_session``: a throttled address or key prefix still gets in with a valid key."""
    key = bearer_token(request.headers.get("authorization"))
    throttled_as = identities(request.client.host if request.client else None, key)
    wait = auth_failures().retry_after(*throttled_as)
    if key is None:
        auth_failures().record_failure(*throttled_as)
        raise refused(True, wait)
    return Credentials(key, throttled_as, wait)


ApiKeyDep = Annotated[Credentials, Depends(api_key)]


@contextmanager
def tenant_session(credentials: Credentials) -> Iterator[tuple[Session, Tenant]]:
    """A session (committed on success, rolled back on error, always closed here) and the
    key's tenant; 401 for an unknown key. Use it inside a sync handler, never across an
    ``await``: the session must be closed by the thread that opened it."""
    with session_scope() as session:
        tenant = tenant_by_api_key(session, credentials.key)
        if tenant is None:
            auth_failures().record_failure(*credentials.throttled_as)
            raise refused(False, credentials.throttled_for)
        yield session, tenant
