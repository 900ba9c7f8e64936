"""DICOMweb STOW-RS intake (``POST /dicomweb/studies``) in-process: a real DICOMweb client
(dicomweb-client) against the app served on 127.0.0.1, and raw requests for what a client
library would never send (wrong media type, oversize, damaged parts)."""

from __future__ import annotations

import io
import os
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job
from services.common.storage import make_storage
from tests.support.dicom_instances import ct_instance, ct_series, mr_instance, part10
from tests.support.service import auth, creation_record, make_tenant, serving

MAX_BYTES = 2_000_000
BOUNDARY = "stow-test-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def settings(isolated_settings: Callable[..., Settings]) -> Settings:
    return isolated_settings(broker_url="redis://127.0.0.1:1/0", max_upload_bytes=MAX_BYTES)


@pytest.fixture
def client(settings: Settings, started: list[str]) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def served(settings: Settings, started: list[str]) -> Iterator[str]:
    """The app on a real socket (127.0.0.1), for a client library that speaks HTTP."""
    with serving(create_app()) as url:
        yield url


def multipart(*parts: bytes, media: str = "application/dicom") -> bytes:
    body = b""
    for data in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(client: TestClient, tenant: dict[str, str], body: bytes, **headers: str) -> Any:
    return client.post(
        "/dicomweb/studies",
        content=body,
        headers={**auth(tenant), "Content-Type": RELATED, **headers},
    )


def failure_reasons(body: dict[str, Any]) -> list[int]:
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def stored_uids(body: dict[str, Any]) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def uploaded_members(job_id: str, settings: Settings) -> list[pydicom.Dataset]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.upload_blob is not None
        blob = job.upload_blob
    data = make_storage(settings).get_bytes(blob)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist()]


def test_dicomweb_client_stores_two_series_as_two_jobs(
    served: str, settings: Settings, started: list[str]
) -> None:
    tenant = make_tenant("hospital")
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    first = [ct_instance(study, s1, i) for i in range(3)]
    second = [ct_instance(study, s2, i) for i in range(2)]
    dicomweb = DICOMwebClient(url=f"{served}/dicomweb", headers=auth(tenant))

    response = dicomweb.store_instances(datasets=first + second)

    referenced = response.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced) == sorted(
        ds.SOPInstanceUID for ds in first + second
    )
    assert "FailedSOPSequence" not in response
    jobs = list(response[0x0009, 0x1001].value)  # our private element: the jobs made
    assert len(jobs) == 2 and sorted(started) == sorted(jobs)
    by_series: dict[str, set[str]] = {}
    for job_id in jobs:
        members = uploaded_members(job_id, settings)
        by_series.setdefault(members[0].SeriesInstanceUID, set()).update(
            m.SOPInstanceUID for m in members
        )
        job = httpx.get(f"{served}/v1/jobs/{job_id}", headers=auth(tenant)).json()
        assert job["status"] == "queued"
    assert by_series == {
        s1: {ds.SOPInstanceUID for ds in first},
        s2: {ds.SOPInstanceUID for ds in second},
    }
    # Who stored them: the API key, on the job and in the audit trail (as POST /v1/jobs).
    for job_id in jobs:
        created_by, events = creation_record(job_id)
        assert created_by == f"key:{tenant['api_key'][:12]}"
        assert [(e["actor"], e["client_address"], e["detail"]["via"]) for e in events] == [
            (created_by, "127.0.0.1", "stow-rs")
        ]
    assert sorted(creation_record(j)[1][0]["detail"]["instances"] for j in jobs) == [2, 3]
    # Another tenant does not see these jobs.
    other = make_tenant("elsewhere")
    for job_id in jobs:
        assert httpx.get(f"{served}/v1/jobs/{job_id}", headers=auth(other)).status_code == 404


def test_bad_instances_are_refused_with_reasons_and_make_no_job(
    client: TestClient, settings: Settings, started: list[str]
) -> None:
    tenant = make_tenant("hospital")
    good = ct_series(2)
    cut_short = ct_series(1)[0][:-400]
    no_series = ct_instance(generate_uid(), generate_uid(), 0)
    del no_series.SeriesInstanceUID
    body = multipart(
        *good, part10(mr_instance()), cut_short, b"not dicom at all", part10(no_series)
    )

    response = stow(client, tenant, body)

    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    assert failure_reasons(answer) == [0x0122, 0xC000, 0xC000, 0xA900]
    assert len(stored_uids(answer)) == 2
    assert len(started) == 1  # one job, of the two good instances only
    assert len(uploaded_members(started[0], settings)) == 2
    assert response.headers["Covidct-Job-Ids"] == started[0]

    only_bad = stow(client, tenant, multipart(part10(mr_instance()), cut_short))
    assert only_bad.status_code == 409
    assert failure_reasons(only_bad.json()) == [0x0122, 0xC000]
    assert "00081199" not in only_bad.json() and len(started) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/zip",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        f"multipart/form-data; boundary={BOUNDARY}",
    ],
)
def test_other_media_types_are_415(client: TestClient, content_type: str) -> None:
    tenant = make_tenant("hospital")
    response = stow(client, tenant, multipart(*ct_series(1)), **{"Content-Type": content_type})
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_too_large_is_413_and_leaves_nothing(
    client: TestClient, settings: Settings, started: list[str]
) -> None:
    tenant = make_tenant("hospital")
    big = ct_series(1, size=1100)[0]  # 2.4 MB of pixels, over MAX_BYTES
    response = stow(client, tenant, multipart(big))
    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"
    assert started == []
    assert not list(settings.upload_dir.glob("stow-*"))  # the streamed parts are gone

    # Without Content-Length the stream is counted as it arrives.
    chunks = iter([multipart(big)[i : i + 65536] for i in range(0, len(multipart(big)), 65536)])
    streamed = client.post(
        "/dicomweb/studies", content=chunks, headers={**auth(tenant), "Content-Type": RELATED}
    )
    assert streamed.status_code == 413 and started == []


