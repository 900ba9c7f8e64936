"""The reading-room API in-process (eager Celery, SQLite) on real DICOM: the right patient and
series (``multiple_patients``, identifiers and reasons in the result and the callback), the
slice mapping, native slices with window presets and the lung-mask overlay, the PDF report."""

from __future__ import annotations

import importlib
import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from pypdf import PdfReader

from services.asgi import create_app
from services.celery import TASK_MODULES
from services.common.config import Settings
from services.common.queue import celery_app
from services.preprocess.windowing import window_to_uint8
from tests.support.service import auth, callback_receiver, make_tenant, new_job, upload_study
from tests.unit.synthetic import chest_phantom

# Register the stage and webhook tasks with the Celery app (eager runs look them up by name).
for _module in TASK_MODULES:
    importlib.import_module(_module)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture
def eager_app(isolated_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """``start(**settings)``: a TestClient of an app whose pipeline runs eagerly."""
    clients: list[TestClient] = []

    def start(**overrides: str) -> TestClient:
        isolated_settings(broker_url="memory://", **overrides)
        client = TestClient(create_app())
        client.__enter__()
        clients.append(client)
        return client

    celery_app.conf.task_always_eager = True
    try:
        yield start
    finally:
        celery_app.conf.task_always_eager = False
        for client in clients:
            client.__exit__(None, None, None)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _files(series: Path, start: int, stop: int, prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{f.name}", f.read_bytes()) for f in sorted(series.iterdir())[start:stop]]


def _localizer(series: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` of the series' files as a scout series of the same patient and study."""
    uid = generate_uid()
    out = []
    for f in sorted(series.iterdir())[:count]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = "Topogram 0.6 T20f"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        buffer = io.BytesIO()
        ds.save_as(buffer)
        out.append((f"scout/{f.name}", buffer.getvalue()))
    return out


def _png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def test_two_patients_in_one_upload_fail_with_multiple_patients(
    eager_app: Callable[..., TestClient], covid_series: Path, ctmd_dir: Path
) -> None:
    client = eager_app()
    tenant = make_tenant("mixed")
    data = _zip(_files(covid_series, 60, 63, "P002") + _files(ctmd_dir / "normal001", 70, 73, "n"))
    job_id = upload_study(client, tenant, data, filename="two.zip", filetype="application/zip")
    body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "multiple_patients"
    assert "P002" in body["error"]["message"]
    assert body["result"] is None


def test_series_read_is_reported_with_why_the_others_were_not(
    eager_app: Callable[..., TestClient], covid_series: Path
) -> None:
    """A localizer with more images than the CT series and 24 CT slices of P002: the CT series
    is read, the result (API and callback) names it and says why the scout was not used; the
    slices map to the DICOM instances; native images, lung masks and the report work."""
    client = eager_app()
    tenant = make_tenant("room")
    ct_files = _files(covid_series, 50, 74, "ct")
    data = _zip(ct_files + _localizer(covid_series, 30))
    first = pydicom.dcmread(covid_series / "IM0051.dcm", stop_before_pixels=True)
    with callback_receiver() as receiver:
        job_id = upload_study(
            client, tenant, data, filename="study.zip", filetype="application/zip",
            callback_url=receiver.url, external_id="ext-room-1",
        )  # fmt: skip
        body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
        assert body["status"] == "succeeded", body
        series = body["result"]["series"]
        assert series["series_instance_uid"] == str(first.SeriesInstanceUID)
        assert series["study_instance_uid"] == str(first.StudyInstanceUID)
        assert series["patient_id"] == "P002" and series["modality"] == "CT"
        assert series["slice_thickness_mm"] == pytest.approx(2.0)
        assert series["instances"] == 24 and series["single_slice_of_series"] is False
        assert series["orientation"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
        reasons = {c["description"]: c["not_used_because"] for c in series["candidates"]}
        assert reasons["Topogram 0.6 T20f"] == "localizer"
        assert list(reasons.values()).count(None) == 1  # the series read
        assert body["study"]["patient_id"] == "P002"
        assert body["study"]["series_instance_uid"] == str(first.SeriesInstanceUID)
        assert body["study"]["category"]
        assert len(receiver.received) == 1
        sent = receiver.received[0].json()["data"]
        assert sent["result"]["series"] == series and sent["study"] == body["study"]

    listing = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    assert listing["native"] == "hu"
    assert listing["orientation"] == series["orientation"]
    slices = listing["slices"]
    headers = {
        int(h.InstanceNumber): h
        for h in (pydicom.dcmread(covid_series / name.split("/")[1]) for name, _ in ct_files)
    }
    assert sorted(s["instance_number"] for s in slices) == sorted(headers)
    for s in slices:
        assert s["slice_location"] == pytest.approx(
            float(headers[s["instance_number"]].SliceLocation)
        )
        assert s["file"].startswith("ct/") and (s["rows"], s["columns"]) == (512, 512)
    locations = [s["slice_location"] for s in slices]
    assert locations == sorted(locations)  # index runs inferior -> superior

    # Native slice: the original 512x512 HU slice windowed on the server.
    middle = slices[12]
    hdr = headers[middle["instance_number"]]
    hu = hdr.pixel_array * float(hdr.RescaleSlope) + float(hdr.RescaleIntercept)
    lung = _png(client.get(middle["image_url"], headers=auth(tenant)).content)
    expected = np.rint(np.clip((hu + 1350.0) * (255.0 / 1500.0), 0, 255)).astype(np.uint8)
    assert lung.shape == (512, 512)
    assert np.abs(lung.astype(int) - expected.astype(int)).max() <= 1
    response = client.get(f"{middle['image_url']}?window=mediastinal", headers=auth(tenant))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mediastinal = _png(response.content)
    assert not np.array_equal(mediastinal, lung)
    custom = _png(client.get(f"{middle['image_url']}?window=400,40", headers=auth(tenant)).content)
    assert np.array_equal(custom, mediastinal)
    bad = client.get(f"{middle['image_url']}?window=bone", headers=auth(tenant))
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_window"

    mask = _png(client.get(middle["lung_mask_url"], headers=auth(tenant)).content)
    assert mask.shape == (512, 512, 4)
    lung_share = float((mask[..., 3] > 0).mean())
    assert 0.05 < lung_share < 0.6  # the lungs, not nothing and not everything

    bob = make_tenant("bob")
    assert client.get(middle["image_url"], headers=auth(bob)).status_code == 404
    assert client.get(middle["lung_mask_url"], headers=auth(bob)).status_code == 404
    missing = client.get(f"/v1/jobs/{job_id}/slices/999/image", headers=auth(tenant))
    assert missing.status_code == 404 and missing.json()["code"] == "slice_not_found"

    # The worklist finds it by patient id and by external id.
    found = client.get("/v1/jobs", params={"q": "p002"}, headers=auth(tenant)).json()
    assert [j["id"] for j in found["items"]] == [job_id] and found["total"] == 1
    found = client.get("/v1/jobs", params={"q": "EXT-ROOM"}, headers=auth(tenant)).json()
    assert found["total"] == 1

    report = client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(tenant))
    assert report.status_code == 200 and report.headers["content-type"] == "application/pdf"
    pdf = PdfReader(io.BytesIO(report.content))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    assert job_id in text
    assert body["result"]["label"] in text
    assert f"Category: {body['study']['category']}" in text
    assert str(first.SeriesInstanceUID) in text
    assert "not a medical device" in text
    assert "localizer" in text
    images = [image for page in pdf.pages for image in page.images]
    assert len(images) == 3  # the key images
    # Key images show the verdict's lesion masks where the segmenter ran (24 slices: maybe not).
    has_lesions = any(s.get("lesion_overlay_url") for s in slices)
    assert ("lesion masks tinted" in text) == has_lesions
    assert client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(bob)).status_code == 404


def test_single_slice_of_a_series_is_flagged_in_the_result(
    eager_app: Callable[..., TestClient], covid_series: Path
) -> None:
    client = eager_app()
    tenant = make_tenant("one")
    data = (covid_series / "IM0061.dcm").read_bytes()
    job_id = upload_study(client, tenant, data, filename="IM0061.dcm")
    body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded", body
    series = body["result"]["series"]
    assert series["single_slice_of_series"] is True
    assert "one slice of a multi-slice series" in series["single_slice_note"]
    (only,) = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()["slices"]
    assert only["instance_number"] == 61


def test_deidentified_uploads_report_the_pseudonyms(
    eager_app: Callable[..., TestClient], covid_series: Path
) -> None:
    client = eager_app(deidentify_uploads="true")
    tenant = make_tenant("deid")
    original = pydicom.dcmread(covid_series / "IM0061.dcm", stop_before_pixels=True)
    job_id = upload_study(client, tenant, (covid_series / "IM0061.dcm").read_bytes())
    body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded", body
    series = body["result"]["series"]
    assert series["patient_id"] and series["patient_id"] != "P002"
    assert series["series_instance_uid"] != str(original.SeriesInstanceUID)
    assert body["study"]["patient_id"] == series["patient_id"]
    assert client.get("/v1/jobs", params={"q": "P002"}, headers=auth(tenant)).json()["total"] == 0
    (only,) = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()["slices"]
    assert only["file"] is None and only["instance_number"] == 61
    pseudonym = series["patient_id"]
    assert (
        client.get("/v1/jobs", params={"q": pseudonym}, headers=auth(tenant)).json()["total"] == 1
    )


def test_image_inputs_serve_the_image_as_sent(eager_app: Callable[..., TestClient]) -> None:
    client = eager_app()
    tenant = make_tenant("png")
    # A CT-like slice (the synthetic chest, lung window): a flat drawing is refused as
    # not_chest_ct by the single-image gate.
    hu, _ = chest_phantom(slices=12)
    picture = window_to_uint8(hu[6])
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    job_id = upload_study(client, tenant, buffer.getvalue(), filename="s.png", filetype="image/png")
    body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded", body
    assert body["result"]["series"]["source_format"] == "image"
    assert body["result"]["series"]["orientation"] is None
    listing = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    assert listing["native"] == "gray"
    (only,) = listing["slices"]
    assert only["sop_instance_uid"] is None and only["instance_number"] is None
    shown = _png(
        client.get(only["image_url"] + "?window=mediastinal", headers=auth(tenant)).content
    )
    np.testing.assert_array_equal(shown, picture)


def test_no_native_slice_or_report_before_the_verdict(
    eager_app: Callable[..., TestClient],
) -> None:
    client = eager_app()
    tenant = make_tenant("early")
    job_id = new_job(client, tenant)["id"]
    response = client.get(f"/v1/jobs/{job_id}/slices/0/image", headers=auth(tenant))
    assert response.status_code == 404 and response.json()["code"] == "slice_not_found"
    response = client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(tenant))
    assert response.status_code == 409 and response.json()["code"] == "job_not_finished"
    assert client.get(f"/v1/jobs/{job_id}/report.pdf").status_code == 401
