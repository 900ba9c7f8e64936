"""What the web console needs from the gateway, in-process: the job's events, prepared
slices as PNG (tenant-scoped), the built console with its caching and CSP headers, CORS
preflights for tus without a key (and nothing else without one), the committed OpenAPI
document the console's types are generated from."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from scripts.export_openapi import OPENAPI_JSON, openapi_document, render
from services.asgi import create_app
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.orm import Job, SliceRecord
from services.common.storage import make_storage
from services.gateway.console import CSP, IMMUTABLE
from tests.support.service import auth, make_tenant, new_job, tus_metadata

ORIGIN = "https://console.hospital.example"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>covidct console</title>")
    (built / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for the web")
    return built


@pytest.fixture
def client(
    isolated_settings: Callable[..., Settings], started: list[str], dist: Path
) -> Iterator[TestClient]:
    isolated_settings(
        broker_url="redis://127.0.0.1:1/0",
        console_dir=str(dist),
        cors_allowed_origins=f'["{ORIGIN}"]',
    )
    with TestClient(create_app()) as test_client:
        yield test_client


def _prepared_job(client: TestClient, tenant: dict[str, str]) -> tuple[str, np.ndarray]:
    """A job whose preprocessing stored 3 slices: 0 and 2 kept (stack 0, 1), 1 dropped."""
    job_id = new_job(client, tenant)["id"]
    stack = np.stack([np.full((8, 8), 10, np.uint8), np.arange(64, dtype=np.uint8).reshape(8, 8)])
    buffer = io.BytesIO()
    np.save(buffer, stack, allow_pickle=False)
    make_storage(get_settings()).put_bytes(f"jobs/{job_id}/slices.npy", buffer.getvalue())
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.slices_blob = f"jobs/{job_id}/slices.npy"
        session.add_all(
            [
                SliceRecord(job_id=job_id, index=0, kept=True, stack_position=0),
                SliceRecord(job_id=job_id, index=1, kept=False, drop_reason="no_lung"),
                SliceRecord(job_id=job_id, index=2, kept=True, stack_position=1),
            ]
        )
    return job_id, stack


def test_slice_png_is_the_prepared_slice(client: TestClient, alice: dict[str, str]) -> None:
    job_id, stack = _prepared_job(client, alice)
    response = client.get(f"/v1/jobs/{job_id}/slices/2.png", headers=auth(alice))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=3600"
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and np.array_equal(image, stack[1])


def test_slice_png_refuses_dropped_unknown_and_other_tenants(
    client: TestClient, alice: dict[str, str]
) -> None:
    job_id, _stack = _prepared_job(client, alice)
    for index in (1, 3):  # dropped, not in the study
        response = client.get(f"/v1/jobs/{job_id}/slices/{index}.png", headers=auth(alice))
        assert response.status_code == 404
        assert response.json()["code"] == "slice_not_found"
    bob = make_tenant("bob")
    response = client.get(f"/v1/jobs/{job_id}/slices/0.png", headers=auth(bob))
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job_id}/slices/0.png").status_code == 401
    pending = new_job(client, alice)["id"]  # not preprocessed yet
    assert client.get(f"/v1/jobs/{pending}/slices/0.png", headers=auth(alice)).status_code == 404


def test_events_are_the_timeline(client: TestClient, alice: dict[str, str]) -> None:
    job_id = new_job(client, alice)["id"]
    response = client.get(f"/v1/jobs/{job_id}/events", headers=auth(alice))
    assert response.status_code == 200
    body = response.json()
    assert body["job_id"] == job_id
    assert [e["status"] for e in body["events"]] == ["awaiting_upload"]
    assert set(body["events"][0]) == {"status", "stage", "at"}
    bob = make_tenant("bob")
    assert client.get(f"/v1/jobs/{job_id}/events", headers=auth(bob)).status_code == 404


def test_console_index_is_revalidated_with_a_strict_csp(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "covidct console" in response.text
    assert response.headers["cache-control"] == "no-cache"
    csp = response.headers["content-security-policy"]
    assert csp == CSP
    assert "script-src 'self'" in csp and "'unsafe-eval'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_hashed_assets_are_immutable_and_nothing_outside_dist_is_served(
    client: TestClient,
) -> None:
    response = client.get("/assets/index-abc123.js")
    assert response.status_code == 200
    assert response.headers["cache-control"] == IMMUTABLE
    assert "javascript" in response.headers["content-type"]
    for path in (
        "/assets/missing.js",
        "/assets/../../secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
    ):
        assert client.get(path).status_code == 404, path
    assert client.get("/healthz").status_code == 200  # the API still wins over the console
    assert client.get("/openapi.json").status_code == 200


def test_console_not_built_says_how_to_build_it(
    isolated_settings: Callable[..., Settings], started: list[str], tmp_path: Path
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", console_dir=str(tmp_path / "none"))
    with TestClient(create_app()) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert "make install" in response.text
    assert response.headers["content-security-policy"] == CSP


def test_model_card_is_served(client: TestClient) -> None:
    response = client.get("/model-card")
    assert response.status_code == 200
    assert "text/plain" in response.headers["content-type"]
    assert "P002" in response.text  # the shipped cards discuss it


def test_tus_preflight_from_an_allowed_origin_needs_no_key(client: TestClient) -> None:
    response = client.options(
        "/v1/uploads/abc",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, tus-resumable, upload-offset",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "upload-offset" in allowed and "authorization" in allowed


def test_preflight_from_another_origin_is_refused(client: TestClient) -> None:
    response = client.options(
        "/v1/uploads",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_only_preflights_skip_the_key(client: TestClient, alice: dict[str, str]) -> None:
    # A plain tus OPTIONS (no Access-Control-Request-Method) is no preflight: it needs a key.
    assert client.options("/v1/uploads", headers={"Origin": ORIGIN}).status_code == 401
    assert client.post("/v1/uploads", headers={"Origin": ORIGIN}).status_code == 401
    # An allowed origin reads the tus headers of a real answer.
    response = client.options("/v1/uploads", headers={"Origin": ORIGIN, **auth(alice)})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "upload-offset" in exposed and "tus-resumable" in exposed and "location" in exposed


SIBLING = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-site"}  # console.hospital.example -> api
SAME = {"Sec-Fetch-Site": "same-origin"}


def test_console_sessions_are_same_origin_only(client: TestClient, alice: dict[str, str]) -> None:
    """Cross-origin (issue 20.12): the cookie works on the gateway's own origin only. A page
    on an allowed origin may call the API with an API key, never with credentials: no
    Access-Control-Allow-Credentials, and a cookie from another origin (Fetch Metadata)
    is refused explicitly, sign-in, API and tus alike."""
    body = {"username": "ulla", "role": "uploader", "password": "correct horse battery"}
    assert client.post("/v1/users", json=body, headers=auth(alice)).status_code == 201
    login = {"tenant": "alice", "username": "ulla", "password": "correct horse battery"}
    refused = client.post("/v1/session", json=login, headers=SIBLING)
    assert refused.status_code == 403 and refused.json()["code"] == "cross_origin_session"
    assert "covidct_session" not in client.cookies
    signed = client.post("/v1/session", json=login, headers=SAME)
    assert signed.status_code == 200
    csrf = signed.json()["csrf_token"]
    assert client.get("/v1/jobs", headers=SAME).status_code == 200
    assert client.get("/v1/jobs").status_code == 200  # a browser without Fetch Metadata
    for site in ("same-site", "cross-site"):
        other = {"Origin": ORIGIN, "Sec-Fetch-Site": site, "X-CSRF-Token": csrf}
        listed = client.get("/v1/jobs", headers=other)
        assert listed.status_code == 403 and listed.json()["code"] == "cross_origin_session"
        assert "access-control-allow-credentials" not in listed.headers
        created = client.post("/v1/jobs", json={}, headers=other)
        assert created.status_code == 403
        tus = {
            **other, "Tus-Resumable": "1.0.0", "Upload-Length": "10",
            "Upload-Metadata": tus_metadata(filename="s.zip", filetype="application/zip"),
        }  # fmt: skip
        upload = client.post("/v1/uploads", headers=tus)
        assert upload.status_code == 403 and upload.json()["code"] == "cross_origin_session"
    # The same page with an API key (no cookie sent): allowed, and CORS lets it read.
    keyed = TestClient(client.app).get("/v1/jobs", headers={**SIBLING, **auth(alice)})
    assert keyed.status_code == 200
    assert keyed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in keyed.headers
    preflight = client.options(
        "/v1/jobs",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-csrf-token, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "access-control-allow-credentials" not in preflight.headers  # browsers then refuse


def test_no_cors_without_configured_origins(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as client:
        response = client.options(
            "/v1/uploads",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
    assert response.status_code == 401
    assert "access-control-allow-origin" not in response.headers


def test_committed_openapi_document_is_current() -> None:
    """console/src/api/openapi.json feeds the console's generated types: regenerate it with
    `python -m scripts.export_openapi` after an API change (then `npm run build` type-checks
    the console against it)."""
    assert OPENAPI_JSON.read_text() == render(openapi_document())