def test_parts_a_crash_left_are_swept(settings: Settings, started: list[str]) -> None:
    old, live = settings.upload_dir / "stow-0123abcd", settings.upload_dir / "stow-4567ef01"
    for folder in (old, live):
        folder.mkdir(parents=True)
        (folder / "part-00000.dcm").write_bytes(b"PHI")
    hours_ago = time.time() - 2 * 3600
    for path in (old / "part-00000.dcm", old):
        os.utime(path, (hours_ago, hours_ago))
    with TestClient(create_app()):  # the gateway's sweep runs at start
        deadline = time.monotonic() + 10
        while old.exists():
            assert time.monotonic() < deadline, "the leftover was not removed"
            time.sleep(0.05)
    assert live.exists()  # another gateway's request in flight is left alone


def test_a_half_sent_body_stores_nothing(
    client: TestClient, settings: Settings, started: list[str]
) -> None:
    """A body cut off mid-way (no closing boundary; the last instance half there): no job
    of the instances before the cut either, since the sender did not finish and will send
    the whole series again. A whole body afterwards is stored as usual."""
    tenant = make_tenant("hospital")
    series = ct_series(3)
    whole = multipart(*series)
    cut = whole[: len(whole) - len(series[-1]) // 2]
    response = stow(client, tenant, cut)
    assert response.status_code == 400
    assert response.json()["code"] == "incomplete_body"
    assert started == []
    assert not list(settings.upload_dir.glob("stow-*"))
    again = stow(client, tenant, whole)
    assert again.status_code == 200 and len(stored_uids(again.json())) == 3
    assert len(started) == 1 and len(uploaded_members(started[0], settings)) == 3


def test_a_client_that_goes_mid_body_stores_nothing(
    served: str, settings: Settings, started: list[str]
) -> None:
    """The connection drops mid-body (Content-Length promised more): no job, and the parts
    written so far are removed."""
    import socket
    from urllib.parse import urlsplit

    tenant = make_tenant("hospital")
    whole = multipart(*ct_series(3))
    address = urlsplit(served)
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Authorization: Bearer {tenant['api_key']}\r\nContent-Type: {RELATED}\r\n"
        f"Content-Length: {len(whole)}\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + whole[: len(whole) * 2 // 3])
        deadline = time.monotonic() + 10
        while not list(settings.upload_dir.glob("stow-*/part-*")):  # parts being written
            assert time.monotonic() < deadline, "the gateway wrote no part"
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while list(settings.upload_dir.glob("stow-*")):
        assert time.monotonic() < deadline, "the parts of the dropped request stayed"
        time.sleep(0.1)
    assert started == []


def test_a_signed_in_uploader_stores_as_themself(
    client: TestClient, settings: Settings, started: list[str]
) -> None:
    """STOW-RS from the console's session (cookie + CSRF token): the job and its audit
    event name the person, not a key."""
    from tests.service.test_users_sessions import add_user, login

    tenant = make_tenant("hospital")
    add_user(client, tenant, "rad1", "uploader")
    csrf = login(client, tenant, "rad1")
    response = client.post(
        "/dicomweb/studies",
        content=multipart(*ct_series(2)),
        headers={"Content-Type": RELATED, "X-CSRF-Token": csrf},
    )
    assert response.status_code == 200, response.text
    created_by, events = creation_record(started[0])
    assert created_by == "user:rad1"
    assert [(e["actor"], e["detail"]) for e in events] == [
        ("user:rad1", {"via": "stow-rs", "instances": 2})
    ]


def test_needs_a_key_and_a_wellformed_body(client: TestClient) -> None:
    body = multipart(*ct_series(1))
    anonymous = client.post("/dicomweb/studies", content=body, headers={"Content-Type": RELATED})
    assert anonymous.status_code == 401
    tenant = make_tenant("hospital")
    assert stow(client, tenant, f"--{BOUNDARY}--\r\n".encode()).status_code == 400
    garbage = stow(client, tenant, b"\x00" * 100)
    assert garbage.status_code == 400


def test_deidentification_applies_to_stow(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    settings = isolated_settings(
        broker_url="redis://127.0.0.1:1/0", max_upload_bytes=MAX_BYTES, deidentify_uploads="true"
    )
    with TestClient(create_app()) as client:
        tenant = make_tenant(f"hospital-{uuid.uuid4().hex[:6]}")
        response = stow(client, tenant, multipart(*ct_series(2, patient="Secret^Name")))
    assert response.status_code == 200, response.text
    members = uploaded_members(started[0], settings)
    assert [m.PatientIdentityRemoved for m in members] == ["YES", "YES"]
    assert all(str(m.PatientName) != "Secret^Name" for m in members)
