"""``/v1/jobs``: create, read, list, slices, heatmaps, cancel/delete."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.audit import Action
from services.common.config import get_settings
from services.common.destinations import deliveries_view
from services.common.jobs import job_view, transition
from services.common.modelinfo import CLASS_NAMES
from services.common.orm import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobStatus,
    SliceRecord,
    SliceScore,
)
from services.common.retention import discard_partial_upload
from services.common.storage import make_storage
from services.gateway.auth import ApiKeyDep, audit, tenant_session
from services.gateway.errors import ApiError, error_responses
from services.gateway.schemas import (
    MAX_INT,
    NO_CONTROL_CHARS,
    IsoDate,
    JobCreate,
    JobCreated,
    JobOut,
    JobPage,
    JobStatusName,
    SlicesOut,
)

# Every route: 401 without a valid key, 422 for invalid input, 503 when the gateway is at
# capacity (services.gateway.limits) or the database is unavailable.
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))

# Handlers are sync on purpose: each runs as one threadpool call that opens and closes its
# own session (services.gateway.auth explains why that cannot deadlock).
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_CONTROL_CHARS)]
NOT_FOUND = error_responses(404)

UPLOADS_PATH = "/v1/uploads"


def upload_url() -> str:
    base = (get_settings().public_url or "").rstrip("/")
    return f"{base}{UPLOADS_PATH}"


def _request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _created_body(job: Job) -> dict[str, Any]:
    return {**job_view(job), "upload_url": upload_url(), "callback_url": job.callback_url}


def get_tenant_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:  # another tenant's job does not exist for you
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return job


@router.post(
    "",
    status_code=201,
    response_model=JobCreated,
    responses={
        200: {"model": JobCreated, "description": "The job made earlier with this Idempotency-Key"},
        **error_responses(400, 409),
    },
)
def create_job(
    body: JobCreate,
    key: ApiKeyDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=NO_CONTROL_CHARS)] = None,
) -> Any:
    request_hash = _request_hash(body)
    with tenant_session(key) as (session, tenant):
        if idempotency_key:
            existing = session.scalar(
                select(Job).where(
                    Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key
                )
            )
            if existing is not None:
                return _replay(existing, request_hash)
        job = Job(
            tenant_id=tenant.id,
            external_id=body.external_id,
            callback_url=str(body.callback_url) if body.callback_url else None,
            idempotency_key=idempotency_key or None,
            request_hash=request_hash,
            created_by=key.actor,
        )
        session.add(job)
        try:
            session.flush()
        except IntegrityError:  # the same key raced in from a parallel request
            session.rollback()
            existing = session.scalar(
                select(Job).where(
                    Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key
                )
            )
            if existing is None:
                raise
            return _replay(existing, request_hash)
        session.add(JobEvent(job_id=job.id, status=JobStatus.AWAITING_UPLOAD.value))
        audit(session, key, tenant, Action.JOB_CREATE, job.id)
        session.commit()
        return _created_body(job)


def _replay(job: Job, request_hash: str) -> JSONResponse:
    if job.request_hash != request_hash:
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with another body"
        )
    return JSONResponse(_created_body(job), status_code=200)


# The worklist's sort keys; a leading "-" sorts descending. Ties: newest first, then id.
SortKey = Literal[
    "created_at", "-created_at", "study_date", "-study_date",
    "status", "-status", "category", "-category",
    "patient_id", "-patient_id", "accession_number", "-accession_number",
]  # fmt: skip
_SORT_COLUMNS = {
    "created_at": Job.created_at,
    "study_date": Job.study_date,
    "status": Job.status,
    "category": Job.category,
    # Identifiers as people read them: case-insensitive ("cap_9" next to "CAP_10").
    "patient_id": func.lower(Job.patient_id),
    "accession_number": func.lower(Job.accession_number),
}
SearchText = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=NO_CONTROL_CHARS,
        description="case-insensitive substring of the patient id (the pseudonym when "
        "de-identification is on), accession number, external id or series description",
    ),
]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


# Every value common.jobs.verdict_category gives: the lesion verdict's four categories, and
# the label of verdicts without HU findings (images, short series).
VerdictCategory = Literal["covid", "other_pneumonia", "no_pneumonia", "indeterminate", "noncovid"]


@router.get("", response_model=JobPage)
def list_jobs(
    key: ApiKeyDep,
    status: Annotated[list[JobStatusName] | None, Query(description="one or more")] = None,
    category: Annotated[
        list[VerdictCategory] | None,
        Query(description="verdict category, one or more (see StudyOut.category)"),
    ] = None,
    study_date_from: Annotated[IsoDate | None, Query(description="StudyDate on or after")] = None,
    study_date_to: Annotated[IsoDate | None, Query(description="StudyDate on or before")] = None,
    q: SearchText = None,
    sort: Annotated[SortKey, Query(description="sort key; '-' for descending")] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> Any:
    """The tenant's jobs as a worklist: filtered, searched, sorted and paged on the server
    (``total`` counts every match)."""
    with tenant_session(key) as (session, tenant):
        query = select(Job).where(Job.tenant_id == tenant.id)
        if status:
            query = query.where(Job.status.in_(status))
        if category:
            query = query.where(Job.category.in_(category))
        if study_date_from:
            query = query.where(Job.study_date >= study_date_from.strftime("%Y%m%d"))
        if study_date_to:
            query = query.where(Job.study_date <= study_date_to.strftime("%Y%m%d"))
        if q:
            pattern = _like(q)
            query = query.where(
                or_(
                    *(
                        func.lower(column).like(pattern, escape="\\")
                        for column in (
                            Job.patient_id,
                            Job.accession_number,
                            Job.external_id,
                            Job.series_description,
                        )
                    )
                )
            )
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        column = _SORT_COLUMNS[sort.lstrip("-")]
        order = (column.desc() if sort.startswith("-") else column.asc()).nulls_last()
        jobs = session.scalars(
            query.order_by(order, Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        ).all()
        items = [job_view(j) for j in jobs]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: JobId, key: ApiKeyDep) -> Any:
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        return {**job_view(job), "deliveries": deliveries_view(session, job.id)}


@router.get("/{job_id}/slices", response_model=SlicesOut, responses=NOT_FOUND)
def get_slices(job_id: JobId, key: ApiKeyDep) -> Any:
    with tenant_session(key) as (session, tenant):
        return _slices(session, get_tenant_job(session, tenant.id, job_id))


def _slices(session: Session, job: Job) -> dict[str, Any]:
    job_id = job.id
    version = job.result.model_versions.get("slice_cnn") if job.result else None
    score_query = select(SliceScore).where(SliceScore.job_id == job_id)
    if version:
        score_query = score_query.where(SliceScore.model_version == version)
    scores = {s.slice_index: s for s in session.scalars(score_query)}
    rows = session.scalars(
        select(SliceRecord).where(SliceRecord.job_id == job_id).order_by(SliceRecord.index)
    ).all()
    lesion_share = (job.lesion_findings or {}).get("slice_lesion_share") or []
    has_lesions = job.lesions_blob is not None
    slices = []
    native_kind = None
    for row in rows:
        score = scores.get(row.index)
        info = row.info or {}
        native = info.get("native") or {}
        native_kind = native.get("kind") or native_kind
        base = f"/v1/jobs/{job_id}/slices/{row.index}"
        slices.append(
            {
                "index": row.index,
                "instance_number": info.get("instance_number"),
                "slice_location": info.get("slice_location"),
                "sop_instance_uid": info.get("sop_instance_uid"),
                "file": info.get("file"),
                "frame": info.get("frame"),
                "position_mm": info.get("position_mm"),
                "rows": native.get("rows"),
                "columns": native.get("columns"),
                "image_url": f"{base}/image" if native.get("image") else None,
                "lung_mask_url": f"{base}/lung-mask.png" if native.get("mask") else None,
                "density_overlay_url": (
                    f"{base}/density-overlay.png"
                    if native.get("mask") and native.get("kind") == "hu"
                    else None
                ),
                "kept": row.kept,
                "drop_reason": row.drop_reason,
                "drop_detail": row.drop_detail,
                "high_contrast": row.high_contrast,
                "lung_fraction": row.lung_fraction,
                "probabilities": (
                    dict(zip(CLASS_NAMES, (score.p_noncovid, score.p_covid), strict=True))
                    if score
                    else None
                ),
                "model_version": score.model_version if score else None,
                "heatmap_url": (
                    f"/v1/jobs/{job_id}/heatmaps/{row.index}"
                    if score and score.heatmap_blob
                    else None
                ),
                "lesion_share": (
                    float(lesion_share[row.index]) if row.index < len(lesion_share) else None
                ),
                "lesions_url": (
                    f"/v1/jobs/{job_id}/slices/{row.index}/lesions.png"
                    if has_lesions and row.kept
                    else None
                ),
                "lesion_overlay_url": (
                    f"{base}/lesion-overlay.png" if native.get("lesions") else None
                ),
                "gradcam_url": (
                    f"{base}/gradcam.png"
                    if score and score.heatmap_blob and native.get("crop")
                    else None
                ),
                "input_crop": native.get("crop") if row.kept else None,
            }
        )
    return {
        "job_id": job_id,
        "slices_total": job.slices_total,
        "slices_used": job.slices_used,
        "has_lesions": has_lesions,
        "native": native_kind,
        "orientation": (job.series or {}).get("orientation"),
        "pixel_spacing_mm": (job.series or {}).get("pixel_spacing_mm"),
        "slices": slices,
    }


@router.get(
    "/{job_id}/heatmaps/{slice_index}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_heatmap(
    slice_index: Annotated[int, Path(ge=0, le=MAX_INT)], job_id: JobId, key: ApiKeyDep
) -> Response:
    with tenant_session(key) as (session, tenant):
        get_tenant_job(session, tenant.id, job_id)
        blob = session.scalar(
            select(SliceScore.heatmap_blob).where(
                SliceScore.job_id == job_id,
                SliceScore.slice_index == slice_index,
                SliceScore.heatmap_blob.is_not(None),
            )
        )
    if blob is None:
        raise ApiError(404, "heatmap_not_found", f"no heatmap for slice {slice_index}")
    try:
        data = make_storage(get_settings()).get_bytes(blob)
    except FileNotFoundError as exc:
        raise ApiError(404, "heatmap_not_found", f"no heatmap for slice {slice_index}") from exc
    return Response(data, media_type="image/png")


@router.delete("/{job_id}", status_code=204, responses={202: {"model": JobOut}, **NOT_FOUND})
def delete_job(job_id: JobId, key: ApiKeyDep) -> Response:
    """Delete a job that is awaiting its upload or has ended, with its blobs (204); cancel
    one that is being processed (202: a running stage must see the cancel first)."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        by = {"by": "client"}
        if transition(session, job_id, JobStatus.CANCELLED, [JobStatus.AWAITING_UPLOAD], detail=by):
            # Still waiting for its study (issue 20.9): no stage ever saw it, so one action
            # leaves one final state - gone. The guarded transition wins or loses against an
            # upload completing; once committed the upload room takes no further byte.
            session.commit()
            session.refresh(job)
        elif JobStatus(job.status) not in TERMINAL_STATUSES:
            running = [s for s in JobStatus if s not in TERMINAL_STATUSES]
            if transition(session, job_id, JobStatus.CANCELLED, running, detail=by):
                session.commit()
                session.refresh(job)
                if job.upload_id:
                    discard_partial_upload(get_settings(), job.upload_id)
                return JSONResponse(job_view(job), status_code=202)
            session.rollback()  # it ended meanwhile: delete it below
            session.refresh(job)
        upload_id = job.upload_id
        session.delete(job)
    if upload_id:
        discard_partial_upload(get_settings(), upload_id)
    # After the commit: a stage still running stores nothing that survives this
    # (common.retention.discard_if_deleted).
    make_storage(get_settings()).delete_prefix(f"jobs/{job_id}")
    return Response(status_code=204)
