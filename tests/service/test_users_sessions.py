"""Per-person users and console sessions (issue 20 item 12): argon2 hashes, an HTTP-only
SameSite=Strict cookie with a CSRF token, roles viewer < uploader < admin, API keys as
their tenant's admin, and failed sign-ins throttled without ever locking out the password."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job, User, UserSession, utcnow
from tests.support.service import auth, make_tenant, new_job, tus_metadata

PASSWORD = "correct horse battery"


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", auth_failure_limit=3)
    with TestClient(create_app()) as test_client:
        yield test_client


def add_user(client: TestClient, tenant: dict[str, str], name: str, role: str) -> None:
    body = {"username": name, "role": role, "password": PASSWORD}
    response = client.post("/v1/users", json=body, headers=auth(tenant))
    assert response.status_code == 201, response.text
    assert response.json()["role"] == role


def login(client: TestClient, tenant: dict[str, str], name: str) -> str:
    """Signs ``client`` in (its cookie jar keeps the session); returns the CSRF token."""
    body = {"tenant": tenant["name"], "username": name, "password": PASSWORD}
    response = client.post("/v1/session", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def test_login_sets_a_strict_http_only_cookie_and_answers_a_csrf_token(
    client: TestClient, alice: dict[str, str], isolated_settings: Callable[..., Settings]
) -> None:
    add_user(client, alice, "vera", "viewer")
    body = {"tenant": "alice", "username": "vera", "password": PASSWORD}
    response = client.post("/v1/session", json=body)
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("covidct_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http (a local console); https below
    me = client.get("/v1/session").json()
    assert me["username"] == "vera" and me["role"] == "viewer" and me["auth"] == "session"
    assert me["csrf_token"] == response.json()["csrf_token"]  # again after a console reload
    # Only an argon2id hash of the password is stored; the cookie token only as SHA-256.
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == "vera"))
        assert user is not None and user.password_hash is not None
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
        token = client.cookies["covidct_session"]
        stored = session.scalars(select(UserSession.token_hash)).all()
        assert token not in stored and len(stored) == 1
    raw = Path(
        isolated_settings(broker_url="redis://127.0.0.1:1/0", auth_failure_limit=3)
        .sqlalchemy_url.removeprefix("sqlite:///")
    ).read_bytes()  # fmt: skip
    assert PASSWORD.encode() not in raw and token.encode() not in raw


def test_cookie_is_secure_over_https(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(), base_url="https://testserver") as https:
        tenant = make_tenant("alice")
        add_user(https, tenant, "ada", "admin")
        response = https.post(
            "/v1/session", json={"tenant": "alice", "username": "ada", "password": PASSWORD}
        )
        assert response.status_code == 200
        assert "Secure" in response.headers["set-cookie"]


def test_roles_and_csrf(client: TestClient, alice: dict[str, str]) -> None:
    add_user(client, alice, "vera", "viewer")
    add_user(client, alice, "ulla", "uploader")
    job = new_job(client, alice)  # an API key acts as the tenant's admin
    csrf = login(client, alice, "vera")
    assert client.get("/v1/jobs").status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    refused = client.post("/v1/jobs", json={}, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert client.delete(f"/v1/jobs/{job['id']}", headers={"X-CSRF-Token": csrf}).status_code == 403
    assert client.get("/v1/users").status_code == 403  # user management is for admins

    csrf = login(client, alice, "ulla")
    missing = client.post("/v1/jobs", json={})
    assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
    wrong = client.post("/v1/jobs", json={}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    created = client.post("/v1/jobs", json={}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    with session_scope() as session:
        made = session.get(Job, created.json()["id"])
        assert made is not None and made.created_by == "user:ulla"
        keyed = session.get(Job, job["id"])
        assert keyed is not None and keyed.created_by == "key:" + alice["api_key"][:12]
    # An API key needs no CSRF token (it is never sent by a browser on its own).
    assert client.post("/v1/jobs", json={}, headers=auth(alice)).status_code == 201


def test_an_uploader_uploads_with_the_cookie(client: TestClient, alice: dict[str, str]) -> None:
    add_user(client, alice, "ulla", "uploader")
    add_user(client, alice, "vera", "viewer")
    csrf = login(client, alice, "ulla")
    job = client.post("/v1/jobs", json={}, headers={"X-CSRF-Token": csrf}).json()
    headers = {
        "Tus-Resumable": "1.0.0", "Upload-Length": "10",
        "Upload-Metadata": tus_metadata(job_id=job["id"], filename="s.zip",
                                        filetype="application/zip"),
    }  # fmt: skip
    assert client.post("/v1/uploads", headers=headers).status_code == 401  # no CSRF token
    created = client.post("/v1/uploads", headers={**headers, "X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    csrf = login(client, alice, "vera")  # a viewer may not upload
    other = new_job(client, alice)
    headers["Upload-Metadata"] = tus_metadata(
        job_id=other["id"], filename="s.zip", filetype="application/zip"
    )
    assert client.post("/v1/uploads", headers={**headers, "X-CSRF-Token": csrf}).status_code == 401


def test_failed_logins_are_throttled_but_never_lock_out_the_password(
    client: TestClient, alice: dict[str, str]
) -> None:
    add_user(client, alice, "vera", "viewer")
    wrong = {"tenant": "alice", "username": "vera", "password": "not the password"}
    for _ in range(3):
        response = client.post("/v1/session", json=wrong)
        assert response.status_code == 401
        assert response.json()["code"] == "bad_credentials"
        assert "set-cookie" not in response.headers
    throttled = client.post("/v1/session", json=wrong)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    unknown = client.post("/v1/session", json={**wrong, "tenant": "nobody"})
    assert unknown.status_code == 429  # the same address
    assert login(client, alice, "vera")  # the right password still gets in


def test_unknown_user_and_tenant_answer_like_a_wrong_password(
    client: TestClient, alice: dict[str, str]
) -> None:
    for body in (
        {"tenant": "alice", "username": "nobody", "password": PASSWORD},
        {"tenant": "nowhere", "username": "vera", "password": PASSWORD},
    ):
        response = client.post("/v1/session", json=body)
        assert response.status_code == 401
        assert response.json()["code"] == "bad_credentials"


def test_logout_ends_the_session_on_the_server(client: TestClient, alice: dict[str, str]) -> None:
    add_user(client, alice, "vera", "viewer")
    csrf = login(client, alice, "vera")
    token = client.cookies["covidct_session"]
    assert client.delete("/v1/session").status_code == 403  # CSRF token needed
    out = client.delete("/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    assert 'covidct_session=""' in out.headers["set-cookie"]
    # The old token (say, copied from the browser) no longer works.
    client.cookies.set("covidct_session", token)
    assert client.get("/v1/jobs").status_code == 401


def test_expired_session_is_401(client: TestClient, alice: dict[str, str]) -> None:
    add_user(client, alice, "vera", "viewer")
    login(client, alice, "vera")
    with session_scope() as session:
        session.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = client.get("/v1/jobs")
    assert response.status_code == 401 and "sign in" in response.json()["message"]


def test_admin_manages_users(client: TestClient, alice: dict[str, str]) -> None:
    bob = make_tenant("bob")
    add_user(client, alice, "ada", "admin")
    add_user(client, alice, "vera", "viewer")
    add_user(client, bob, "bert", "viewer")
    csrf = login(client, alice, "ada")
    h = {"X-CSRF-Token": csrf}
    assert [u["username"] for u in client.get("/v1/users").json()] == ["ada", "vera"]
    dup = client.post("/v1/users", json={"username": "vera", "role": "viewer"}, headers=h)
    assert dup.status_code == 409 and dup.json()["code"] == "user_exists"
    weak = client.post("/v1/users", json={"username": "w", "role": "viewer", "password": "short"},
                       headers=h)  # fmt: skip
    assert weak.status_code == 400 and weak.json()["code"] == "weak_password"
    bad_role = client.post("/v1/users", json={"username": "x", "role": "root"}, headers=h)
    assert bad_role.status_code == 422
    bad_name = client.post("/v1/users", json={"username": "a b", "role": "viewer"}, headers=h)
    assert bad_name.status_code == 400
    # Another tenant's user does not exist for this admin.
    assert client.patch("/v1/users/bert", json={"role": "admin"}, headers=h).status_code == 404
    assert client.delete("/v1/users/bert", headers=h).status_code == 404
    assert client.delete("/v1/users/ada", headers=h).status_code == 409  # not yourself

    # A role change counts from the user's next request.
    viewer = TestClient(client.app)
    viewer_csrf = login(viewer, alice, "vera")
    vh = {"X-CSRF-Token": viewer_csrf}
    assert viewer.post("/v1/jobs", json={}, headers=vh).status_code == 403
    changed = client.patch("/v1/users/vera", json={"role": "uploader"}, headers=h)
    assert changed.status_code == 200 and changed.json()["role"] == "uploader"
    assert viewer.post("/v1/jobs", json={}, headers=vh).status_code == 201
    # A new password signs the user out everywhere; deleting ends every session too.
    new = client.patch("/v1/users/vera", json={"password": "another long one"}, headers=h)
    assert new.status_code == 200
    assert viewer.get("/v1/jobs").status_code == 401
    viewer.post("/v1/session", json={"tenant": "alice", "username": "vera",
                                     "password": "another long one"})  # fmt: skip
    assert viewer.get("/v1/jobs").status_code == 200
    assert client.delete("/v1/users/vera", headers=h).status_code == 204
    assert viewer.get("/v1/jobs").status_code == 401
    assert [u["username"] for u in client.get("/v1/users").json()] == ["ada"]


def test_api_key_session_view(client: TestClient, alice: dict[str, str]) -> None:
    me = client.get("/v1/session", headers=auth(alice)).json()
    assert me == {
        "tenant": "alice", "username": None, "role": "admin", "auth": "api_key",
        "csrf_token": None, "expires_at": None,
    }  # fmt: skip
    assert client.get("/v1/session").status_code == 401


def test_cli_manages_users(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.cli.main import app as cli

    runner = CliRunner()
    monkeypatch.setenv("COVIDCT_NEW_PASSWORD", PASSWORD)
    made = runner.invoke(cli, ["users", "create", "alice", "ada", "--role", "admin"])
    assert made.exit_code == 0, made.output
    sso = runner.invoke(cli, ["users", "create", "alice", "sam", "--sso-only"])
    assert sso.exit_code == 0, sso.output
    assert login(client, alice, "ada")
    output = runner.invoke(cli, ["users", "list", "alice"]).output.splitlines()
    listed = [line for line in output if not line.startswith("{")]  # not the log lines
    assert listed[0].split()[:2] == ["ada", "admin"] and listed[0].endswith("password")
    assert listed[1].split()[:2] == ["sam", "viewer"] and listed[1].endswith("sso-only")
    changed = runner.invoke(cli, ["users", "set-role", "alice", "sam", "uploader"])
    assert changed.exit_code == 0 and "viewer -> uploader" in changed.output
    bad = runner.invoke(cli, ["users", "set-role", "alice", "sam", "root"])
    assert bad.exit_code == 2 and "invalid_role" in bad.output
    dup = runner.invoke(cli, ["users", "create", "alice", "ada"])
    assert dup.exit_code == 2 and "user_exists" in dup.output
    nobody = runner.invoke(cli, ["users", "list", "nowhere"])
    assert nobody.exit_code == 2 and "tenant_not_found" in nobody.output
    assert runner.invoke(cli, ["users", "delete", "alice", "ada"]).exit_code == 0
    assert client.get("/v1/jobs").status_code == 401  # ada's session ended with her account
    gone = runner.invoke(cli, ["users", "delete", "alice", "ada"])
    assert gone.exit_code == 2 and "user_not_found" in gone.output
    trail = client.get("/v1/audit", headers=auth(alice)).text.splitlines()
    assert '"actor":"cli","action":"user_create"' in trail[0]
