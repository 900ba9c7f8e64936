"""The tus 1.0 endpoint in-process (SQLite, loopback only): the protocol as tus.io specifies
it for the core and the extensions this service offers (creation, creation-with-upload,
termination, expiration, checksum), and one regression test per defect of "Hardening" item 3, each
asserting what is on disk (the file never holds more than the acknowledged offset) and the
job's state.

Requests whose body must arrive in several pieces (as from a real socket) are sent as raw
ASGI messages on the test client's event loop; everything else goes through TestClient.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job
from tests.support.service import auth, make_tenant, tus_headers, tus_metadata

MAX_BYTES = 1_000_000
OCTETS = "application/offset+octet-stream"
ASGI_CHUNK = 65_536  # what uvicorn hands the app per receive() on a fast socket


@pytest.fixture
def settings(isolated_settings: Callable[..., Settings]) -> Settings:
    return isolated_settings(broker_url="redis://127.0.0.1:1/0", max_upload_bytes=MAX_BYTES)


@pytest.fixture
def client(settings: Settings, started: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def uploads(settings: Settings) -> Path:
    return settings.upload_dir


def new_job(client: TestClient, tenant: dict[str, str]) -> str:
    response = client.post("/v1/jobs", json={}, headers=auth(tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_state(client: TestClient, tenant: dict[str, str], job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json())


def creation_headers(
    tenant: dict[str, str], job_id: str, length: str | None, **meta: str
) -> dict[str, str]:
    metadata = {"job_id": job_id, "filename": "study.zip", "filetype": "application/zip", **meta}
    headers = tus_headers(tenant)
    if length is not None:
        headers["Upload-Length"] = length
    headers["Upload-Metadata"] = tus_metadata(**metadata)
    return headers


def create(client: TestClient, tenant: dict[str, str], job_id: str, size: int, **meta: str) -> str:
    response = client.post(
        "/v1/uploads", headers=creation_headers(tenant, job_id, str(size), **meta)
    )
    assert response.status_code == 201, response.text
    return urlsplit(response.headers["location"]).path


def patch_headers(tenant: dict[str, str], offset: int, **extra: str) -> dict[str, str]:
    return tus_headers(tenant, **{"Upload-Offset": str(offset), "Content-Type": OCTETS, **extra})


def patch_ok(
    client: TestClient, tenant: dict[str, str], location: str, offset: int, data: bytes
) -> None:
    response = client.patch(location, headers=patch_headers(tenant, offset), content=data)
    assert response.status_code == 204, response.text


def head_offset(client: TestClient, tenant: dict[str, str], location: str) -> int:
    response = client.head(location, headers=tus_headers(tenant))
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def on_disk(uploads: Path, location: str) -> int:
    return (uploads / location.rsplit("/", 1)[-1]).stat().st_size


def open_handles(path: Path) -> int:
    """File descriptors of this process open on ``path`` (Linux /proc)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            continue
    return count


def asgi_request(
    client: TestClient,
    method: str,
    location: str,
    headers: dict[str, str],
    chunks: list[bytes],
    disconnect_after: int | None = None,
) -> int:
    """Send ``chunks`` as separate ASGI body messages (as a socket delivers them); with
    ``disconnect_after`` the client goes away after that many. Returns the status."""
    app = client.app
    portal = client.portal
    assert portal is not None

    async def run() -> int:
        pending = list(chunks)
        sent = 0
        done = anyio.Event()
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if disconnect_after is not None and sent >= disconnect_after:
                return {"type": "http.disconnect"}
            if pending:
                sent += 1
                body = pending.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(pending)}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": location,
            "raw_path": location.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
        return status[0]

    return portal.call(run)


def pieces(data: bytes, size: int = ASGI_CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- core protocol -------------------------------------------------------------------------


def test_options_advertises_exactly_what_works(client: TestClient, alice: dict[str, str]) -> None:
    response = client.options("/v1/uploads", headers=auth(alice))
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-max-size"] == str(MAX_BYTES)
    extensions = set(response.headers["tus-extension"].split(","))
    assert extensions == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    }
    assert "sha1" in response.headers["tus-checksum-algorithm"].split(",")


def test_head_reports_offset_and_length(client: TestClient, alice: dict[str, str]) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    response = client.head(location, headers=tus_headers(alice))
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"
    assert response.headers["upload-length"] == "100"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["cache-control"] == "no-store"


