"""``/v1/session`` (console sign-in), ``/v1/users`` (an admin's user management) and
``/v1/audit`` (the audit trail as JSON lines).

Signing in sets an HTTP-only, SameSite=Strict cookie (Secure when the request came over
https) and answers the session's CSRF token, which the console sends as ``X-CSRF-Token``
on every request that changes state. Failed sign-ins count against the client address and
the tenant/username in the auth-failure throttle; the right password always gets in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.common.accounts import (
    CROSS_ORIGIN_MESSAGE,
    CROSS_ORIGIN_SESSION,
    AccountError,
    Role,
    authenticate,
    cookie_from_another_origin,
    create_user,
    csrf_token,
    delete_user,
    end_session,
    list_users,
    set_password,
    set_role,
    start_session,
)
from services.common.audit import Action, events, ndjson, record
from services.common.config import get_settings
from services.common.db import session_scope
from services.common.orm import Tenant
from services.common.throttle import auth_failures
from services.gateway.auth import SESSION_COOKIE, ApiKeyDep, audit, tenant_session
from services.gateway.errors import ApiError, error_responses
from services.gateway.schemas import IsoDateTime

router = APIRouter(prefix="/v1", tags=["users"], responses=error_responses(401, 403, 422, 429))

MAX_AUDIT_LINES = 100_000


class Login(BaseModel):
    tenant: str = Field(min_length=1, max_length=200)
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class SessionOut(BaseModel):
    tenant: str
    username: str | None = Field(description="None when an API key authenticates")
    role: Role
    auth: str = Field(description="`session` (cookie) or `api_key`")
    csrf_token: str | None = Field(description="Send as X-CSRF-Token on unsafe requests")
    expires_at: datetime | None = None


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=200)
    role: Role
    password: str | None = Field(
        default=None, max_length=1024, description="None: a single-sign-on-only account"
    )


class UserPatch(BaseModel):
    role: Role | None = None
    password: str | None = Field(default=None, max_length=1024)


class UserOut(BaseModel):
    username: str
    role: Role
    created_at: datetime
    has_password: bool


def set_session_cookie(request: Request, response: Response, token: str, expires: datetime) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, expires=expires, path="/", httponly=True,
        secure=request.url.scheme == "https", samesite="strict",
    )  # fmt: skip


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/session", response_model=SessionOut, responses=error_responses(400, 401, 429))
def login(body: Login, request: Request, response: Response) -> Any:
    """Sign in with tenant, username and password: sets the session cookie and answers the
    CSRF token. Same-origin only: another origin's page is refused (403
    ``cross_origin_session``) before the password is checked."""
    if cookie_from_another_origin(request.headers.get("sec-fetch-site")):
        raise ApiError(403, CROSS_ORIGIN_SESSION, CROSS_ORIGIN_MESSAGE)
    address = _address(request)
    throttled_as = (f"addr:{address or 'unknown'}", f"user:{body.tenant}/{body.username}")
    wait = auth_failures().retry_after(*throttled_as)
    settings = get_settings()
    with session_scope() as session:
        user = authenticate(session, body.tenant, body.username, body.password)
        tenant = session.scalar(select(Tenant).where(Tenant.name == body.tenant))
        if user is None:
            auth_failures().record_failure(*throttled_as)
            if tenant is not None:  # an unknown tenant has no trail to write to
                record(
                    session, tenant.id, f"user:{body.username}", Action.LOGIN_FAILED,
                    client_address=address,
                )  # fmt: skip
            failed: ApiError | None = (
                ApiError(429, "too_many_failed_auth", "too many failed sign-ins; retry later",
                         {"Retry-After": str(int(wait) + 1)})
                if wait is not None
                else ApiError(401, "bad_credentials", "unknown tenant, username or password")
            )  # fmt: skip
        else:
            assert tenant is not None
            token, expires = start_session(session, user, settings.session_ttl_s)
            record(
                session, tenant.id, f"user:{user.username}", Action.LOGIN, client_address=address
            )
            failed = None
            out = {
                "tenant": tenant.name, "username": user.username, "role": user.role,
                "auth": "session", "csrf_token": csrf_token(token), "expires_at": expires,
            }  # fmt: skip
    if failed is not None:  # raised after the commit, so the failure stays recorded
        raise failed
    set_session_cookie(request, response, token, expires)
    return out


@router.get("/session", response_model=SessionOut)
def whoami(key: ApiKeyDep) -> Any:
    """Who the caller is (and, for a cookie session, its CSRF token again, for a reload)."""
    with tenant_session(key) as (_session, tenant):
        return {
            "tenant": tenant.name,
            "username": key.username,
            "role": key.role,
            "auth": "api_key" if key.key is not None else "session",
            "csrf_token": csrf_token(key.session_token) if key.session_token else None,
            "expires_at": key.expires_at,
        }


@router.delete("/session", status_code=204)
def logout(key: ApiKeyDep, response: Response) -> Response:
    """Sign out: the session ends on the server and the cookie is cleared."""
    with tenant_session(key, Role.VIEWER) as (session, tenant):
        if key.session_token is not None:
            end_session(session, key.session_token)
            audit(session, key, tenant, Action.LOGOUT)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _account_error(exc: AccountError) -> ApiError:
    status = {"user_not_found": 404, "user_exists": 409}.get(exc.code, 400)
    return ApiError(status, exc.code, str(exc))


@router.get("/users", response_model=list[UserOut])
def get_users(key: ApiKeyDep) -> Any:
    """The tenant's users (admin)."""
    with tenant_session(key, Role.ADMIN) as (session, tenant):
        return [u.__dict__ for u in list_users(session, tenant)]


