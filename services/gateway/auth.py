"""``Authorization: Bearer <api_key>`` (a machine) or the console's session cookie (a
person, services.common.accounts) -> tenant and role; missing or wrong is 401, a role too
low 403. With a cookie, every unsafe method also needs the session's ``X-CSRF-Token``.

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
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.common.accounts import (
    CROSS_ORIGIN_MESSAGE,
    CROSS_ORIGIN_SESSION,
    CSRF_HEADER,
    SESSION_COOKIE,
    Role,
    cookie_from_another_origin,
    csrf_matches,
    session_user,
)
from services.common.audit import Action, recently_recorded, record
from services.common.db import session_scope
from services.common.orm import Tenant
from services.common.security import bearer_token
from services.common.tenants import tenant_by_api_key
from services.common.throttle import KEY_PREFIX_CHARS, auth_failures, identities
from services.gateway.errors import ApiError

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
VIEW_DEDUP_S = 600.0

# Documents the scheme in OpenAPI (components.securitySchemes); never raises by itself, so
# the 401 bodies stay ours.
bearer_scheme = HTTPBearer(
    scheme_name="ApiKey",
    bearerFormat="cct_...",
    description="The tenant's API key: `Authorization: Bearer <api_key>`.",
    auto_error=False,
)
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


@dataclass
class Credentials:
    key: str | None  # the bearer API key; None when the session cookie authenticates
    throttled_as: tuple[str, ...]  # what a failure counts against (address, key prefix)
    throttled_for: float | None = None  # seconds those identities are throttled, if they are
    session_token: str | None = None
    csrf: str | None = None  # the X-CSRF-Token header
    unsafe: bool = False  # a method that changes state
    client_address: str | None = None
    method: str = "GET"
    path: str = ""
    job_id: str | None = None  # the route's {job_id}: what the audit trail records
    # Set by tenant_session once the credentials are checked.
    actor: str = ""  # "user:<username>" or "key:<prefix>" (the audit trail's who)
    role: Role = Role.VIEWER
    username: str | None = None
    expires_at: datetime | None = None  # the cookie session's end


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
    """The caller's key (or session cookie) from the request, or 401 (429 while its address
    has failed too often); touches neither database nor threadpool. Whether it is valid is
    decided by ``tenant_session``: a throttled address or key prefix still gets in with a
    valid one."""
    key = bearer_token(request.headers.get("authorization"))
    address = request.client.host if request.client else None
    throttled_as = identities(address, key)
    wait = auth_failures().retry_after(*throttled_as)
    cookie = None if key else request.cookies.get(SESSION_COOKIE)
    if key is None and not cookie:
        auth_failures().record_failure(*throttled_as)
        raise refused(True, wait)
    if cookie and cookie_from_another_origin(request.headers.get("sec-fetch-site")):
        raise ApiError(403, CROSS_ORIGIN_SESSION, CROSS_ORIGIN_MESSAGE)
    return Credentials(
        key, throttled_as, wait, session_token=cookie,
        csrf=request.headers.get(CSRF_HEADER), unsafe=request.method not in SAFE_METHODS,
        client_address=address, method=request.method, path=request.url.path,
        job_id=request.path_params.get("job_id"),
    )  # fmt: skip


ApiKeyDep = Annotated[Credentials, Depends(api_key)]


def _authenticate(session: Session, credentials: Credentials) -> Tenant | None:
    """The credentials' tenant (filling in who they are), or None."""
    if credentials.key is not None:
        tenant = tenant_by_api_key(session, credentials.key)
        # A machine: its tenant's admin, named in the trail by its key's prefix only.
        credentials.actor = f"key:{credentials.key[:KEY_PREFIX_CHARS]}"
        credentials.role = Role.ADMIN
        return tenant
    found = session_user(session, credentials.session_token or "")
    if found is None:
        return None
    user, credentials.expires_at = found
    credentials.actor, credentials.username = f"user:{user.username}", user.username
    credentials.role = Role(user.role)
    return session.get(Tenant, user.tenant_id)


def _job_action(credentials: Credentials) -> Action | None:
    """What a request on one job is, for the audit trail (None: not recorded here)."""
    if credentials.job_id is None:
        return None
    if credentials.method == "DELETE":
        return Action.JOB_DELETE
    if credentials.method not in ("GET", "HEAD"):
        return None
    if credentials.path.endswith("/report.pdf"):
        return Action.REPORT_VIEW
    if any(part in credentials.path for part in ("/slices/", "/heatmaps/")):
        return Action.SLICE_VIEW
    return Action.JOB_VIEW


@contextmanager
def tenant_session(
    credentials: Credentials, role: Role | None = None
) -> Iterator[tuple[Session, Tenant]]:
    """A session (committed on success, rolled back on error, always closed here) and the
    credentials' tenant; 401 for unknown credentials, 403 for a missing CSRF token or a role
    below ``role`` (default: uploader for a method that changes state, else viewer). A
    request on one job that succeeds is recorded in the audit trail (view, delete) in the
    same transaction. Use it inside a sync handler, never across an ``await``: the session
    must be closed by the thread that opened it."""
    needed = role or (Role.UPLOADER if credentials.unsafe else Role.VIEWER)
    with session_scope() as session:
        tenant = _authenticate(session, credentials)
        if tenant is None:
            auth_failures().record_failure(*credentials.throttled_as)
            if credentials.key is None:
                raise ApiError(401, "unauthorized", "session expired or signed out; sign in")
            raise refused(False, credentials.throttled_for)
        token = credentials.session_token
        if token is not None and credentials.unsafe and not csrf_matches(token, credentials.csrf):
            raise ApiError(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header")
        if not credentials.role.allows(needed):
            raise ApiError(403, "forbidden", f"needs the {needed} role (yours: {credentials.role})")
        yield session, tenant
        action = _job_action(credentials)
        if action is not None:
            audit(session, credentials, tenant, action, credentials.job_id)


def audit(
    session: Session,
    credentials: Credentials,
    tenant: Tenant,
    action: Action,
    job_id: str | None = None,
    **detail: object,
) -> None:
    """Record ``action`` by these (checked) credentials in the audit trail. Views of the
    same job by the same actor within VIEW_DEDUP_S count once (the console polls)."""
    if action in (Action.JOB_VIEW, Action.SLICE_VIEW) and recently_recorded(
        session, tenant.id, credentials.actor, action, job_id, VIEW_DEDUP_S
    ):
        return
    record(
        session, tenant.id, credentials.actor, action, job_id=job_id,
        client_address=credentials.client_address, detail=dict(detail) or None,
    )  # fmt: skip
