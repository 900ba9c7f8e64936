"""What the console's job page needs beyond ``jobs.py``: the job's status timeline, each
kept slice as the model saw it (a PNG of the prepared ``(S, S)`` uint8 input) and, for HU
series, its lesion overlay (an RGBA PNG of the same geometry).

Tenant-scoped like every ``/v1/jobs`` route: another tenant's job is 404.
"""

from __future__ import annotations

from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import APIRouter, Path, Response
from sqlalchemy import select

from services.common.config import get_settings
from services.common.orm import JobEvent, SliceRecord
from services.common.storage import make_storage
from services.gateway.auth import ApiKeyDep, tenant_session
from services.gateway.errors import ApiError, error_responses
from services.gateway.jobs import NOT_FOUND, JobId, get_tenant_job
from services.gateway.schemas import MAX_INT, JobEventsOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 429, 503))

# A prepared slice never changes once written (a job is preprocessed once); the browser may
# keep it for the session, never a shared cache (it is patient data).
SLICE_CACHE_CONTROL = "private, max-age=3600"

# Overlay colours (RGBA) of the lesion label maps (services/preprocess/lesion_measurements):
# 1 ground glass amber, 2 consolidation red; 0 and 3 (other lung) transparent.
LESION_COLOURS = {1: (255, 191, 0, 150), 2: (220, 38, 38, 190)}


@router.get("/{job_id}/events", response_model=JobEventsOut, responses=NOT_FOUND)
def get_events(job_id: JobId, key: ApiKeyDep) -> Any:
    """Every status change of the job, oldest first (the console's timeline)."""
    with tenant_session(key) as (session, tenant):
        get_tenant_job(session, tenant.id, job_id)
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        items = [
            {"status": e.status, "stage": e.stage, "at": e.created_at.isoformat()} for e in events
        ]
    return {"job_id": job_id, "events": items}


@router.get(
    "/{job_id}/slices/{slice_index}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_slice_png(
    slice_index: Annotated[int, Path(ge=0, le=MAX_INT)], job_id: JobId, key: ApiKeyDep
) -> Response:
    """The kept slice ``slice_index`` (index in the study as read) as the model saw it:
    windowed, segmented and resized, grey PNG. A dropped slice has no prepared image (404)."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        blob = job.slices_blob
        position = session.scalar(
            select(SliceRecord.stack_position).where(
                SliceRecord.job_id == job_id,
                SliceRecord.index == slice_index,
                SliceRecord.kept.is_(True),
            )
        )
    if blob is None or position is None:
        raise ApiError(404, "slice_not_found", f"no prepared slice {slice_index}")
    try:
        path = make_storage(get_settings()).local_path(blob)
    except FileNotFoundError as exc:
        raise ApiError(404, "slice_not_found", f"no prepared slice {slice_index}") from exc
    stack = np.load(path, mmap_mode="r", allow_pickle=False)  # reads only this slice
    if position >= len(stack):
        raise ApiError(404, "slice_not_found", f"no prepared slice {slice_index}")
    ok, png = cv2.imencode(".png", np.ascontiguousarray(stack[position], dtype=np.uint8))
    if not ok:
        raise RuntimeError("could not encode a slice PNG")
    return Response(
        png.tobytes(), media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL}
    )


def _kept_position(job_id: str, slice_index: int, key: Any) -> tuple[str | None, str | None, Any]:
    """(slices blob, lesions blob, stack position) of a kept slice of the tenant's job."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        position = session.scalar(
            select(SliceRecord.stack_position).where(
                SliceRecord.job_id == job_id,
                SliceRecord.index == slice_index,
                SliceRecord.kept.is_(True),
            )
        )
        return job.slices_blob, job.lesions_blob, position


def lesion_overlay_png(labels: np.ndarray) -> bytes:
    """RGBA PNG of one (S, S) label map: ground glass and consolidation coloured, rest clear."""
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    for label, colour in LESION_COLOURS.items():
        rgba[labels == label] = colour
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise RuntimeError("could not encode a lesion overlay PNG")
    return bytes(png.tobytes())


@router.get(
    "/{job_id}/slices/{slice_index}/lesions.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_lesion_overlay(
    slice_index: Annotated[int, Path(ge=0, le=MAX_INT)], job_id: JobId, key: ApiKeyDep
) -> Response:
    """The lesion overlay of kept slice ``slice_index``: an RGBA PNG the size of the slice PNG,
    ground glass amber, consolidation red, transparent elsewhere. 404 for dropped slices and
    for jobs without HU lesion masks (images, short or pre-v3 studies)."""
    _, lesions_blob, position = _kept_position(job_id, slice_index, key)
    missing = ApiError(404, "lesions_not_found", f"no lesion overlay for slice {slice_index}")
    if lesions_blob is None or position is None:
        raise missing
    try:
        path = make_storage(get_settings()).local_path(lesions_blob)
    except FileNotFoundError as exc:
        raise missing from exc
    with np.load(path, allow_pickle=False) as archive:
        labels = archive["labels"]
    if position >= len(labels):
        raise missing
    return Response(
        lesion_overlay_png(labels[position]),
        media_type="image/png",
        headers={"Cache-Control": SLICE_CACHE_CONTROL},
    )
