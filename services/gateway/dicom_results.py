"""``GET /v1/jobs/{id}/dicom/sr``, ``/dicom/seg`` and ``/fhir``: a finished job's verdict as
a DICOM SR, its masks as a DICOM SEG, and the verdict as a FHIR R4 Bundle.

Tenant-scoped like every ``/v1/jobs`` route (another tenant's job is 404). Before the verdict
exists: 409 ``job_not_finished``. SR and SEG need a DICOM input (409 ``not_dicom_input``
otherwise) whose UIDs can be referenced (409 ``source_uids_invalid``); the SEG needs the
masks on the source geometry (409 ``masks_unavailable``: a multi-frame source, or a job whose
derived data was purged). Both are built on request from what the job kept
(services.gateway.dicom_source) with UIDs fixed by the job id, so the same job always yields
the same objects (docs/dicom-results.md).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Response
from pydicom import Dataset
from sqlalchemy import select

from services.common.config import get_settings
from services.common.jobs import job_view
from services.common.native_slices import decode_mask, native_blob_key, native_lesions_key
from services.common.orm import Job, JobStatus, SliceRecord
from services.common.storage import make_storage
from services.gateway.auth import ApiKeyDep, tenant_session
from services.gateway.dicom_seg import build_seg, masks_from_labels, segment_numbers
from services.gateway.dicom_source import (
    NotDicomSource,
    SourceSlice,
    source_datasets,
    source_slices,
)
from services.gateway.dicom_sr import SCHEME, build_sr
from services.gateway.errors import ApiError, error_responses
from services.gateway.fhir import build_bundle
from services.gateway.jobs import NOT_FOUND, JobId, get_tenant_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))

DICOM = {200: {"content": {"application/dicom": {}}}, **error_responses(409), **NOT_FOUND}
NO_STORE = {"Cache-Control": "private, no-store"}


def _finished(job: Job, job_id: str) -> None:
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise ApiError(
            409, "job_not_finished", f"job {job_id} is {job.status}; results need a verdict"
        )


Loaded = tuple[
    dict[str, Any], dict[str, Any], list[SourceSlice], set[str], dict[int, dict[str, Any]]
]


def _load(key: Any, job_id: str) -> Loaded:
    """(job view, the series as stored (with ``dicom_source``), source slices, SOP Instance
    UIDs of the slices the verdict used, each slice's info)."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        _finished(job, job_id)
        view = job_view(job)
        series = dict(job.series or {})
        rows = session.scalars(
            select(SliceRecord).where(SliceRecord.job_id == job_id).order_by(SliceRecord.index)
        ).all()
        infos = {r.index: dict(r.info or {}) for r in rows}
        kept = {r.index for r in rows if r.kept}
    try:
        slices = source_slices(series, infos)
    except NotDicomSource as error:
        raise ApiError(409, error.code, f"job {job_id}: {error}") from None
    used = {s.sop_instance_uid for s in slices if s.index in kept}
    return view, series, slices, used, infos


def part10(data: Any) -> bytes:
    """A finished SR or SEG as Part-10 bytes, naming our private coding scheme (PS3.3
    C.12.1.1.3.1) for readers that list schemes."""
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "covidct result codes"
    scheme.CodingSchemeResponsibleOrganization = "covidct"
    data.CodingSchemeIdentificationSequence = [scheme]
    buffer = io.BytesIO()
    data.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom(data: Any, filename: str) -> Response:
    headers = {**NO_STORE, "Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(part10(data), media_type="application/dicom", headers=headers)


def _seg_masks(
    job_id: str,
    series: dict[str, Any],
    slices: list[SourceSlice],
    infos: dict[int, dict[str, Any]],
) -> tuple[Any, str]:
    """(the SEG's masks, "") when the job has a SEG, else (None, why not). The SR asks the
    same, so it references the SEG exactly when one can be fetched."""
    if (series.get("dicom_source") or {}).get("multi_frame"):
        return None, "a SEG of a multi-frame source is not made"
    masks = _masks(job_id, slices, series, infos)
    if masks is None or not masks.any():
        return None, f"job {job_id} has no masks on the source images"
    if any(s.position is None for s in slices) or not series["dicom_source"].get("pixel_spacing"):
        return None, "the source images lack their plane geometry"
    return masks, ""


def objects_available(key: Any, job_id: str) -> tuple[bool, bool]:
    """(whether the job's SR can be made, whether its SEG can), without making them (the
    DICOMweb listing names only what a retrieve would give)."""
    try:
        _view, series, slices, _used, infos = _load(key, job_id)
    except ApiError as error:
        if error.status_code not in (404, 409):
            raise
        return False, False
    masks, _why = _seg_masks(job_id, series, slices, infos)
    return True, masks is not None


def sr_object(key: Any, job_id: str) -> Any:
    """The job's SR (highdicom), or ApiError 404 / 409."""
    view, series, slices, used, infos = _load(key, job_id)
    masks, _why = _seg_masks(job_id, series, slices, infos)
    # One reference per instance (the frames of a multi-frame source share one).
    unique = {s.sop_instance_uid: s for s in reversed(slices)}
    sources = source_datasets(series, sorted(unique.values(), key=lambda s: s.index))
    category = (view.get("study") or {}).get("category")
    segments = None if masks is None else segment_numbers(masks)
    return build_sr(job_id, view["result"], category, sources, used, segments)


def seg_object(key: Any, job_id: str) -> Any:
    """The job's SEG (highdicom), or ApiError 404 / 409 (``masks_unavailable``)."""
    view, series, slices, _used, infos = _load(key, job_id)
    masks, why = _seg_masks(job_id, series, slices, infos)
    if masks is None:
        raise ApiError(409, "masks_unavailable", why)
    sources = source_datasets(series, slices)
    versions = "; ".join(f"{k} {v}" for k, v in sorted(view["result"]["model_versions"].items()))
    return build_seg(job_id, sources, masks, versions)


@router.get("/{job_id}/dicom/sr", response_class=Response, responses=DICOM)
def get_dicom_sr(job_id: JobId, key: ApiKeyDep) -> Response:
    """The verdict as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report) in the
    source study, its volumes referencing the SEG's segments when the job has a SEG
    (docs/dicom-results.md)."""
    return _dicom(sr_object(key, job_id), f"covidct-sr-{job_id}.dcm")


@router.get("/{job_id}/dicom/seg", response_class=Response, responses=DICOM)
def get_dicom_seg(job_id: JobId, key: ApiKeyDep) -> Response:
    """Ground glass, consolidation and lung masks as a DICOM Segmentation (BINARY) on the
    source images (lungs only where the series had no lesion masks)."""
    return _dicom(seg_object(key, job_id), f"covidct-seg-{job_id}.dcm")


def _masks(
    job_id: str,
    slices: list[SourceSlice],
    series: dict[str, Any],
    infos: dict[int, dict[str, Any]],
) -> Any:
    """(N, H, W, 3) lesion + lung masks, else (N, H, W, 1) lungs, else None."""
    storage = make_storage(get_settings())
    header = series["dicom_source"]
    shape = (len(slices), int(header.get("rows") or 0), int(header.get("columns") or 0))
    try:
        with np.load(io.BytesIO(storage.get_bytes(native_lesions_key(job_id)))) as data:
            labels = data["labels"]
        if labels.shape == shape:
            return masks_from_labels(labels)
    except FileNotFoundError:
        pass
    # No lesion masks (not an HU volume, or a job from before they were kept): the lungs.
    entries = [(infos.get(s.index) or {}).get("native") or {} for s in slices]
    try:
        blob = storage.get_bytes(native_blob_key(job_id))
    except FileNotFoundError:
        return None
    lungs = np.zeros(shape, bool)
    for k, entry in enumerate(entries):
        if entry.get("mask"):
            start, length = entry["mask"]
            mask = decode_mask(blob[start : start + length])
            if mask.shape != shape[1:]:
                return None
            lungs[k] = mask
    return lungs[..., None]


@router.get(
    "/{job_id}/fhir",
    responses={
        200: {"content": {"application/fhir+json": {}}},
        **error_responses(409),
        **NOT_FOUND,
    },
)
def get_fhir(job_id: JobId, key: ApiKeyDep) -> Response:
    """The verdict as a FHIR R4 Bundle: DiagnosticReport, its Observations (category,
    P(COVID), pattern, opacity measurements), Patient and ImagingStudy for DICOM inputs."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        _finished(job, job_id)
        view = job_view(job)
        issued = _aware(job.updated_at).isoformat()
    body = json.dumps(build_bundle(view, issued))
    return Response(body, media_type="application/fhir+json", headers=NO_STORE)


def _aware(moment: datetime) -> datetime:
    """FHIR instants need a zone; SQLite returns naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