@router.post("/users", status_code=201, response_model=UserOut, responses=error_responses(400, 409))
def post_user(body: UserIn, key: ApiKeyDep) -> Any:
    """Create a user (admin)."""
    with tenant_session(key, Role.ADMIN) as (session, tenant):
        try:
            user = create_user(session, tenant, body.username, body.role, body.password)
        except AccountError as exc:
            raise _account_error(exc) from None
        audit(session, key, tenant, Action.USER_CREATE, username=user.username, role=user.role)
        return {
            "username": user.username, "role": user.role, "created_at": user.created_at,
            "has_password": user.password_hash is not None,
        }  # fmt: skip


@router.patch("/users/{username}", response_model=UserOut, responses=error_responses(400, 404))
def patch_user(username: str, body: UserPatch, key: ApiKeyDep) -> Any:
    """Change a user's role and/or password (admin)."""
    with tenant_session(key, Role.ADMIN) as (session, tenant):
        try:
            if body.role is not None:
                old = set_role(session, tenant, username, body.role)
                audit(
                    session, key, tenant, Action.USER_ROLE_CHANGE,
                    username=username, old_role=old, role=body.role.value,
                )  # fmt: skip
            if body.password is not None:
                set_password(session, tenant, username, body.password)
                audit(session, key, tenant, Action.USER_PASSWORD_CHANGE, username=username)
        except AccountError as exc:
            raise _account_error(exc) from None
        found = [u for u in list_users(session, tenant) if u.username == username]
        if not found:
            raise ApiError(404, "user_not_found", f"no user {username!r}")
        return found[0].__dict__


@router.delete("/users/{username}", status_code=204, responses=error_responses(404, 409))
def remove_user(username: str, key: ApiKeyDep) -> Response:
    """Delete a user (admin); their sessions end at once. Not yourself."""
    with tenant_session(key, Role.ADMIN) as (session, tenant):
        if username == key.username:
            raise ApiError(409, "cannot_delete_self", "another admin must delete your account")
        try:
            delete_user(session, tenant, username)
        except AccountError as exc:
            raise _account_error(exc) from None
        audit(session, key, tenant, Action.USER_DELETE, username=username)
    return Response(status_code=204)


@router.get(
    "/audit",
    response_class=Response,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def get_audit(
    key: ApiKeyDep,
    since: Annotated[IsoDateTime | None, Query(description="From this time (inclusive)")] = None,
    until: Annotated[IsoDateTime | None, Query(description="Before this time")] = None,
    after_id: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="Only events after this id")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LINES)] = 10_000,
) -> Response:
    """The tenant's audit trail, oldest first, one JSON object a line (admin). Page with
    ``after_id`` = the last line's ``id``. The export itself is recorded."""
    with tenant_session(key, Role.ADMIN) as (session, tenant):
        rows = events(session, tenant.id, since, until, after_id, limit)
        lines = list(ndjson(rows))
        audit(session, key, tenant, Action.AUDIT_EXPORT, lines=len(lines))
    return Response(
        "".join(lines),
        media_type="application/x-ndjson",
        headers={"Cache-Control": "private, no-store"},
    )
