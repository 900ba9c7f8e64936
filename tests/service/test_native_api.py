"""Native slices, overlays and the report on a job written straight to the database (no shared
data needed): one ranged read per PNG (never the whole study), the density overlay, the
report's key images chosen by ground-glass share."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from services.asgi import create_app
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.native_slices import native_blob_key, pack_native
from services.common.orm import Job, Result, SliceRecord, SliceScore
from services.common.storage import make_storage
from services.gateway import slices as slices_module
from tests.support.service import auth, make_tenant

SIZE = 64


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as test_client:
        yield test_client


def _volume() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Five 64x64 HU slices: body -> lungs at -850 HU; slice k has k*8 rows of ground glass
    (-500 HU) and slice 1 a consolidation patch (0 HU)."""
    slices, masks = [], []
    for k in range(5):
        hu = np.full((SIZE, SIZE), 40, np.int16)
        lung = np.zeros((SIZE, SIZE), bool)
        lung[8:56, 6:28] = lung[8:56, 36:58] = True
        hu[lung] = -850
        hu[8 : 8 + 8 * k, 6:28] = -500
        if k == 1:
            hu[40:48, 40:50] = 0
        slices.append(hu)
        masks.append(lung)
    return slices, masks


def _job(tenant: dict[str, str], succeeded: bool = True) -> str:
    slices, masks = _volume()
    blob, entries = pack_native(slices, masks)
    with session_scope() as session:
        job = Job(
            tenant_id=tenant["id"], status="succeeded" if succeeded else "scoring",
            slices_total=5, slices_used=5, patient_id="PX-1", category="covid",
            series={"orientation": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
                    "series_instance_uid": "1.2.3.4", "candidates": [
                        {"uid": "1.2.3.4", "description": "Lung", "modality": "CT",
                         "slices": 5, "axial": True, "excluded": None, "not_used_because": None},
                        {"uid": "9.9", "description": "Scout", "modality": "CT", "slices": 2,
                         "axial": None, "excluded": "localizer",
                         "not_used_because": "localizer"}]},
        )  # fmt: skip
        session.add(job)
        session.flush()
        for k in range(5):
            session.add(
                SliceRecord(job_id=job.id, index=k, kept=True, stack_position=k,
                            info={"instance_number": 10 + k, "slice_location": -100.0 + 2 * k,
                                  "sop_instance_uid": f"1.2.3.4.{k}", "native": entries[k]})
            )  # fmt: skip
            session.add(
                SliceScore(job_id=job.id, slice_index=k, model_name="m", model_version="v1",
                           p_noncovid=0.5, p_covid=0.5)
            )  # fmt: skip
        if succeeded:
            session.add(
                Result(job_id=job.id, label="COVID", probabilities={"NonCOVID": 0.1, "COVID": 0.9},
                       slices_total=5, slices_used=5, model_versions={"slice_cnn": "v1"},
                       findings={"pattern": "typical", "pattern_reasons": ["bilateral"],
                                 "ggo_share": 0.12})
            )  # fmt: skip
        job_id = job.id
    make_storage(get_settings()).put_bytes(native_blob_key(job_id), blob)
    return job_id


def _png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


