"""``GET /v1/jobs/{id}/dicom/sr``, ``/dicom/seg`` and ``/fhir``: a finished job's verdict as
a DICOM SR, its masks as a DICOM SEG, and the verdict as a FHIR R4 Bundle.

Tenant-scoped like every ``/v1/jobs`` route (another tenant's job is 404). Before the verdict
exists: 409 ``job_not_finished``. SR and SEG need a DICOM input (409 ``not_dicom_input``
otherwise) whose UIDs can be referenced (409 ``source_uids_invalid``); the SEG needs the
masks on the source geometry (409 ``masks_unavailable``: a multi-frame source, or a job whose
derived data was purged). Both are built on request from what the job kept
(services.common.results.dicom_source) with UIDs fixed by the job id, so the same job always yields
the same objects (docs/dicom-results.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response
from pydicom import Dataset

from services.common.jobs import job_view
from services.common.results.fhir import build_bundle
from services.common.results.objects import (
    JobMaterial,
    ResultUnavailable,
    ensure_finished,
    load_material,
    part10,
    seg_dataset,
    seg_masks,
    sr_dataset,
)
from services.gateway.auth import ApiKeyDep, tenant_session
from services.gateway.errors import ApiError, error_responses
from services.gateway.jobs import NOT_FOUND, JobId, get_tenant_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))

DICOM = {200: {"content": {"application/dicom": {}}}, **error_responses(409), **NOT_FOUND}
NO_STORE = {"Cache-Control": "private, no-store"}


def _load(key: Any, job_id: str) -> JobMaterial:
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        try:
            return load_material(session, job)
        except ResultUnavailable as error:
            raise ApiError(409, error.code, str(error)) from None


def _dicom(data: bytes, filename: str) -> Response:
    headers = {**NO_STORE, "Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(data, media_type="application/dicom", headers=headers)


def objects_available(key: Any, job_id: str) -> tuple[bool, bool]:
    """(whether the job's SR can be made, whether its SEG can), without making them (the
    DICOMweb listing names only what a retrieve would give)."""
    try:
        material = _load(key, job_id)
    except ApiError as error:
        if error.status_code not in (404, 409):
            raise
        return False, False
    masks, _why = seg_masks(job_id, material)
    return True, masks is not None


def sr_object(key: Any, job_id: str) -> Dataset:
    """The job's SR, referencing the SEG's segments when the job has a SEG; ApiError 404/409."""
    material = _load(key, job_id)
    masks, _why = seg_masks(job_id, material)
    return sr_dataset(job_id, material, masks)


def seg_object(key: Any, job_id: str) -> Dataset:
    """The job's SEG, or ApiError 404 / 409 (``masks_unavailable``)."""
    material = _load(key, job_id)
    try:
        return seg_dataset(job_id, material)
    except ResultUnavailable as error:
        raise ApiError(409, error.code, str(error)) from None


def result_objects(key: Any, job_id: str) -> tuple[Dataset, Dataset | None]:
    """The job's SR and, when it has one, its SEG, from one load (the masks read once);
    ApiError 404 / 409 as ``sr_object``."""
    material = _load(key, job_id)
    masks, _why = seg_masks(job_id, material)
    seg = None if masks is None else seg_dataset(job_id, material, masks)
    return sr_dataset(job_id, material, masks), seg


@router.get("/{job_id}/dicom/sr", response_class=Response, responses=DICOM)
def get_dicom_sr(job_id: JobId, key: ApiKeyDep) -> Response:
    """The verdict as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report) in the
    source study, its volumes referencing the SEG's segments when the job has a SEG
    (docs/dicom-results.md)."""
    return _dicom(part10(sr_object(key, job_id)), f"covidct-sr-{job_id}.dcm")


@router.get("/{job_id}/dicom/seg", response_class=Response, responses=DICOM)
def get_dicom_seg(job_id: JobId, key: ApiKeyDep) -> Response:
    """Ground glass, consolidation and lung masks as a DICOM Segmentation (BINARY) on the
    source images (lungs only where the series had no lesion masks)."""
    return _dicom(part10(seg_object(key, job_id)), f"covidct-seg-{job_id}.dcm")


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
        try:
            ensure_finished(job)
        except ResultUnavailable as error:
            raise ApiError(409, error.code, str(error)) from None
        view = job_view(job)
        issued = _aware(job.updated_at).isoformat()
    body = json.dumps(build_bundle(view, issued))
    return Response(body, media_type="application/fhir+json", headers=NO_STORE)


def _aware(moment: datetime) -> datetime:
    """FHIR instants need a zone; SQLite returns naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