def test_patch_is_204_with_the_new_offset(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(100)
    location = create(client, alice, job_id, 100, sha256=hashlib.sha256(data).hexdigest())
    first = client.patch(location, headers=patch_headers(alice, 0), content=data[:40])
    assert first.status_code == 204
    assert first.headers["upload-offset"] == "40" and first.headers["tus-resumable"] == "1.0.0"
    assert head_offset(client, alice, location) == 40 == on_disk(uploads, location)
    last = client.patch(location, headers=patch_headers(alice, 40), content=data[40:])
    assert last.status_code == 204 and last.headers["upload-offset"] == "100"
    assert job_state(client, alice, job_id)["status"] == "queued"


def test_offset_mismatch_is_409_and_writes_nothing(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    patch_ok(client, alice, location, 0, b"a" * 10)
    response = client.patch(location, headers=patch_headers(alice, 30), content=b"b" * 10)
    assert response.status_code == 409
    assert head_offset(client, alice, location) == 10 == on_disk(uploads, location)


@pytest.mark.parametrize("offset", ["", "-1", "1e3", "ten"])
def test_bad_upload_offset_is_400_and_writes_nothing(
    client: TestClient, alice: dict[str, str], uploads: Path, offset: str
) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    headers = tus_headers(alice, **{"Content-Type": OCTETS})
    if offset:
        headers["Upload-Offset"] = offset
    assert client.patch(location, headers=headers, content=b"x" * 10).status_code == 400
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)


def test_unknown_upload_is_404(client: TestClient, alice: dict[str, str]) -> None:
    location = "/v1/uploads/" + "0" * 32
    assert client.head(location, headers=tus_headers(alice)).status_code == 404
    patched = client.patch(location, headers=patch_headers(alice, 0), content=b"x")
    assert patched.status_code == 404
    assert client.delete(location, headers=tus_headers(alice)).status_code == 404


# Defect: a 415 or 412 PATCH had its body written and its offset advanced.
@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/octet-stream"},
        {"Tus-Resumable": None},
        {"Tus-Resumable": "0.2.2"},
    ],
    ids=["text-plain", "octet-stream", "no-tus-resumable", "old-version"],
)
def test_refused_patch_writes_nothing_and_the_upload_still_completes(
    client: TestClient, alice: dict[str, str], uploads: Path, headers: dict[str, str | None]
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(5000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    bad = patch_headers(alice, 0)
    for name, value in headers.items():
        bad.pop(name)
        if value is not None:
            bad[name] = value
    response = client.patch(location, headers=bad, content=data)
    if "Tus-Resumable" in headers:
        assert response.status_code == 412
        assert response.headers["tus-version"] == "1.0.0"
    else:
        assert response.status_code == 415
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"
    good = client.patch(location, headers=patch_headers(alice, 0), content=data)
    assert good.status_code == 204 and good.headers["upload-offset"] == str(len(data))
    assert job_state(client, alice, job_id)["status"] == "queued"


def test_every_method_but_options_needs_tus_resumable(
    client: TestClient, alice: dict[str, str]
) -> None:
    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 10)
    wrong = {**auth(alice), "Tus-Resumable": "0.2.2"}
    for response in (
        client.head(location, headers=wrong),
        client.delete(location, headers=wrong),
        client.post("/v1/uploads", headers={**creation_headers(alice, job_id, "10"), **wrong}),
    ):
        assert response.status_code == 412
        assert response.headers["tus-version"] == "1.0.0"
    assert head_offset(client, alice, location) == 0  # neither deleted nor replaced


def test_the_api_key_is_checked_before_the_protocol(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    """A stranger learns nothing from the tus checks (409 would say the upload exists)."""
    location = create(client, alice, new_job(client, alice), 100)
    bob = make_tenant("bob")
    no_key = {"Tus-Resumable": "0.2.2", "Upload-Offset": "0", "Content-Type": "text/plain"}
    assert client.patch(location, headers=no_key, content=b"x").status_code == 401
    assert client.patch(location, headers=patch_headers(bob, 7), content=b"x").status_code == 404
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)


def test_method_override_gets_the_same_checks(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    """tus core: X-HTTP-Method-Override tunnels PATCH and DELETE through POST."""
    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 100)
    tunnel = {"X-HTTP-Method-Override": "PATCH"}
    bad = {**patch_headers(alice, 0), **tunnel, "Content-Type": "text/plain"}
    assert client.post(location, headers=bad, content=b"x" * 100).status_code == 415
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)
    good = client.post(location, headers={**patch_headers(alice, 0), **tunnel}, content=b"x" * 10)
    assert good.status_code == 204 and good.headers["upload-offset"] == "10"
    delete = {**tus_headers(alice), "X-HTTP-Method-Override": "DELETE"}
    assert client.post(location, headers=delete).status_code == 204
    create(client, alice, job_id, 100)  # the termination freed the job


# --- creation ------------------------------------------------------------------------------


def test_creation_is_201_with_location_and_expiry(
    client: TestClient, alice: dict[str, str], settings: Settings
) -> None:
    job_id = new_job(client, alice)
    response = client.post("/v1/uploads", headers=creation_headers(alice, job_id, "100"))
    assert response.status_code == 201
    assert response.headers["tus-resumable"] == "1.0.0"
    path = urlsplit(response.headers["location"]).path
    assert path.startswith("/v1/uploads/") and len(path.rsplit("/", 1)[-1]) == 32
    expires = parsedate_to_datetime(response.headers["upload-expires"])
    expected = datetime.now(UTC) + timedelta(days=settings.upload_expiry_days)
    assert abs((expires - expected).total_seconds()) < 120


