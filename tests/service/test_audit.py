"""The audit trail (issue 20 item 13): who signed in, created, viewed, downloaded and
deleted which job, when and from where, per tenant, append-only, exported as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from harness.stacks import fresh_postgres_database
from services.asgi import create_app
from services.common.audit import Action, record
from services.common.config import Settings
from services.common.db import make_engine, migrate, session_scope
from services.common.orm import AuditEvent
from tests.support.service import auth, make_tenant, new_job

PASSWORD = "correct horse battery"


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as test_client:
        yield test_client


def export(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["cache-control"] == "private, no-store"
    return [json.loads(line) for line in response.text.splitlines()]


def test_the_trail_says_who_did_what_to_which_job(
    client: TestClient, alice: dict[str, str]
) -> None:
    bob = make_tenant("bob")
    new_job(client, bob)  # another tenant's events never show in alice's export
    for name, role in (("ulla", "uploader"), ("vera", "viewer")):
        body = {"username": name, "role": role, "password": PASSWORD}
        assert client.post("/v1/users", json=body, headers=auth(alice)).status_code == 201
    wrong = {"tenant": "alice", "username": "ulla", "password": "guessing wrong"}
    assert client.post("/v1/session", json=wrong).status_code == 401
    csrf = client.post("/v1/session", json={**wrong, "password": PASSWORD}).json()["csrf_token"]
    h = {"X-CSRF-Token": csrf}
    job_id = client.post("/v1/jobs", json={}, headers=h).json()["id"]
    for _ in range(3):  # the console polls: one view is recorded per actor, job and window
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/report.pdf").status_code == 409  # not recorded
    assert client.get("/v1/jobs/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12).status_code == 404
    # awaiting its upload: one DELETE deletes it (issue 20.9)
    assert client.delete(f"/v1/jobs/{job_id}", headers=h).status_code == 204
    assert client.delete("/v1/session", headers=h).status_code == 204
    role = client.patch("/v1/users/vera", json={"role": "uploader"}, headers=auth(alice))
    assert role.status_code == 200
    assert client.delete("/v1/users/vera", headers=auth(alice)).status_code == 204

    lines = export(client, auth(alice))
    key = "key:" + alice["api_key"][:12]
    seen = [(e["actor"], e["action"], e["job_id"]) for e in lines]
    assert seen == [
        (key, "user_create", None),
        (key, "user_create", None),
        ("user:ulla", "login_failed", None),
        ("user:ulla", "login", None),
        ("user:ulla", "job_create", job_id),
        ("user:ulla", "job_view", job_id),
        ("user:ulla", "job_delete", job_id),
        ("user:ulla", "logout", None),
        (key, "user_role_change", None),
        (key, "user_delete", None),
    ]
    assert all(e["client_address"] == "testclient" for e in lines)  # TestClient's peer
    assert lines[0]["detail"] == {"username": "ulla", "role": "uploader"}
    assert lines[-2]["detail"] == {"username": "vera", "old_role": "viewer", "role": "uploader"}
    assert [e["id"] for e in lines] == sorted(e["id"] for e in lines)
    assert all(e["at"].endswith("+00:00") for e in lines)
    # The export itself is in the trail; paging continues after the last id seen.
    rest = export(client, auth(alice), after_id=lines[-1]["id"])
    assert [(e["actor"], e["action"]) for e in rest] == [(key, "audit_export")]
    assert rest[0]["detail"] == {"lines": len(lines)}
    assert len(export(client, auth(alice), limit=2)) == 2
    assert export(client, auth(alice), since="2999-01-01T00:00:00Z") == []
    assert [e["action"] for e in export(client, auth(bob))] == ["job_create"]


def test_slice_views_are_recorded_once_per_window(
    client: TestClient, alice: dict[str, str]
) -> None:
    """An authorised request for a slice image of an existing job is a slice view, whether
    or not that image exists (the reader asked for patient data); the job's own pages are a
    separate job view."""
    job_id = new_job(client, alice)["id"]
    for index in (0, 1):
        response = client.get(f"/v1/jobs/{job_id}/heatmaps/{index}", headers=auth(alice))
        assert response.status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/events", headers=auth(alice)).status_code == 200
    lines = export(client, auth(alice))
    assert [(e["action"], e["job_id"]) for e in lines] == [
        ("job_create", job_id), ("slice_view", job_id), ("job_view", job_id),
    ]  # fmt: skip


def test_only_admins_read_the_trail(client: TestClient, alice: dict[str, str]) -> None:
    body = {"username": "ulla", "role": "uploader", "password": PASSWORD}
    assert client.post("/v1/users", json=body, headers=auth(alice)).status_code == 201
    client.post("/v1/session", json={"tenant": "alice", "username": "ulla", "password": PASSWORD})
    refused = client.get("/v1/audit")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert client.get("/v1/audit", headers={"Authorization": "Bearer cct_wrong"}).status_code == 401


def _refuses_rewrites(session_factory: Callable[[], Any]) -> None:
    with session_factory() as session:
        record(session, "t", "user:x", Action.LOGIN, client_address="10.0.0.1")
        session.commit()
    for statement in (
        update(AuditEvent).values(actor="user:someone-else"),
        delete(AuditEvent),
    ):
        with session_factory() as session, pytest.raises(DatabaseError, match="append-only"):
            session.execute(statement)
            session.commit()
    with session_factory() as session:
        assert session.query(AuditEvent).one().actor == "user:x"


def test_sqlite_refuses_update_and_delete(client: TestClient) -> None:
    _refuses_rewrites(session_scope)


def test_postgresql_refuses_update_delete_and_truncate() -> None:
    with fresh_postgres_database("covidct_audit") as url:
        migrate(url)
        engine = make_engine(url)
        try:
            _refuses_rewrites(lambda: Session(engine))
            with engine.connect() as connection, pytest.raises(DatabaseError, match="append-only"):
                connection.execute(text("TRUNCATE audit_events"))
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    ("method", "suffix", "action"),
    [
        ("GET", "", "job_view"),
        ("GET", "/slices", "job_view"),
        ("GET", "/events", "job_view"),
        ("GET", "/report.pdf", "report_view"),
        ("HEAD", "/report.pdf", "report_view"),
        ("GET", "/slices/3.png", "slice_view"),
        ("GET", "/slices/3/image", "slice_view"),
        ("GET", "/slices/3/lung-mask.png", "slice_view"),
        ("GET", "/slices/3/density-overlay.png", "slice_view"),
        ("GET", "/slices/3/lesions.png", "slice_view"),
        ("GET", "/heatmaps/3", "slice_view"),
        ("DELETE", "", "job_delete"),
        ("POST", "", None),
    ],
)
def test_what_a_request_on_a_job_is(method: str, suffix: str, action: str | None) -> None:
    """Every route under /v1/jobs/{id} is classified (the gateway's routes as of now)."""
    from services.gateway.auth import Credentials, _job_action

    job_id = "0" * 8 + "-0000-0000-0000-" + "0" * 12
    credentials = Credentials(
        None, (), method=method, path=f"/v1/jobs/{job_id}{suffix}", job_id=job_id
    )
    found = _job_action(credentials)
    assert (found.value if found else None) == action
    assert _job_action(Credentials(None, (), method="GET", path="/v1/jobs")) is None


def test_every_read_or_delete_of_a_job_is_audited_as_what_it_serves(client: TestClient) -> None:
    """Every route under /v1/jobs/{job_id} (those added later too): an image is a slice
    view, a PDF a report view, anything else a job view; DELETE a job deletion."""
    from services.gateway.auth import Credentials, _job_action

    paths = client.get("/openapi.json").json()["paths"]
    routes = {p: ops for p, ops in paths.items() if p.startswith("/v1/jobs/{job_id}")}
    assert len(routes) >= 10
    for route, operations in routes.items():
        path = route.replace("{job_id}", "j").replace("{slice_index}", "1")
        for method, operation in operations.items():
            if method == "delete":
                expected = "job_delete"
            else:
                media = set(operation["responses"].get("200", {}).get("content", {}))
                expected = (
                    "slice_view" if any(m.startswith("image/") for m in media)
                    else "report_view" if "application/pdf" in media
                    else "job_view"
                )  # fmt: skip
            credentials = Credentials(None, (), method=method.upper(), path=path, job_id="j")
            found = _job_action(credentials)
            assert (found.value if found else None) == expected, (method, route)
