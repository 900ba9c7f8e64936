"""services.common.accounts: roles, argon2 password hashes, sessions and CSRF tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from services.common.accounts import (
    MAX_PASSWORD_CHARS,
    AccountError,
    Role,
    authenticate,
    check_username,
    cookie_tenant,
    create_user,
    csrf_matches,
    csrf_token,
    delete_user,
    end_session,
    hash_password,
    list_users,
    parse_role,
    session_user,
    set_password,
    set_role,
    start_session,
    verify_password,
)
from services.common.orm import Base, Tenant, UserSession, utcnow

PASSWORD = "correct horse battery"


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        yield db
    engine.dispose()


@pytest.fixture
def tenant(session: Session) -> Tenant:
    found = Tenant(name="alice")
    session.add(found)
    session.flush()
    return found


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.UPLOADER) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.UPLOADER.allows(Role.VIEWER) and not Role.UPLOADER.allows(Role.ADMIN)
    assert Role.VIEWER.allows(Role.VIEWER) and not Role.VIEWER.allows(Role.UPLOADER)
    assert parse_role("uploader") is Role.UPLOADER
    with pytest.raises(AccountError, match="role is one of"):
        parse_role("root")


def test_argon2id_hashes_are_salted_and_verified() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("$argon2id$") and first != second  # a salt each
    assert verify_password(first, PASSWORD) and verify_password(second, PASSWORD)
    assert not verify_password(first, PASSWORD + "!")
    assert not verify_password(None, PASSWORD)  # no user (or SSO only): always refused
    assert not verify_password("not a hash", PASSWORD)
    assert not verify_password(first, "x" * (MAX_PASSWORD_CHARS + 1))


@pytest.mark.parametrize("name", ["", " ", "a b", "a:b", "x" * 201])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(AccountError) as raised:
        check_username(name)
    assert raised.value.code == "invalid_username"


def test_csrf_token_is_bound_to_the_session_token() -> None:
    token = csrf_token("session-a")
    assert len(token) == 64 and token == csrf_token("session-a")
    assert token != csrf_token("session-b")
    assert csrf_matches("session-a", token)
    assert not csrf_matches("session-b", token) and not csrf_matches("session-a", None)


def test_user_lifecycle(session: Session, tenant: Tenant) -> None:
    user = create_user(session, tenant, "vera", "viewer", PASSWORD)
    with pytest.raises(AccountError) as exists:
        create_user(session, tenant, "vera", "admin", PASSWORD)
    assert exists.value.code == "user_exists"
    with pytest.raises(AccountError) as weak:
        create_user(session, tenant, "w", "viewer", "short")
    assert weak.value.code == "weak_password"
    sso = create_user(session, tenant, "sam", "viewer", None)
    assert sso.password_hash is None
    assert authenticate(session, "alice", "sam", "") is None  # no password, no password login
    assert authenticate(session, "alice", "vera", PASSWORD) is user
    assert authenticate(session, "alice", "vera", "wrong password") is None
    assert authenticate(session, "bob", "vera", PASSWORD) is None

    token, expires = start_session(session, user, 60)
    found = session_user(session, token)
    assert found is not None and found[0] is user and found[1] == expires
    assert cookie_tenant(session, token, None, False, Role.VIEWER) == tenant.id
    assert cookie_tenant(session, token, None, True, Role.VIEWER) is None  # CSRF missing
    assert cookie_tenant(session, token, csrf_token(token), True, Role.UPLOADER) is None
    assert set_role(session, tenant, "vera", "uploader") == "viewer"
    assert cookie_tenant(session, token, csrf_token(token), True, Role.UPLOADER) == tenant.id

    set_password(session, tenant, "vera", "a new long password")  # signs out everywhere
    assert session_user(session, token) is None
    assert authenticate(session, "alice", "vera", PASSWORD) is None
    token, _ = start_session(session, user, 60)
    end_session(session, token)
    assert session_user(session, token) is None

    token, _ = start_session(session, user, 60)
    session.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert session_user(session, token) is None  # expired
    start_session(session, user, 60)  # starting one removes the expired ones
    assert len(session.scalars(select(UserSession)).all()) == 1

    assert [u.username for u in list_users(session, tenant)] == ["sam", "vera"]
    delete_user(session, tenant, "vera")
    assert session.scalars(select(UserSession)).all() == []
    with pytest.raises(AccountError) as missing:
        delete_user(session, tenant, "vera")
    assert missing.value.code == "user_not_found"