# Defect: Upload-Length -5 was accepted (201) and held the job's upload slot.
@pytest.mark.parametrize(
    ("length", "status"),
    [("-5", 400), ("abc", 400), ("1.5", 400), ("", 400), (None, 400), (str(MAX_BYTES + 1), 413)],
    ids=["negative", "word", "fraction", "empty", "missing", "over-limit"],
)
def test_bad_upload_length_creates_nothing(
    client: TestClient,
    alice: dict[str, str],
    uploads: Path,
    length: str | None,
    status: int,
) -> None:
    job_id = new_job(client, alice)
    response = client.post("/v1/uploads", headers=creation_headers(alice, job_id, length))
    assert response.status_code == status, response.text
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"
    create(client, alice, job_id, 10)  # the job's upload slot is still free


# Defect: concatenation was advertised; a partial completed and queued the job.
@pytest.mark.parametrize(
    "header",
    [{"Upload-Concat": "partial"}, {"Upload-Defer-Length": "1"}],
    ids=["concatenation", "defer-length"],
)
def test_extensions_not_offered_are_refused(
    client: TestClient, alice: dict[str, str], uploads: Path, header: dict[str, str]
) -> None:
    job_id = new_job(client, alice)
    headers = {**creation_headers(alice, job_id, "3"), **header, "Content-Type": OCTETS}
    if "Upload-Defer-Length" in header:
        headers.pop("Upload-Length")
    response = client.post("/v1/uploads", headers=headers, content=b"abc")
    assert response.status_code == 400
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"


# --- creation-with-upload ------------------------------------------------------------------


