"""DICOMweb QIDO-RS and WADO-RS for our results (PS3.18 10.4, 10.6): what
``/v1/jobs/{id}/dicom/sr`` and ``/dicom/seg`` serve, found by the UIDs a PACS or viewer
knows (the source study's StudyInstanceUID; our series' UIDs).

- ``GET /dicomweb/studies/{study}/series``: the SR and SEG series of the tenant's finished
  jobs of that study (``application/dicom+json``; ``Modality`` and ``SeriesInstanceUID``
  filter, other query keys are ignored). An unknown study is an empty list.
- ``GET .../series/{series}/instances``: the one instance of such a series.
- ``GET .../series/{series}`` and ``.../series/{series}/instances/{sop}``: the object as
  ``multipart/related; type="application/dicom"`` (one part, Explicit VR Little Endian);
  ``GET /dicomweb/studies/{study}``: all of them in the study (404 ``study_not_found``);
  406 ``not_acceptable`` for an Accept header that allows neither it nor ``*/*``.

Tenant-scoped as the rest of the API: a study, series or instance of another tenant is 404
(``series_not_found`` / ``instance_not_found``), as is one that cannot be made (the job's
source was not DICOM, or it has no masks for a SEG). Retrieving one is recorded in the
audit trail as a view of its job. Nothing is stored: each object is built on request from
the job (services.common.results.objects), its UIDs fixed by the job id.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
from python_multipart.multipart import parse_options_header
from sqlalchemy import select

from services.common.config import get_settings
from services.common.orm import Job, JobStatus
from services.common.results.dicom_sr import SEG_SERIES_NUMBER, SR_SERIES_NUMBER, seg_uids, sr_uids
from services.gateway.auth import ApiKeyDep, Credentials, tenant_session
from services.gateway.dicom_results import (
    NO_STORE,
    objects_available,
    part10,
    result_objects,
    seg_object,
    sr_object,
)
from services.gateway.errors import ApiError, error_responses

DICOM_JSON = "application/dicom+json"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]

router = APIRouter(
    prefix="/dicomweb", tags=["dicomweb"], responses=error_responses(401, 422, 429, 503)
)
MULTIPART: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {'multipart/related; type="application/dicom"': {}},
        "description": "the instance(s), one Part-10 object per part",
    },
    **error_responses(404, 406),
}
LISTING: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {}}, "description": "matching series or instances"}
}


@dataclass(frozen=True)
class ResultSeries:
    """One series we make for a job: its SR or its SEG."""

    job_id: str
    modality: str  # "SR" or "SEG"
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    number: int
    description: str


def _series_of(job_id: str, study_uid: str) -> list[ResultSeries]:
    sr_series, sr_sop = sr_uids(job_id)
    seg_series, seg_sop = seg_uids(job_id)
    return [
        ResultSeries(job_id, "SR", study_uid, sr_series, sr_sop, SR_STORAGE, SR_SERIES_NUMBER,
                     "covidct AI result (research use, not for diagnosis)"),
        ResultSeries(job_id, "SEG", study_uid, seg_series, seg_sop, SegmentationStorage,
                     SEG_SERIES_NUMBER,
                     "covidct lesions and lungs (research use, not for diagnosis)"),
    ]  # fmt: skip


def _result_series(key: Credentials, study_uid: str) -> list[ResultSeries]:
    """The SR and SEG series the tenant's finished jobs of this study could have (UIDs
    only, nothing made)."""
    with tenant_session(key) as (session, tenant):
        job_ids = session.scalars(
            select(Job.id)
            .where(
                Job.tenant_id == tenant.id,
                Job.study_instance_uid == study_uid,
                Job.status == JobStatus.SUCCEEDED,
            )
            .order_by(Job.created_at, Job.id)
        ).all()
    return [found for job_id in job_ids for found in _series_of(job_id, study_uid)]


def _available(key: Credentials, study_uid: str) -> list[ResultSeries]:
    """Those of the study's series that can be made (a listing must not name what a
    retrieve would refuse)."""
    out = []
    made: dict[str, tuple[bool, bool]] = {}  # job id -> (SR, SEG) can be made
    for found in _result_series(key, study_uid):
        if found.job_id not in made:
            made[found.job_id] = objects_available(key, found.job_id)
        has_sr, has_seg = made[found.job_id]
        if has_sr if found.modality == "SR" else has_seg:
            out.append(found)
    return out


def _find(
    key: Credentials,
    candidates: list[ResultSeries],
    study_uid: str,
    series_uid: str,
    sop_uid: str | None,
) -> Any:
    """The object of this series (and instance) made, or 404."""
    match = next((f for f in candidates if f.series_uid == series_uid), None)
    if match is not None and sop_uid in (None, match.sop_uid):
        key.job_id = match.job_id  # the audit trail records a view of the job
        try:
            return (sr_object if match.modality == "SR" else seg_object)(key, match.job_id)
        except ApiError as error:
            if error.status_code != 409:
                raise  # 409: not made for this job (not DICOM, no masks): not found here
    if sop_uid is not None:
        raise ApiError(404, "instance_not_found", f"no instance {sop_uid} in series {series_uid}")
    raise ApiError(404, "series_not_found", f"no series {series_uid} in study {study_uid}")


def _accepts_dicom(accept: str | None) -> bool:
    """Whether an Accept header allows multipart/related; type="application/dicom" in
    Explicit VR Little Endian."""
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        media, options = parse_options_header(media_range.strip())
        kind = media.decode("latin-1").lower()
        part = options.get(b"type", b"").decode("latin-1").strip('"').lower()
        syntax = options.get(b"transfer-syntax", b"*").decode("latin-1").strip('"')
        if kind in ("*/*", "multipart/*"):
            return True
        related = kind == "multipart/related"
        if (
            related
            and part in ("", "application/dicom", "application/*")
            and syntax
            in (
                "*",
                ExplicitVRLittleEndian,
            )
        ):
            return True
    return False


def _multipart(*objects: Any) -> Response:
    """The objects as one multipart/related body, a Part-10 instance per part."""
    boundary = uuid.uuid4().hex
    body = b""
    for data in objects:
        body += (
            f"--{boundary}\r\nContent-Type: application/dicom; "
            f"transfer-syntax={data.file_meta.TransferSyntaxUID}\r\n\r\n"
        ).encode()
        body += part10(data) + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return Response(body, media_type=media, headers=NO_STORE)


def _refuse_unacceptable(request: Request) -> None:
    if not _accepts_dicom(request.headers.get("accept")):
        raise ApiError(
            406, "not_acceptable",
            'results are served as multipart/related; type="application/dicom" '
            f"(transfer syntax {ExplicitVRLittleEndian})",
        )  # fmt: skip


def _retrieve(request: Request, key: Credentials, study: str, series: str, sop: str | None) -> Any:
    candidates = _result_series(key, study)  # authenticates first: 401 before 406
    _refuse_unacceptable(request)
    return _multipart(_find(key, candidates, study, series, sop))


def _attribute(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _series_json(found: ResultSeries, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{found.study_uid}/series/{found.series_uid}"
    return {
        "00080060": _attribute("CS", found.modality),
        "0008103E": _attribute("LO", found.description),
        "0020000D": _attribute("UI", found.study_uid),
        "0020000E": _attribute("UI", found.series_uid),
        "00200011": _attribute("IS", found.number),
        "00201209": _attribute("IS", 1),
        "00081190": _attribute("UR", url),
    }


def _instance_json(found: ResultSeries, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{found.study_uid}/series/{found.series_uid}/instances/{found.sop_uid}"
    return {
        "00080016": _attribute("UI", found.sop_class),
        "00080018": _attribute("UI", found.sop_uid),
        "00080060": _attribute("CS", found.modality),
        "0020000D": _attribute("UI", found.study_uid),
        "0020000E": _attribute("UI", found.series_uid),
        "00200013": _attribute("IS", 1),
        "00081190": _attribute("UR", url),
    }


def _base() -> str:
    """Where RetrieveURLs point: PUBLIC_URL's DICOMweb root (as the API's upload_url)."""
    return f"{(get_settings().public_url or '').rstrip('/')}/dicomweb"


def _json(items: list[dict[str, Any]]) -> Response:
    return Response(json.dumps(items), media_type=DICOM_JSON, headers=NO_STORE)


@router.get("/studies/{study}", response_class=Response, responses=MULTIPART)
def retrieve_result_study(study: Uid, request: Request, key: ApiKeyDep) -> Response:
    """WADO-RS: every SR and SEG of this study that we made (the tenant's finished jobs),
    as multipart/related application/dicom; 404 ``study_not_found`` when there is none."""
    candidates = _result_series(key, study)  # authenticates first: 401 before 406
    _refuse_unacceptable(request)
    objects = []
    made: dict[str, tuple[Any, Any] | None] = {}  # job id -> (SR, SEG or None), one load each
    for found in candidates:
        key.job_id = found.job_id  # each job's objects: a view of it in the audit trail
        if found.job_id not in made:
            try:
                made[found.job_id] = result_objects(key, found.job_id)
            except ApiError as error:
                if error.status_code != 409:
                    raise
                made[found.job_id] = None  # 409: not made for this job (not DICOM)
        pair = made[found.job_id]
        data = None if pair is None else pair[0] if found.modality == "SR" else pair[1]
        if data is not None:  # no SEG without masks
            objects.append(data)
    if not objects:
        raise ApiError(404, "study_not_found", f"no results of ours in study {study}")
    return _multipart(*objects)


@router.get("/studies/{study}/series", response_class=Response, responses=LISTING)
def search_result_series(
    study: Uid,
    key: ApiKeyDep,
    modality: Annotated[str | None, Query(alias="Modality", max_length=16)] = None,
    series_uid: Annotated[
        str | None, Query(alias="SeriesInstanceUID", max_length=64, pattern=UID_PATTERN)
    ] = None,
) -> Response:
    """QIDO-RS: our SR and SEG series in this study (the tenant's finished jobs)."""
    base = _base()
    return _json(
        [
            _series_json(found, base)
            for found in _available(key, study)
            if (modality is None or found.modality == modality.upper())
            and (series_uid is None or found.series_uid == series_uid)
        ]
    )


@router.get(
    "/studies/{study}/series/{series}/instances", response_class=Response, responses=LISTING
)
def search_result_instances(study: Uid, series: Uid, key: ApiKeyDep) -> Response:
    """QIDO-RS: the instance of one of our series (none for any other series)."""
    base = _base()
    return _json(
        [_instance_json(f, base) for f in _available(key, study) if f.series_uid == series]
    )


@router.get("/studies/{study}/series/{series}", response_class=Response, responses=MULTIPART)
def retrieve_result_series(study: Uid, series: Uid, request: Request, key: ApiKeyDep) -> Response:
    """WADO-RS: our SR or SEG series (one instance) as multipart/related application/dicom."""
    return _retrieve(request, key, study, series, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    response_class=Response,
    responses=MULTIPART,
)
def retrieve_result_instance(
    study: Uid, series: Uid, instance: Uid, request: Request, key: ApiKeyDep
) -> Response:
    """WADO-RS: our SR or SEG instance as multipart/related application/dicom."""
    return _retrieve(request, key, study, series, instance)
