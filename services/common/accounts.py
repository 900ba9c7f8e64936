"""Per-person users inside a tenant, their roles and their console sessions.

Roles are ordered: a viewer reads jobs, results and images; an uploader also creates and
deletes jobs; an admin also manages users and reads the audit trail. API keys (machines)
act as their tenant's admin. Passwords are stored as argon2id hashes only. A session is a
random cookie token whose SHA-256 is stored; its CSRF token is an HMAC of it, so the
console can fetch it again after a reload and a cross-site page, which cannot read it,
cannot forge an unsafe request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.caches import process_cache
from services.common.orm import Tenant, User, UserSession, utcnow

SESSION_COOKIE = "covidct_session"
CSRF_HEADER = "X-CSRF-Token"
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a bound keeps one login cheap to refuse
USERNAME_CHARS = 200


class Role(StrEnum):
    VIEWER = "viewer"
    UPLOADER = "uploader"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class AccountError(ValueError):
    """A request about users that cannot be done; ``code`` is the API's machine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    created_at: datetime
    has_password: bool


@process_cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) defaults


@process_cache
def _dummy_hash() -> str:
    # Verified against when the user does not exist, so a wrong username costs as long as a
    # wrong password (no user enumeration by timing).
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _hasher().verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def check_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(
            "weak_password",
            f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters",
        )


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise AccountError("invalid_role", f"role is one of {', '.join(Role)}") from None


def check_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > USERNAME_CHARS or any(c.isspace() or c == ":" for c in name):
        raise AccountError(
            "invalid_username", "a username is 1-200 characters without spaces or ':'"
        )
    return name


def user_by_name(session: Session, tenant_id: str, username: str) -> User | None:
    return session.scalar(
        select(User).where(User.tenant_id == tenant_id, User.username == username)
    )


def _existing(session: Session, tenant: Tenant, username: str) -> User:
    user = user_by_name(session, tenant.id, username)
    if user is None:
        raise AccountError("user_not_found", f"no user {username!r} in {tenant.name}")
    return user


def create_user(
    session: Session, tenant: Tenant, username: str, role: str, password: str | None
) -> User:
    """A new user; ``password`` None makes a single-sign-on-only account."""
    name = check_username(username)
    parsed = parse_role(role)
    if password is not None:
        check_password(password)
    if user_by_name(session, tenant.id, name) is not None:
        raise AccountError("user_exists", f"{tenant.name} has a user {name!r}")
    user = User(
        tenant_id=tenant.id,
        username=name,
        role=parsed.value,
        password_hash=hash_password(password) if password is not None else None,
    )
    session.add(user)
    session.flush()
    return user


def list_users(session: Session, tenant: Tenant) -> list[UserInfo]:
    rows = session.scalars(select(User).where(User.tenant_id == tenant.id).order_by(User.username))
    return [UserInfo(u.username, u.role, u.created_at, u.password_hash is not None) for u in rows]


def delete_user(session: Session, tenant: Tenant, username: str) -> None:
    """Remove the user and end every session of theirs at once."""
    user = _existing(session, tenant, username)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.delete(user)
    session.flush()


def set_role(session: Session, tenant: Tenant, username: str, role: str) -> str:
    """Change the user's role (effective on their next request); returns the old one."""
    user = _existing(session, tenant, username)
    old, user.role = user.role, parse_role(role).value
    return old


def set_password(session: Session, tenant: Tenant, username: str, password: str) -> None:
    """A new password; the user's sessions end (whoever knew the old one is signed out)."""
    check_password(password)
    user = _existing(session, tenant, username)
    user.password_hash = hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))


def authenticate(session: Session, tenant_name: str, username: str, password: str) -> User | None:
    """The user these credentials name, or None (unknown tenant, user or wrong password)."""
    user = session.scalar(
        select(User)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(Tenant.name == tenant_name, User.username == username)
    )
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"covidct-csrf", hashlib.sha256).hexdigest()


# Console sessions are same-origin only: the console is served by the gateway itself. A
# browser says where a request comes from (Fetch Metadata, ``Sec-Fetch-Site``); a cookie
# sent from another origin (a sibling subdomain counts: SameSite=Strict lets it through)
# is refused outright, before CSRF or CORS come into it. A page on another origin uses an
# API key (Bearer), which CORS allows for the configured origins, without credentials.
CROSS_ORIGIN_SITES = frozenset({"same-site", "cross-site"})
CROSS_ORIGIN_SESSION = "cross_origin_session"
CROSS_ORIGIN_MESSAGE = (
    "a console session works on the gateway's own origin only; from another origin, "
    "authenticate with an API key (Authorization: Bearer)"
)


def cookie_from_another_origin(sec_fetch_site: str | None) -> bool:
    """Whether a browser sent this request from another origin (``Sec-Fetch-Site``).
    Browsers without Fetch Metadata send none: SameSite and the CSRF token still hold."""
    return (sec_fetch_site or "").strip().lower() in CROSS_ORIGIN_SITES


def csrf_matches(session_token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(session_token), presented)


def cookie_tenant(
    session: Session, token: str, csrf: str | None, unsafe: bool, needed: Role
) -> str | None:
    """The tenant id of a session cookie allowed ``needed`` (with the CSRF token for an
    unsafe method), else None: the check of a route outside the gateway (tus uploads)."""
    found = session_user(session, token)
    if found is None or (unsafe and not csrf_matches(token, csrf)):
        return None
    user = found[0]
    return user.tenant_id if Role(user.role).allows(needed) else None


def start_session(session: Session, user: User, ttl_s: int) -> tuple[str, datetime]:
    """A new session for ``user``: the cookie token (returned once) and its expiry."""
    token = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=ttl_s)
    session.add(UserSession(user_id=user.id, token_hash=_token_hash(token), expires_at=expires))
    # Expired sessions of anyone are removed as new ones begin (no separate sweeper).
    session.execute(delete(UserSession).where(UserSession.expires_at < utcnow()))
    session.flush()
    return token, expires


def session_user(session: Session, token: str) -> tuple[User, datetime] | None:
    """The signed-in user of a cookie token and when the session ends; None if unknown or
    expired."""
    found = session.execute(
        select(User, UserSession.expires_at)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.token_hash == _token_hash(token))
    ).first()
    if found is None or found[1] <= utcnow():
        return None
    return found[0], found[1]


def end_session(session: Session, token: str) -> None:
    session.execute(delete(UserSession).where(UserSession.token_hash == _token_hash(token)))
