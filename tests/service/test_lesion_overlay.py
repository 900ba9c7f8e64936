"""The lesion overlay of HU series: one RGBA PNG per kept slice at the geometry of the slice
PNG, listed in GET /v1/jobs/{id}/slices, tenant-scoped, 404 where there are no masks."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.asgi import create_app
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.native_slices import LESION_COLOURS, lesion_maps_key, pack_label_maps
from services.common.orm import Job, SliceRecord
from services.common.storage import make_storage
from services.gateway import slices
from tests.support.service import auth, make_tenant, new_job


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as test_client:
        yield test_client


def _job(
    client: TestClient, tenant: dict[str, str], lesions: bool, legacy_npz: bool = False
) -> tuple[str, np.ndarray]:
    """3 slices: 0 and 2 kept (stack 0, 1), 1 dropped; with lesion label maps when asked:
    lesions.bin with per-slice byte ranges, or the one .npz of jobs preprocessed before."""
    job_id = new_job(client, tenant)["id"]
    storage = make_storage(get_settings())
    stack = np.full((2, 8, 8), 100, np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, stack, allow_pickle=False)
    storage.put_bytes(f"jobs/{job_id}/slices.npy", buffer.getvalue())
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[1, 1:3, 1:3] = 1  # ground glass
    labels[1, 5:7, 5:7] = 2  # consolidation
    labels[1, 0, 7] = 3  # other lung: transparent
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.slices_blob = f"jobs/{job_id}/slices.npy"
        ranges: list[list[int]] = [[], []]
        if lesions and legacy_npz:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, labels=labels)
            storage.put_bytes(f"jobs/{job_id}/lesions.npz", buffer.getvalue())
            job.lesions_blob = f"jobs/{job_id}/lesions.npz"
        elif lesions:
            packed, ranges = pack_label_maps(labels)
            storage.put_bytes(lesion_maps_key(job_id), packed)
            job.lesions_blob = lesion_maps_key(job_id)
        if lesions:
            job.lesion_findings = {"slice_lesion_share": [0.0, 0.0, 0.125]}
        session.add_all(
            [
                SliceRecord(
                    job_id=job_id, index=0, kept=True, stack_position=0, info={"lesions": ranges[0]}
                ),
                SliceRecord(job_id=job_id, index=1, kept=False, drop_reason="no_lung"),
                SliceRecord(
                    job_id=job_id, index=2, kept=True, stack_position=1, info={"lesions": ranges[1]}
                ),
            ]
        )
    return job_id, labels


class RangeOnly:
    """The job's blob store, but a whole-blob read or a local copy of lesions.bin fails: the
    overlay must come from one ranged read (over S3: one slice, no scratch disk)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ranges: list[tuple[str, int, int]] = []

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges.append((key, start, length))
        return bytes(self.inner.get_range(key, start, length))

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("lesions.bin"):
            raise AssertionError(f"whole-blob read of {key}")
        return bytes(self.inner.get_bytes(key))

    def local_path(self, key: str) -> Any:
        raise AssertionError(f"local copy of {key}")


@pytest.mark.parametrize("legacy_npz", [False, True], ids=["per-slice", "legacy-npz"])
def test_overlay_colours_lesions_and_leaves_the_rest_transparent(
    client: TestClient, alice: dict[str, str], legacy_npz: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, labels = _job(client, alice, lesions=True, legacy_npz=legacy_npz)
    store = RangeOnly(make_storage(get_settings()))
    monkeypatch.setattr(slices, "make_storage", lambda _settings: store)
    response = client.get(f"/v1/jobs/{job_id}/slices/2/lesions.png", headers=auth(alice))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=3600"
    bgra = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.shape == (8, 8, 4)  # the slice PNG's geometry
    rgba = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
    assert tuple(rgba[1, 1]) == LESION_COLOURS[1]
    assert tuple(rgba[5, 5]) == LESION_COLOURS[2]
    assert LESION_COLOURS[1] != LESION_COLOURS[2]
    assert rgba[0, 7, 3] == 0 and rgba[4, 4, 3] == 0  # other lung and background: clear
    assert (rgba[..., 3] > 0).sum() == (labels[1] == 1).sum() + (labels[1] == 2).sum()
    first = client.get(f"/v1/jobs/{job_id}/slices/0/lesions.png", headers=auth(alice))
    assert first.status_code == 200
    blank = cv2.imdecode(np.frombuffer(first.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert blank is not None and blank[..., 3].max() == 0
    if not legacy_npz:  # one ranged read per overlay, of that slice's bytes only
        total = len(make_storage(get_settings()).get_bytes(lesion_maps_key(job_id)))
        assert [r[0] for r in store.ranges] == [lesion_maps_key(job_id)] * 2
        assert all(0 < length < total for _key, _start, length in store.ranges)


def test_slices_listing_says_which_overlays_exist(
    client: TestClient, alice: dict[str, str]
) -> None:
    job_id, _ = _job(client, alice, lesions=True)
    body = client.get(f"/v1/jobs/{job_id}/slices", headers=auth(alice)).json()
    assert body["has_lesions"] is True
    by_index = {s["index"]: s for s in body["slices"]}
    assert by_index[2]["lesions_url"] == f"/v1/jobs/{job_id}/slices/2/lesions.png"
    assert by_index[2]["lesion_share"] == 0.125
    assert by_index[1]["lesions_url"] is None  # dropped: no prepared slice to lay it on
    plain, _ = _job(client, alice, lesions=False)
    body = client.get(f"/v1/jobs/{plain}/slices", headers=auth(alice)).json()
    assert body["has_lesions"] is False
    assert all(s["lesions_url"] is None and s["lesion_share"] is None for s in body["slices"])


def test_overlay_404s_without_masks_for_dropped_slices_and_other_tenants(
    client: TestClient, alice: dict[str, str]
) -> None:
    job_id, _ = _job(client, alice, lesions=True)
    for index in (1, 3):  # dropped, not in the study
        response = client.get(f"/v1/jobs/{job_id}/slices/{index}/lesions.png", headers=auth(alice))
        assert response.status_code == 404 and response.json()["code"] == "lesions_not_found"
    plain, _ = _job(client, alice, lesions=False)  # an image study: no HU, no masks
    response = client.get(f"/v1/jobs/{plain}/slices/0/lesions.png", headers=auth(alice))
    assert response.status_code == 404 and response.json()["code"] == "lesions_not_found"
    bob = make_tenant("bob")
    response = client.get(f"/v1/jobs/{job_id}/slices/2/lesions.png", headers=auth(bob))
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job_id}/slices/2/lesions.png").status_code == 401
    # The slice PNG route is unaffected by the overlay route next to it.
    assert client.get(f"/v1/jobs/{job_id}/slices/2.png", headers=auth(alice)).status_code == 200
