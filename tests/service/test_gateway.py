"""The /v1 API and the tus endpoint in-process (SQLite): the contract and every misuse."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.jobs import transition
from services.common.orm import JobEvent, JobStatus, WebhookDelivery
from tests.support.service import auth, make_tenant, new_job, tus_headers, tus_metadata

JOB_KEYS = {
    "id", "status", "stage", "external_id", "created_at", "updated_at", "error", "study", "result",
}  # fmt: skip


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0", max_upload_bytes=100000)  # no broker
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def bob(client: TestClient) -> dict[str, str]:
    return make_tenant("bob")


def create_upload(
    client: TestClient,
    tenant: dict[str, str],
    job_id: str,
    size: int,
    body: bytes = b"",
    **meta: str,
) -> Any:
    metadata = {"job_id": job_id, "filename": "study.zip", "filetype": "application/zip", **meta}
    headers = tus_headers(tenant, **{"Upload-Length": str(size)})
    headers["Upload-Metadata"] = tus_metadata(**metadata)
    if body:
        headers["Content-Type"] = "application/offset+octet-stream"
    return client.post("/v1/uploads", headers=headers, content=body)


def patch(
    client: TestClient, tenant: dict[str, str], location: str, offset: int, data: bytes
) -> Any:
    headers = tus_headers(
        tenant,
        **{"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
    )
    return client.patch(location, headers=headers, content=data)


# --- authentication and tenancy ---------------------------------------------------------


def test_missing_or_wrong_key_is_401(client: TestClient, alice: dict[str, str]) -> None:
    assert client.get("/v1/jobs").status_code == 401
    wrong = client.get("/v1/jobs", headers={"Authorization": "Bearer cct_nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "unauthorized"
    assert client.post("/v1/jobs", json={}).status_code == 401


def test_only_a_hash_of_the_key_is_stored(client: TestClient, alice: dict[str, str]) -> None:
    from sqlalchemy import select

    from services.common.orm import ApiKey

    with session_scope() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.tenant_id == alice["id"]))
        assert key is not None
        assert key.key_hash == hashlib.sha256(alice["api_key"].encode()).hexdigest()
        assert key.prefix == alice["api_key"][:12]
    assert alice["webhook_secret"].startswith("whsec_")


def test_create_and_get_job(client: TestClient, alice: dict[str, str]) -> None:
    created = new_job(client, alice, external_id="acc-1", callback_url="https://h.example/cb")
    assert created["status"] == "awaiting_upload"
    assert created["upload_url"] == "/v1/uploads"
    assert created.keys() >= JOB_KEYS
    got = client.get(f"/v1/jobs/{created['id']}", headers=auth(alice))
    assert got.status_code == 200
    body = got.json()
    assert set(body) == JOB_KEYS | {"deliveries"}  # to result destinations
    assert body["deliveries"] == []  # the tenant has none
    assert body["external_id"] == "acc-1"
    assert body["error"] is None and body["result"] is None


def test_other_tenants_job_is_404(
    client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job = new_job(client, alice)
    for path in ("", "/slices", "/heatmaps/3"):
        response = client.get(f"/v1/jobs/{job['id']}{path}", headers=auth(bob))
        assert response.status_code == 404, path
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth(bob)).status_code == 404
    # Bob cannot upload into Alice's job, nor touch her upload.
    assert create_upload(client, bob, job["id"], 10).status_code == 404
    location = create_upload(client, alice, job["id"], 10).headers["location"]
    assert client.head(location, headers=tus_headers(bob)).status_code == 404
    assert patch(client, bob, location, 0, b"x" * 10).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()["status"] == (
        "awaiting_upload"
    )


def test_unknown_job_is_404(client: TestClient, alice: dict[str, str]) -> None:
    response = client.get("/v1/jobs/does-not-exist", headers=auth(alice))
    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"
    assert client.delete("/v1/jobs/does-not-exist", headers=auth(alice)).status_code == 404


def test_invalid_body_is_422(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/jobs", json={"callback_url": "not a url"}, headers=auth(alice))
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    extra = client.post("/v1/jobs", json={"surprise": 1}, headers=auth(alice))
    assert extra.status_code == 422


def test_idempotency_key(client: TestClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    headers = {**auth(alice), "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json={"external_id": "a"}, headers=headers)
    again = client.post("/v1/jobs", json={"external_id": "a"}, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={"external_id": "b"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    # Keys are per tenant.
    bobs = client.post(
        "/v1/jobs", json={"external_id": "a"}, headers={**auth(bob), "Idempotency-Key": "k-1"}
    )
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]


def test_list_is_paged_and_filtered(
    client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    ids = [new_job(client, alice)["id"] for _ in range(5)]
    new_job(client, bob)
    page = client.get("/v1/jobs?limit=2&offset=0", headers=auth(alice)).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    rest = client.get("/v1/jobs?limit=10&offset=2", headers=auth(alice)).json()
    seen = {j["id"] for j in page["items"]} | {j["id"] for j in rest["items"]}
    assert seen == set(ids)
    with session_scope() as session:  # a job being processed is cancelled (kept), not deleted
        assert transition(session, ids[0], JobStatus.QUEUED, [JobStatus.AWAITING_UPLOAD])
    assert client.delete(f"/v1/jobs/{ids[0]}", headers=auth(alice)).status_code == 202
    cancelled = client.get("/v1/jobs?status=cancelled", headers=auth(alice)).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert client.get("/v1/jobs?status=bogus", headers=auth(alice)).status_code == 422


# --- tus ------------------------------------------------------------------------------------


def test_upload_in_two_parts_queues_the_job_once(
    client: TestClient, alice: dict[str, str], started: list[str]
) -> None:
    job = new_job(client, alice)
    data = b"0123456789" * 100
    created = create_upload(client, alice, job["id"], len(data))
    assert created.status_code == 201
    location = created.headers["location"]
    assert patch(client, alice, location, 0, data[:400]).status_code == 204
    head = client.head(location, headers=tus_headers(alice))
    assert head.status_code == 200 and head.headers["upload-offset"] == "400"
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()["status"] == (
        "awaiting_upload"
    )
    assert patch(client, alice, location, 400, data[400:]).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()["status"] == "queued"
    assert started == [job["id"]]


def test_upload_finished_in_creation_starts_the_job(
    client: TestClient, alice: dict[str, str], started: list[str]
) -> None:
    job = new_job(client, alice)
    data = b"tiny study"
    response = create_upload(
        client, alice, job["id"], len(data), body=data, sha256=hashlib.sha256(data).hexdigest()
    )
    assert response.status_code == 201
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()["status"] == "queued"
    assert started == [job["id"]]


def test_checksum_mismatch_fails_the_job_and_deletes_the_bytes(
    client: TestClient, alice: dict[str, str], started: list[str], tmp_path: Path
) -> None:
    job = new_job(client, alice, callback_url="https://h.example/cb")
    data = b"some bytes"
    response = create_upload(client, alice, job["id"], len(data), body=data, sha256="0" * 64)
    assert response.status_code == 201
    body = client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "checksum_mismatch"
    assert started == []
    # The job ended: its raw upload is not kept (retention_keep_raw_upload keeps it).
    assert not (tmp_path / "blobs" / "jobs" / job["id"] / "upload").exists()
    with session_scope() as session:
        deliveries = session.query(WebhookDelivery).filter_by(job_id=job["id"]).all()
        assert [d.event_type for d in deliveries] == ["job.failed"]


def test_second_upload_for_a_job_is_409(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    assert create_upload(client, alice, job["id"], 10).status_code == 201
    second = create_upload(client, alice, job["id"], 10)
    assert second.status_code == 409
    assert second.json()["code"] == "conflict"


def test_upload_after_the_job_was_queued_is_409(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    assert create_upload(client, alice, job["id"], 3, body=b"abc").status_code == 201
    assert create_upload(client, alice, job["id"], 3, body=b"abc").status_code == 409


@pytest.mark.parametrize("missing", ["job_id", "filename", "filetype"])
def test_missing_tus_metadata_is_400(
    client: TestClient, alice: dict[str, str], missing: str
) -> None:
    job = new_job(client, alice)
    metadata = {"job_id": job["id"], "filename": "s.zip", "filetype": "application/zip"}
    del metadata[missing]
    headers = tus_headers(alice, **{"Upload-Length": "10"})
    headers["Upload-Metadata"] = tus_metadata(**metadata)
    response = client.post("/v1/uploads", headers=headers)
    assert response.status_code == 400
    assert missing in response.json()["message"]


@pytest.mark.parametrize(
    ("filename", "word"), [("a" * 5000 + ".zip", "longer"), ("s\x00.zip", "control")]
)
def test_overlong_or_control_character_filename_is_400_and_frees_the_job(
    client: TestClient, alice: dict[str, str], filename: str, word: str
) -> None:
    job = new_job(client, alice)
    headers = tus_headers(alice, **{"Upload-Length": "3"})
    headers["Upload-Metadata"] = tus_metadata(
        job_id=job["id"], filename=filename, filetype="application/zip"
    )
    response = client.post("/v1/uploads", headers=headers)
    assert response.status_code == 400 and word in response.json()["message"]
    assert create_upload(client, alice, job["id"], 3, body=b"abc").status_code == 201


def test_bad_sha256_metadata_is_400(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    assert create_upload(client, alice, job["id"], 10, sha256="xyz").status_code == 400


def test_oversize_upload_is_413(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    response = create_upload(client, alice, job["id"], 100_001)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_tus_needs_the_api_key(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    metadata = tus_metadata(job_id=job["id"], filename="s.zip", filetype="application/zip")
    response = client.post(
        "/v1/uploads",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10", "Upload-Metadata": metadata},
    )
    assert response.status_code == 401


def test_terminated_upload_frees_the_job(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    location = create_upload(client, alice, job["id"], 10).headers["location"]
    assert client.delete(location, headers=tus_headers(alice)).status_code == 204
    assert create_upload(client, alice, job["id"], 10).status_code == 201


def test_expired_upload_is_swept_and_frees_the_job(
    client: TestClient, alice: dict[str, str], tmp_path: Path
) -> None:
    import json

    from services.upload.ingest import sweep_expired_uploads

    job = new_job(client, alice)
    location = create_upload(client, alice, job["id"], 10).headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    info_path = tmp_path / "uploads" / f"{upload_id}.info"
    info = json.loads(info_path.read_text())
    assert "expires" in info
    info["expires"] = "Mon, 02 Jan 2006 15:04:05 GMT"
    info_path.write_text(json.dumps(info))
    assert client.head(location, headers=tus_headers(alice)).status_code == 410
    assert sweep_expired_uploads(tmp_path / "uploads") == 1
    assert not info_path.exists()
    assert create_upload(client, alice, job["id"], 10).status_code == 201


# --- delete, slices, heatmaps, health ------------------------------------------------------


def test_delete_of_a_job_awaiting_upload_removes_it_at_once(
    client: TestClient, alice: dict[str, str]
) -> None:
    # Issue 20.9: the first DELETE said "deleted" but left the job `cancelled` (a second one
    # was needed). A job no stage has seen is gone after one DELETE, its events with it.
    job = new_job(client, alice)
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth(alice)).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).status_code == 404
    with session_scope() as session:
        assert session.query(JobEvent).filter_by(job_id=job["id"]).count() == 0
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth(alice)).status_code == 404


def test_delete_cancels_a_queued_job_then_deletes(
    client: TestClient, alice: dict[str, str]
) -> None:
    job = new_job(client, alice)
    with session_scope() as session:  # its study arrived: a stage may be working on it
        assert transition(session, job["id"], JobStatus.QUEUED, [JobStatus.AWAITING_UPLOAD])
    cancelled = client.delete(f"/v1/jobs/{job['id']}", headers=auth(alice))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    with session_scope() as session:
        events = [e.status for e in session.query(JobEvent).filter_by(job_id=job["id"])]
    assert events == ["awaiting_upload", "queued", "cancelled"]
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth(alice)).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).status_code == 404


def test_slices_and_heatmaps_before_any_result(client: TestClient, alice: dict[str, str]) -> None:
    job = new_job(client, alice)
    slices = client.get(f"/v1/jobs/{job['id']}/slices", headers=auth(alice))
    assert slices.status_code == 200 and slices.json()["slices"] == []
    heatmap = client.get(f"/v1/jobs/{job['id']}/heatmaps/0", headers=auth(alice))
    assert heatmap.status_code == 404 and heatmap.json()["code"] == "heatmap_not_found"


def test_health_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")  # the broker URL points nowhere
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] is True
    assert ready.json()["checks"]["broker"] is False
    assert set(ready.json()["checks"]) == {"database", "broker"}  # no worker, no scorer
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "covidct_jobs" in metrics.text
    assert 'covidct_dependency_up{dependency="database"} 1.0' in metrics.text
    assert 'covidct_dependency_up{dependency="broker"} 0.0' in metrics.text
    # Only the kubelet and Prometheus, calling the pod directly, see them; not the ingress.
    for forwarded in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"}):
        assert client.get("/readyz", headers=forwarded).status_code == 404
        assert client.get("/metrics", headers=forwarded).status_code == 404
    assert client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/slices"} <= set(paths)


def test_unauthenticated_patch_writes_nothing(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], tmp_path: Path
) -> None:
    job = new_job(client, alice)
    location = create_upload(client, alice, job["id"], 100).headers["location"]
    upload_file = tmp_path / "uploads" / location.rstrip("/").rsplit("/", 1)[-1]
    no_key = client.patch(
        location,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"x" * 40,
    )
    assert no_key.status_code == 401
    assert patch(client, bob, location, 0, b"y" * 40).status_code == 404
    assert upload_file.stat().st_size == 0
    head = client.head(location, headers=tus_headers(alice))
    assert head.headers["upload-offset"] == "0"


def test_streamed_sha256_matches_the_file(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.upload import ingest

    def no_rehash(_path: Path) -> str:
        raise AssertionError("the digest computed while streaming should have been used")

    monkeypatch.setattr(ingest, "file_sha256", no_rehash)
    job = new_job(client, alice)
    data = bytes(range(256)) * 300
    location = create_upload(
        client, alice, job["id"], len(data), sha256=hashlib.sha256(data).hexdigest()
    ).headers["location"]
    for start in range(0, len(data), 30_000):
        assert (
            patch(client, alice, location, start, data[start : start + 30_000]).status_code == 204
        )
    body = client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()
    assert body["status"] == "queued", body


def test_gateway_logs_are_json_uvicorn_included(client: TestClient) -> None:
    import json
    import logging

    from services.common.logging import JsonFormatter

    # pytest adds capture handlers of its own; ours is the one stderr handler.
    (handler,) = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    assert isinstance(handler.formatter, JsonFormatter)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        assert server_logger.handlers == [] and server_logger.propagate
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("uvicorn.error").makeRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (),
            sys.exc_info(),
        )  # fmt: skip
    line = json.loads(handler.format(record))
    assert line["logger"] == "uvicorn.error" and "ValueError: boom" in line["exc"]


def test_failed_authentication_is_throttled_per_address_and_key_prefix(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    isolated_settings(
        broker_url="redis://127.0.0.1:1/0", auth_failure_limit=3, auth_failure_window_s=60
    )
    alice_key = make_tenant("alice")["api_key"]
    with TestClient(create_app()) as test_client:
        bad = {"Authorization": "Bearer cct_guessing_this_key"}
        assert [test_client.get("/v1/jobs", headers=bad).status_code for _ in range(3)] == [401] * 3
        blocked = test_client.get("/v1/jobs", headers=bad)
        assert blocked.status_code == 429 and blocked.json()["code"] == "too_many_failed_auth"
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        # The address is blocked for tus too, before any byte or database lookup.
        tus = test_client.post(
            "/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3", **bad}
        )
        assert tus.status_code == 429
    # Another address (a fresh client) with a right key is served.
    with TestClient(create_app(), client=("10.9.8.7", 50000)) as other:
        ok = other.get("/v1/jobs", headers={"Authorization": f"Bearer {alice_key}"})
        assert ok.status_code == 200


def test_405_names_every_method_of_the_path(client: TestClient, alice: dict[str, str]) -> None:
    response = client.put("/v1/jobs", headers=auth(alice))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"