def test_creation_with_upload_then_patch(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(100)
    headers = creation_headers(alice, job_id, "100", sha256=hashlib.sha256(data).hexdigest())
    headers["Content-Type"] = OCTETS
    response = client.post("/v1/uploads", headers=headers, content=data[:40])
    assert response.status_code == 201 and response.headers["upload-offset"] == "40"
    location = urlsplit(response.headers["location"]).path
    assert head_offset(client, alice, location) == 40 == on_disk(uploads, location)
    patch_ok(client, alice, location, 40, data[40:])
    assert job_state(client, alice, job_id)["status"] == "queued"


@pytest.mark.parametrize(
    ("content_type", "length", "status"),
    [("text/plain", "10", 415), (OCTETS, "5", 400)],
    ids=["wrong-content-type", "body-beyond-length"],
)
def test_bad_creation_with_upload_creates_nothing(
    client: TestClient,
    alice: dict[str, str],
    uploads: Path,
    content_type: str,
    length: str,
    status: int,
) -> None:
    job_id = new_job(client, alice)
    headers = {**creation_headers(alice, job_id, length), "Content-Type": content_type}
    response = client.post("/v1/uploads", headers=headers, content=b"0123456789")
    assert response.status_code == status
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"
    create(client, alice, job_id, 10)


# --- termination and expiration ------------------------------------------------------------


def test_termination_is_204_then_404(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 100)
    client.patch(location, headers=patch_headers(alice, 0), content=b"x" * 10)
    response = client.delete(location, headers=tus_headers(alice))
    assert response.status_code == 204 and response.headers["tus-resumable"] == "1.0.0"
    assert client.head(location, headers=tus_headers(alice)).status_code == 404
    gone = client.patch(location, headers=patch_headers(alice, 10), content=b"y")
    assert gone.status_code == 404
    assert client.delete(location, headers=tus_headers(alice)).status_code == 404
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"


def test_patch_reports_upload_expires_and_an_expired_upload_is_410(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    response = client.patch(location, headers=patch_headers(alice, 0), content=b"x" * 10)
    assert parsedate_to_datetime(response.headers["upload-expires"]) > datetime.now(UTC)
    info_path = uploads / f"{location.rsplit('/', 1)[-1]}.info"
    info = json.loads(info_path.read_text())
    info["expires"] = "Mon, 02 Jan 2006 15:04:05 GMT"
    info_path.write_text(json.dumps(info))
    assert client.head(location, headers=tus_headers(alice)).status_code == 410
    late = client.patch(location, headers=patch_headers(alice, 10), content=b"y" * 10)
    assert late.status_code == 410
    assert on_disk(uploads, location) == 10


# --- checksum ------------------------------------------------------------------------------


def upload_checksum(data: bytes, algorithm: str = "sha1") -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_patch_with_a_matching_checksum_is_stored(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    for algorithm in ("sha1", "sha256", "md5"):
        offset = head_offset(client, alice, location)
        chunk = os.urandom(10)
        headers = patch_headers(
            alice, offset, **{"Upload-Checksum": upload_checksum(chunk, algorithm)}
        )
        response = client.patch(location, headers=headers, content=chunk)
        assert response.status_code == 204, (algorithm, response.text)
    assert head_offset(client, alice, location) == 30 == on_disk(uploads, location)


def test_checksum_mismatch_is_460_and_the_chunk_is_discarded(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(300_000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    patch_ok(client, alice, location, 0, data[:1000])
    rest = data[1000:]
    wrong = {
        "Content-Length": str(len(rest)),
        "Upload-Checksum": upload_checksum(rest[:-1] + b"\0"),
    }
    status = asgi_request(
        client, "PATCH", location, patch_headers(alice, 1000, **wrong), pieces(rest)
    )
    assert status == 460
    upload_file = uploads / location.rsplit("/", 1)[-1]
    assert head_offset(client, alice, location) == 1000 == upload_file.stat().st_size
    assert open_handles(upload_file) == 0
    right = {"Content-Length": str(len(rest)), "Upload-Checksum": upload_checksum(rest)}
    status = asgi_request(
        client, "PATCH", location, patch_headers(alice, 1000, **right), pieces(rest)
    )
    assert status == 204
    assert job_state(client, alice, job_id)["status"] == "queued"


@pytest.mark.parametrize(
    "checksum", ["crc32 AAAAAA==", "sha1 not-base64!", "sha1 AAAA", "sha1"], ids=str
)
def test_unusable_checksum_header_is_400_and_writes_nothing(
    client: TestClient, alice: dict[str, str], uploads: Path, checksum: str
) -> None:
    location = create(client, alice, new_job(client, alice), 100)
    headers = patch_headers(alice, 0, **{"Upload-Checksum": checksum})
    assert client.patch(location, headers=headers, content=b"x" * 10).status_code == 400
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)


def test_creation_with_upload_checks_the_checksum(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    headers = {**creation_headers(alice, job_id, "100"), "Content-Type": OCTETS}
    body = os.urandom(40)
    wrong = {**headers, "Upload-Checksum": upload_checksum(b"other")}
    assert client.post("/v1/uploads", headers=wrong, content=body).status_code == 460
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    right = {**headers, "Upload-Checksum": upload_checksum(body)}
    response = client.post("/v1/uploads", headers=right, content=body)
    assert response.status_code == 201 and response.headers["upload-offset"] == "40"


# --- a body that ends badly ----------------------------------------------------------------


# Defect: a PATCH longer than Upload-Length left its first bytes on disk (and its handle
# open); the resume appended after them (declared 200,000 B, stored 396,608 B).
def test_patch_beyond_upload_length_writes_nothing(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(200_000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    too_long = data + os.urandom(62_144)
    headers = patch_headers(alice, 0, **{"Content-Length": str(len(too_long))})
    assert asgi_request(client, "PATCH", location, headers, pieces(too_long)) == 400
    assert head_offset(client, alice, location) == 0 == on_disk(uploads, location)
    resume = patch_headers(alice, 0, **{"Content-Length": str(len(data))})
    assert asgi_request(client, "PATCH", location, resume, pieces(data)) == 204
    assert job_state(client, alice, job_id)["status"] == "queued"
    assert started_size(job_id) == len(data)


def started_size(job_id: str) -> int | None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.upload_size


def test_body_longer_than_its_content_length_is_cut_back(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    """Past the header checks (a client whose Content-Length lies): tuspyserver refuses the
    chunk that crosses Upload-Length after writing the ones before; they are cut off and the
    file handle is closed before the next PATCH can take the lock."""
    job_id = new_job(client, alice)
    data = os.urandom(200_000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    patch_ok(client, alice, location, 0, data[:1000])
    lying = patch_headers(alice, 1000, **{"Content-Length": "1000"})
    body = data[1000:] + os.urandom(100_000)
    assert asgi_request(client, "PATCH", location, lying, pieces(body)) == 400
    upload_file = uploads / location.rsplit("/", 1)[-1]
    assert head_offset(client, alice, location) == 1000 == upload_file.stat().st_size
    assert open_handles(upload_file) == 0
    rest = patch_headers(alice, 1000, **{"Content-Length": str(len(data) - 1000)})
    assert asgi_request(client, "PATCH", location, rest, pieces(data[1000:])) == 204
    assert job_state(client, alice, job_id)["status"] == "queued"  # the sha256 matched


def test_write_error_mid_body_keeps_the_acknowledged_offset(
    client: TestClient, alice: dict[str, str], uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.upload import storage

    job_id = new_job(client, alice)
    data = os.urandom(300_000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    patch_ok(client, alice, location, 0, data[:5000])

    real_open = storage.StreamingLocalStorage._open

    class DiskFull:
        def __init__(self, handle: Any) -> None:
            self.handle, self.writes = handle, 0

        def write(self, chunk: bytes) -> int:
            self.writes += 1
            if self.writes == 3:
                raise OSError(28, "No space left on device")
            return int(self.handle.write(chunk))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def failing_open(self: Any, uid: str) -> Any:
        wrapped = DiskFull(real_open(self, uid))
        self._handles[uid] = wrapped
        return wrapped

    monkeypatch.setattr(storage.StreamingLocalStorage, "_open", failing_open)
    headers = patch_headers(alice, 5000, **{"Content-Length": str(len(data) - 5000)})
    status = asgi_request(client, "PATCH", location, headers, pieces(data[5000:]))
    assert status == 500
    upload_file = uploads / location.rsplit("/", 1)[-1]
    assert head_offset(client, alice, location) == 5000 == upload_file.stat().st_size
    assert open_handles(upload_file) == 0
    monkeypatch.setattr(storage.StreamingLocalStorage, "_open", real_open)
    assert asgi_request(client, "PATCH", location, headers, pieces(data[5000:])) == 204
    assert job_state(client, alice, job_id)["status"] == "queued"


def test_client_gone_mid_body_keeps_what_arrived(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(300_000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    headers = patch_headers(alice, 0, **{"Content-Length": str(len(data))})
    asgi_request(client, "PATCH", location, headers, pieces(data), disconnect_after=2)
    offset = head_offset(client, alice, location)
    assert offset == 2 * ASGI_CHUNK == on_disk(uploads, location)
    rest = patch_headers(alice, offset, **{"Content-Length": str(len(data) - offset)})
    assert asgi_request(client, "PATCH", location, rest, pieces(data[offset:])) == 204
    assert job_state(client, alice, job_id)["status"] == "queued"


def test_unacknowledged_bytes_left_by_a_crash_are_cut(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(1000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    patch_ok(client, alice, location, 0, data[:400])
    with (uploads / location.rsplit("/", 1)[-1]).open("ab") as f:
        f.write(b"junk of a PATCH that died with the process")
    patch_ok(client, alice, location, 400, data[400:])
    assert job_state(client, alice, job_id)["status"] == "queued"


# --- event loop and expiry of jobs ---------------------------------------------------------


# Defect: the pre-create hook opened a database session on the event loop.
def test_pre_create_validation_runs_off_the_event_loop(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.upload import tus

    on_loop: list[bool] = []
    real = tus._validate_creation

    def spy(*args: Any) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        real(*args)

    monkeypatch.setattr(tus, "_validate_creation", spy)
    create(client, alice, new_job(client, alice), 10)
    assert on_loop == [False]


# Defect: a job that never got an upload waited in awaiting_upload forever.
def test_jobs_without_an_upload_expire(
    client: TestClient, alice: dict[str, str], uploads: Path, settings: Settings
) -> None:
    from services.upload.ingest import sweep_expired_uploads

    never = new_job(client, alice)
    abandoned = new_job(client, alice)
    abandoned_upload = create(client, alice, abandoned, 100)
    client.patch(abandoned_upload, headers=patch_headers(alice, 0), content=b"x" * 10)
    live = new_job(client, alice)
    live_upload = create(client, alice, live, 100)
    fresh = new_job(client, alice)

    old = datetime.now(UTC) - timedelta(days=settings.upload_expiry_days, hours=1)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id.in_([never, abandoned, live])).values(created_at=old)
        )
    info_path = uploads / f"{abandoned_upload.rsplit('/', 1)[-1]}.info"
    info = json.loads(info_path.read_text())
    info["expires"] = "Mon, 02 Jan 2006 15:04:05 GMT"
    info_path.write_text(json.dumps(info))

    assert sweep_expired_uploads(uploads) == 3  # one upload removed, two jobs failed
    for job_id in (never, abandoned):
        state = job_state(client, alice, job_id)
        assert state["status"] == "failed", state
        assert state["error"]["code"] == "upload_expired"
    assert not (uploads / abandoned_upload.rsplit("/", 1)[-1]).exists() and not info_path.exists()
    assert job_state(client, alice, live)["status"] == "awaiting_upload"  # its upload is live
    assert head_offset(client, alice, live_upload) == 0
    assert job_state(client, alice, fresh)["status"] == "awaiting_upload"
    assert sweep_expired_uploads(uploads) == 0


# --- issue 18: uploads no client can freeze, completion that survives a crash ---------------


def http_scope(method: str, location: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": location,
        "raw_path": location.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class StalledBody:
    """A PATCH body that sends ``first`` and then waits for ``release`` before the rest."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.parts = [first, rest]
        self.release = anyio.Event()
        self.done = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self.parts:
            await self.done.wait()
            return {"type": "http.disconnect"}
        if len(self.parts) == 1:
            await self.release.wait()
        body = self.parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.parts)}


async def asgi_call(
    app: Any,
    method: str,
    location: str,
    headers: dict[str, str],
    receive: Callable[[], Any] | None = None,
    body: bytes = b"",
    done: anyio.Event | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request straight to the app; (status, JSON body or {})."""
    status: list[int] = []
    chunks: list[bytes] = []
    finished = done or anyio.Event()
    sent = False

    async def whole_body() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await app(http_scope(method, location, headers), receive or whole_body, send)
    raw = b"".join(chunks)
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {}
    return status[0], parsed if isinstance(parsed, dict) else {}


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


# Defect (issue 18.7): 7 concurrent PATCHes to one upload waited for its file lock on
# threadpool threads; another tenant's 1 KB PATCH then took 29 s and others got 503.
def test_concurrent_patches_to_one_upload_are_409_at_once(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    settings = isolated_settings(
        broker_url="redis://127.0.0.1:1/0",
        max_upload_bytes=MAX_BYTES,
        gateway_threads=4,
        gateway_max_uploads_per_key=16,  # the per-client share is another test's matter
    )
    uploads = settings.upload_dir
    with TestClient(create_app()) as client:
        alice, bob = make_tenant("alice"), make_tenant("bob")
        data = os.urandom(200_000)
        job_id = new_job(client, alice)
        location = create(client, alice, job_id, len(data))
        bob_job = new_job(client, bob)
        bob_upload = create(client, bob, bob_job, 1024)
        portal = client.portal
        assert portal is not None

        async def scenario() -> tuple[list[tuple[int, dict[str, Any]]], int, int]:
            app = client.app
            holder = StalledBody(data[:ASGI_CHUNK], data[ASGI_CHUNK:])
            headers = patch_headers(alice, 0, **{"Content-Length": str(len(data))})
            results: list[tuple[int, dict[str, Any]]] = []
            held: list[int] = []
            async with anyio.create_task_group() as group:

                async def hold() -> None:
                    done = holder.done
                    held.append((await asgi_call(app, "PATCH", location, headers, holder.receive,
                                                 done=done))[0])  # fmt: skip

                group.start_soon(hold)
                await wait_for(lambda: on_disk(uploads, location) >= ASGI_CHUNK)
                with anyio.fail_after(5):  # at once, not after tuspyserver's 30 s lock wait

                    async def contend() -> None:
                        results.append(await asgi_call(app, "PATCH", location, headers, body=data))

                    async with anyio.create_task_group() as contenders:
                        for _ in range(7):
                            contenders.start_soon(contend)
                        bob_status, _ = await asgi_call(
                            app, "PATCH", bob_upload,
                            patch_headers(bob, 0, **{"Content-Length": "1024"}),
                            body=os.urandom(1024),
                        )  # fmt: skip
                holder.release.set()
            return results, bob_status, held[0]

        results, bob_status, holder_status = portal.call(scenario)
        assert [status for status, _ in results] == [409] * 7
        assert {body.get("code") for _, body in results} == {"upload_busy"}
        assert bob_status == 204  # another tenant's upload went on meanwhile
        assert holder_status == 204
        assert job_state(client, alice, job_id)["status"] == "queued"
        assert job_state(client, bob, bob_job)["status"] == "queued"


# Defect (issue 18.9): the body of a creation POST was read whole into memory (a 1 GiB body
# grew the gateway by 2 GB). It must reach the disk in the pieces it arrives in.
def test_creation_with_upload_streams_its_body(
    client: TestClient, alice: dict[str, str], uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.upload import storage

    appended: list[int] = []
    real_append = storage.StreamingLocalStorage.append

    async def counting(self: Any, uid: str, chunk: bytes) -> None:
        appended.append(len(chunk))
        await real_append(self, uid, chunk)

    monkeypatch.setattr(storage.StreamingLocalStorage, "append", counting)
    job_id = new_job(client, alice)
    data = os.urandom(600_000)
    headers = creation_headers(
        alice, job_id, str(len(data)), sha256=hashlib.sha256(data).hexdigest()
    )
    headers.update({"Content-Type": OCTETS, "Content-Length": str(400_000)})
    headers["Upload-Checksum"] = upload_checksum(data[:400_000])
    assert asgi_request(client, "POST", "/v1/uploads", headers, pieces(data[:400_000])) == 201
    assert appended == [len(p) for p in pieces(data[:400_000])]  # written as it arrived
    assert max(appended) <= ASGI_CHUNK
    location = "/v1/uploads/" + next(p.name for p in uploads.glob("*.info")).removesuffix(".info")
    assert head_offset(client, alice, location) == 400_000 == on_disk(uploads, location)
    rest = patch_headers(alice, 400_000, **{"Content-Length": "200000"})
    assert asgi_request(client, "PATCH", location, rest, pieces(data[400_000:])) == 204
    assert job_state(client, alice, job_id)["status"] == "queued"


def test_creation_with_upload_that_completes_queues_the_job(
    client: TestClient, alice: dict[str, str], started: list[str]
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(5000)
    headers = creation_headers(alice, job_id, "5000", sha256=hashlib.sha256(data).hexdigest())
    response = client.post("/v1/uploads", headers={**headers, "Content-Type": OCTETS}, content=data)
    assert response.status_code == 201 and response.headers["upload-offset"] == "5000"
    assert response.headers["location"].startswith("http")
    assert job_state(client, alice, job_id)["status"] == "queued"
    assert started == [job_id]


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[-1]


# Defect (issue 18.11): after DELETE of a job mid-upload, PATCHes were still accepted and
# the partial upload stayed until it expired (2 days).
def test_cancel_mid_upload_refuses_further_bytes_and_keeps_none(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 100)
    patch_ok(client, alice, location, 0, b"x" * 40)
    uid = upload_id_of(location)
    assert (uploads / uid).exists()
    # Issue 20.9: the console's cancel deletes the job awaiting its upload in one DELETE.
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth(alice)).status_code == 204
    assert not (uploads / uid).exists() and not (uploads / f"{uid}.info").exists()
    refused = client.patch(location, headers=patch_headers(alice, 40), content=b"y" * 60)
    assert refused.status_code == 404  # the upload went with its job
    assert client.head(location, headers=tus_headers(alice)).status_code == 404
    assert not (uploads / uid).exists() and not (uploads / f"{uid}.info").exists()
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(alice)).status_code == 404


def test_a_patch_running_when_its_job_is_cancelled_leaves_nothing(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    data = os.urandom(200_000)
    location = create(client, alice, job_id, len(data))
    uid = upload_id_of(location)
    portal = client.portal
    assert portal is not None

    async def scenario() -> int:
        holder = StalledBody(data[:ASGI_CHUNK], data[ASGI_CHUNK:100_000])
        headers = patch_headers(alice, 0, **{"Content-Length": "100000"})
        statuses: list[int] = []
        async with anyio.create_task_group() as group:

            async def write() -> None:
                call = asgi_call(client.app, "PATCH", location, headers, holder.receive,
                                 done=holder.done)  # fmt: skip
                statuses.append((await call)[0])

            group.start_soon(write)
            await wait_for(lambda: on_disk(uploads, location) >= ASGI_CHUNK)
            status, _ = await asgi_call(client.app, "DELETE", f"/v1/jobs/{job_id}", auth(alice))
            assert status == 204
            holder.release.set()
        return statuses[0]

    portal.call(scenario)
    assert not (uploads / uid).exists() and not (uploads / f"{uid}.info").exists()


# Defect (issue 18.12): 3,000 metadata keys or one 15,000-character key were accepted and
# written into the upload's sidecar.
@pytest.mark.parametrize(
    "extra",
    [{f"k{i}": "v" for i in range(3000)}, {"k" * 15_000: "v"}, {"note": "n" * 5000}],
    ids=["3000-keys", "15000-char-key", "5000-char-value"],
)
def test_oversized_metadata_is_400_before_anything_is_written(
    client: TestClient, alice: dict[str, str], uploads: Path, extra: dict[str, str]
) -> None:
    job_id = new_job(client, alice)
    headers = creation_headers(alice, job_id, "10", **extra)
    response = client.post("/v1/uploads", headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "metadata_too_large"
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    create(client, alice, job_id, 10)  # the job was not claimed


# Defect (issue 18.10): the gateway killed right after the last byte: 8 ms after, the job
# stayed awaiting_upload though HEAD said complete; 12 ms after, HEAD was 404, a new upload
# was refused with 409 for ever and the raw study was orphaned.
def test_a_crash_before_completion_is_finished_by_recovery(
    client: TestClient,
    alice: dict[str, str],
    uploads: Path,
    started: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.upload import tus
    from services.upload.ingest import finish_completed_uploads

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the process died here")

    job_id = new_job(client, alice)
    data = os.urandom(1000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    real_complete = tus.complete_upload
    monkeypatch.setattr(tus, "complete_upload", killed)
    with pytest.raises(RuntimeError):
        client.patch(location, headers=patch_headers(alice, 0), content=data)
    monkeypatch.setattr(tus, "complete_upload", real_complete)
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"
    assert head_offset(client, alice, location) == len(data)  # HEAD still answers: complete
    assert finish_completed_uploads(uploads) == 1
    state = job_state(client, alice, job_id)
    assert state["status"] == "queued" and started == [job_id]
    assert finish_completed_uploads(uploads) == 0 and started == [job_id]  # once
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []


def _die(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("the process died here")


def _die_after(real: Callable[..., Any]) -> Callable[..., Any]:
    def done_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError("the process died here")

    return done_then_die


# Each point where the gateway can die between the last byte and the queued job: the
# completion hook never ran; the completion record was written but the file not stored;
# the file was stored but the job not moved; the job was queued but the sidecar not
# removed; the sidecar was removed but the first step not sent.
CRASH_POINTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "before-completion": lambda mp: mp.setattr("services.upload.tus.complete_upload", _die),
    "after-record": lambda mp: mp.setattr(
        "services.upload.ingest._write_record", _die_after(ingest_module()._write_record)
    ),
    "after-blob": lambda mp: mp.setattr("services.upload.ingest.transition", _die),
    "after-queue": lambda mp: mp.setattr("services.upload.ingest._remove_upload_files", _die),
    "after-sidecar": lambda mp: mp.setattr("services.upload.ingest.enqueue", _die),
}


def ingest_module() -> Any:
    from services.upload import ingest

    return ingest


def head_complete(client: TestClient, tenant: dict[str, str], location: str, size: int) -> None:
    response = client.head(location, headers=tus_headers(tenant))
    assert response.status_code == 200, response.status_code
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["upload-offset"]) == int(response.headers["upload-length"])
    assert int(response.headers["upload-length"]) == size


# Defect (issue 18.10): from the file's move into blob storage on, HEAD was 404 (the client
# then starts over, and its new upload is refused with 409); recovery must finish each point
# exactly once.
@pytest.mark.parametrize("crash", list(CRASH_POINTS))
def test_head_says_complete_at_every_point_between_the_last_byte_and_the_queue(
    client: TestClient,
    alice: dict[str, str],
    uploads: Path,
    settings: Settings,
    started: list[str],
    monkeypatch: pytest.MonkeyPatch,
    crash: str,
) -> None:
    from services.common.storage import make_storage
    from services.common.tasks import dispatch_due_steps
    from services.upload.ingest import finish_completed_uploads

    job_id = new_job(client, alice)
    data = os.urandom(1000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    with monkeypatch.context() as mp:
        CRASH_POINTS[crash](mp)
        with pytest.raises(RuntimeError):
            client.patch(location, headers=patch_headers(alice, 0), content=data)
    assert started == []
    head_complete(client, alice, location, len(data))
    finish_completed_uploads(uploads)
    dispatch_due_steps()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.upload_size == len(data)
        blob = job.upload_blob
    assert blob is not None and make_storage(settings).get_bytes(blob) == data
    assert started == [job_id]
    head_complete(client, alice, location, len(data))  # a client that lost the answer
    assert finish_completed_uploads(uploads) == 0
    dispatch_due_steps()
    assert started == [job_id]  # once
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []
    refused = client.post("/v1/uploads", headers=creation_headers(alice, job_id, "10"))
    assert refused.status_code == 409  # it has its upload


def test_head_of_a_lost_incomplete_upload_is_still_404(
    client: TestClient, alice: dict[str, str], uploads: Path
) -> None:
    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 100)
    patch_ok(client, alice, location, 0, b"x" * 10)
    (uploads / upload_id_of(location)).unlink()  # the bytes are gone, the sidecar is not
    assert client.head(location, headers=tus_headers(alice)).status_code == 404


def test_a_crash_between_storing_the_blob_and_queueing_is_finished_by_recovery(
    client: TestClient,
    alice: dict[str, str],
    uploads: Path,
    settings: Settings,
    started: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.common.storage import make_storage
    from services.upload import ingest

    real_transition = ingest.transition

    def killed(*_args: Any, **_kwargs: Any) -> bool:
        raise RuntimeError("the process died here")

    job_id = new_job(client, alice)
    data = os.urandom(1000)
    location = create(client, alice, job_id, len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(ingest, "transition", killed)
    with pytest.raises(RuntimeError):
        client.patch(location, headers=patch_headers(alice, 0), content=data)
    monkeypatch.setattr(ingest, "transition", real_transition)
    uid = upload_id_of(location)
    assert not (uploads / uid).exists()  # already moved into blob storage
    assert job_state(client, alice, job_id)["status"] == "awaiting_upload"
    assert ingest.finish_completed_uploads(uploads) == 1
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.upload_size == len(data)
        assert job.upload_sha256 == hashlib.sha256(data).hexdigest()
        blob = job.upload_blob
    assert blob is not None and make_storage(settings).get_bytes(blob) == data
    assert started == [job_id]
    assert [p for p in uploads.iterdir() if not p.name.startswith(".")] == []


def test_a_lost_upload_frees_its_job_for_a_new_one(
    client: TestClient, alice: dict[str, str], uploads: Path, settings: Settings
) -> None:
    from services.common.storage import make_storage
    from services.upload.ingest import finish_completed_uploads

    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 100)
    uid = upload_id_of(location)
    (uploads / uid).unlink()  # the sidecar and the file are gone (a crash mid-completion)
    (uploads / f"{uid}.info").unlink()
    make_storage(settings).put_bytes(f"jobs/{job_id}/upload/study.zip", b"orphan")
    assert finish_completed_uploads(uploads) == 0  # not yet: it may be a creation under way
    old = datetime.now(UTC) - timedelta(minutes=10)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=old))
    assert finish_completed_uploads(uploads) == 1
    assert not make_storage(settings).exists(f"jobs/{job_id}/upload/study.zip")
    create(client, alice, job_id, 100)  # a new upload is taken, not 409 for ever


def test_leftovers_of_a_job_that_moved_on_are_removed(
    client: TestClient, alice: dict[str, str], uploads: Path, started: list[str]
) -> None:
    from services.upload.ingest import finish_completed_uploads

    job_id = new_job(client, alice)
    location = create(client, alice, job_id, 10)
    uid = upload_id_of(location)
    info = (uploads / f"{uid}.info").read_text()
    patch_ok(client, alice, location, 0, b"0123456789")
    assert started == [job_id]
    (uploads / f"{uid}.info").write_text(info.replace('"offset": 0', '"offset": 10'))
    assert finish_completed_uploads(uploads) == 0  # a crash before the sidecar went
    assert not (uploads / f"{uid}.info").exists() and started == [job_id]


# Defect (issue 18.16): the upload's file name (often the patient's name) was stored as sent.
def test_filename_is_pseudonymised_when_deidentifying(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    from services.upload.ingest import stored_filename

    settings = isolated_settings(
        broker_url="redis://127.0.0.1:1/0", max_upload_bytes=MAX_BYTES, deidentify_uploads=True
    )
    with TestClient(create_app()) as client:
        alice = make_tenant("alice")
        job_id = new_job(client, alice)
        data = os.urandom(100)
        location = create(client, alice, job_id, 100, filename="DOE^JOHN 1961-02-03.nii.gz")
        patch_ok(client, alice, location, 0, data)
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            stored, blob = job.upload_filename, job.upload_blob
    assert stored is not None and blob is not None
    for leaked in ("DOE", "JOHN", "1961"):
        assert leaked not in stored and leaked not in blob
    assert stored.endswith(".nii.gz") and blob.endswith(stored)
    again = stored_filename("DOE^JOHN 1961-02-03.nii.gz", alice["id"], settings)
    assert again == stored  # keyed: the same name, the same pseudonym within a tenant
    assert stored_filename("DOE^JOHN 1961-02-03.nii.gz", "another-tenant", settings) != stored
    assert stored_filename("smith.dcm", alice["id"], settings).endswith(".dcm")
    plain = settings.model_copy(update={"deidentify_uploads": False})
    assert stored_filename("study.zip", alice["id"], plain) == "study.zip"