class RecordingStorage:
    """The configured storage, recording every read (to prove a PNG reads one slice only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def recorded(*args: Any) -> Any:
            self.reads.append((name, args))
            return method(*args)

        return recorded


def test_each_png_is_one_ranged_read_of_one_slice(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = make_tenant("alice")
    job_id = _job(tenant)
    recording = RecordingStorage(make_storage(get_settings()))
    monkeypatch.setattr(slices_module, "make_storage", lambda _settings: recording)
    blob_size = len(make_storage(get_settings()).get_bytes(native_blob_key(job_id)))

    listing = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    assert listing["native"] == "hu" and listing["orientation"]["left"] == "R"
    third = listing["slices"][3]
    assert (third["instance_number"], third["sop_instance_uid"]) == (13, "1.2.3.4.3")
    assert third["slice_location"] == pytest.approx(-94.0)
    assert (third["rows"], third["columns"]) == (SIZE, SIZE)

    image = _png(client.get(third["image_url"], headers=auth(tenant)).content)
    assert image.shape == (SIZE, SIZE) and image[30, 40] == round((-850 + 1350) * 255 / 1500)
    mask = _png(client.get(third["lung_mask_url"], headers=auth(tenant)).content)
    assert mask.shape == (SIZE, SIZE, 4) and mask[30, 40, 3] > 0 and mask[2, 2, 3] == 0
    assert [name for name, _ in recording.reads] == ["get_range", "get_range"]
    assert all(args[2] < blob_size / 4 for _, args in recording.reads)  # a slice, not the study


def test_density_overlay_marks_the_hu_ranges_inside_the_lung(client: TestClient) -> None:
    tenant = make_tenant("alice")
    job_id = _job(tenant)
    url = f"/v1/jobs/{job_id}/slices/1/density-overlay.png"
    listing = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    assert listing["slices"][1]["density_overlay_url"] == url
    rgba = _png(client.get(url, headers=auth(tenant)).content)  # BGRA as OpenCV reads it
    assert rgba.shape == (SIZE, SIZE, 4)
    assert tuple(rgba[10, 10]) == (0, 170, 255, 120)  # ground glass: amber
    assert tuple(rgba[44, 44]) == (30, 30, 230, 140)  # consolidation: red
    assert rgba[30, 40, 3] == 0 and rgba[2, 2, 3] == 0  # aerated lung, body: transparent
    assert client.get(url, headers=auth(make_tenant("bob"))).status_code == 404


def test_report_pdf_of_a_job(client: TestClient) -> None:
    tenant = make_tenant("alice")
    job_id = _job(tenant)
    response = client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(tenant))
    assert response.status_code == 200
    assert response.content.startswith(b"%PDF-")
    pdf = PdfReader(io.BytesIO(response.content))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    expected = [job_id, "Category: covid", "COVID", "0.90", "typical", "PX-1", "1.2.3.4"]
    expected += ["Scout", "localizer", "slice_cnn", "not a medical device"]
    for fragment in expected:
        assert fragment in text, fragment
    # Key images: the slices with the most ground glass (4, 3, 2), largest first.
    assert text.index("slice 4, instance 14") < text.index("slice 3, instance 13")
    assert "slice 0, instance" not in text
    assert sum(len(page.images) for page in pdf.pages) == 3


def test_report_key_images_follow_the_lesion_masks(client: TestClient) -> None:
    """Issue 20.7: where the lesion segmenter ran, the key images are the slices with the
    largest lesion share and show the masks (not the ground-glass HU range)."""
    tenant = make_tenant("alice")
    job_id = _job(tenant)
    slices, masks = _volume()
    labels = [np.zeros((SIZE, SIZE), np.uint8) for _ in slices]
    labels[1][40:48, 40:50] = 2  # consolidation: slice 1 has the most lesion
    labels[1][8:16, 6:28] = 1
    labels[2][8:12, 6:28] = 1  # then slice 2; slice 4 (most ground-glass HU) has none
    blob, entries = pack_native(slices, masks, labels)
    make_storage(get_settings()).put_bytes(native_blob_key(job_id), blob)
    with session_scope() as session:
        for row in session.query(SliceRecord).filter_by(job_id=job_id):
            row.info = {**row.info, "native": entries[row.index]}
    response = client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(tenant))
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert "lesion masks tinted" in text
    assert text.index("slice 1, instance 11") < text.index("slice 2, instance 12")
    lung = int(masks[1].sum())
    assert f"lesions {(80 + 176) / lung:.0%} of lung" in " ".join(text.split())


def test_report_waits_for_the_verdict(client: TestClient, tmp_path: Path) -> None:
    tenant = make_tenant("alice")
    job_id = _job(tenant, succeeded=False)
    response = client.get(f"/v1/jobs/{job_id}/report.pdf", headers=auth(tenant))
    assert response.status_code == 409 and response.json()["code"] == "job_not_finished"


def test_lesions_and_gradcam_are_served_on_the_native_slice(client: TestClient) -> None:
    """Issue 20.4: the lesion masks and the slice CNN's Grad-CAM come at native resolution,
    registered: a hot spot of the input's Grad-CAM lands where its tissue is on the slice."""
    tenant = make_tenant("alice")
    job_id = _job(tenant)
    slices, masks = _volume()
    labels = [np.zeros((SIZE, SIZE), np.uint8) for _ in slices]
    labels[1][40:48, 40:50] = 2  # the consolidation patch
    labels[1][8:16, 6:28] = 1  # ground glass
    crops = {k: (-4, 2, 60) for k in range(5)}  # the square reaches 4 rows above the slice
    blob, entries = pack_native(slices, masks, labels, crops, 30)
    storage = make_storage(get_settings())
    storage.put_bytes(native_blob_key(job_id), blob)
    cam = np.zeros((30, 30), np.uint8)
    cam[21:24, 21:24] = 255  # input pixels 21..23 -> native 2 + (22 + 0.5) * 2 - 0.5 = 46.5
    storage.put_bytes(
        f"jobs/{job_id}/heatmaps/cam-0001.png", cv2.imencode(".png", cam)[1].tobytes()
    )
    with session_scope() as session:
        for row in session.query(SliceRecord).filter_by(job_id=job_id):
            row.info = {**row.info, "native": entries[row.index]}
        score = session.query(SliceScore).filter_by(job_id=job_id, slice_index=1).one()
        score.heatmap_blob = f"jobs/{job_id}/heatmaps/slice-0001.png"

    listing = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    second = listing["slices"][1]
    assert second["input_crop"] == {"y0": -4, "x0": 2, "side": 60, "size": 30}
    assert second["gradcam_url"] == f"/v1/jobs/{job_id}/slices/1/gradcam.png"
    assert listing["slices"][0]["gradcam_url"] is None  # no heatmap for that slice
    lesions = _png(client.get(second["lesion_overlay_url"], headers=auth(tenant)).content)
    assert lesions.shape == (SIZE, SIZE, 4)
    assert lesions[44, 44, 3] > 0 and lesions[10, 10, 3] > 0  # consolidation, ground glass
    assert tuple(lesions[44, 44, :3]) != tuple(lesions[10, 10, :3])  # two colours
    assert lesions[30, 40, 3] == 0 and lesions[2, 2, 3] == 0

    heat = _png(client.get(second["gradcam_url"], headers=auth(tenant)).content)
    assert heat.shape == (SIZE, SIZE, 4)
    hot = np.argwhere(heat[..., 3] >= 150).mean(axis=0)  # (y, x) of the strongest heat
    assert abs(hot[1] - 46.5) < 1.5 and abs(hot[0] - (-4 + 22.5 * 2 - 0.5)) < 1.5
    assert heat[5, 5, 3] == 0  # clear where there is no heat
    missing = client.get(f"/v1/jobs/{job_id}/slices/0/gradcam.png", headers=auth(tenant))
    assert missing.status_code == 404 and missing.json()["code"] == "heatmap_not_found"
    other = client.get(second["lesion_overlay_url"], headers=auth(make_tenant("bob")))
    assert other.status_code == 404
