"""What the console's job page needs beyond ``jobs.py``: the job's status timeline, each
kept slice as the model saw it (a PNG of the prepared ``(S, S)`` uint8 input) and, for HU
series, its lesion overlay (an RGBA PNG of the same geometry).

Tenant-scoped like every ``/v1/jobs`` route: another tenant's job is 404.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import select

from services.common.config import get_settings
from services.common.native_slices import (
    DENSITY_RANGES,
    InputCrop,
    decode_label_map,
    decode_mask,
    decode_native,
    density_overlay_png,
    gradcam_key,
    gradcam_overlay_png,
    input_map_to_native,
    lesion_overlay_png,
    mask_overlay_png,
    native_blob_key,
    parse_window,
    render_png,
)
from services.common.npy_rows import npy_row
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
        # Two ranged reads (header, this slice), never the whole stack (S3 or local alike).
        image = npy_row(make_storage(get_settings()), blob, position)
    except FileNotFoundError as exc:
        raise ApiError(404, "slice_not_found", f"no prepared slice {slice_index}") from exc
    if image is None:
        raise ApiError(404, "slice_not_found", f"no prepared slice {slice_index}")
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image, dtype=np.uint8))
    if not ok:
        raise RuntimeError("could not encode a slice PNG")
    return Response(
        png.tobytes(), media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL}
    )


def _kept_position(
    job_id: str, slice_index: int, key: Any
) -> tuple[str | None, int | None, dict[str, Any]]:
    """(lesions blob, stack position, slice info) of a kept slice of the tenant's job."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        row = session.execute(
            select(SliceRecord.stack_position, SliceRecord.info).where(
                SliceRecord.job_id == job_id,
                SliceRecord.index == slice_index,
                SliceRecord.kept.is_(True),
            )
        ).first()
        position, info = (row[0], row[1]) if row is not None else (None, None)
        return job.lesions_blob, position, dict(info or {})


def _lesion_labels(blob: str, position: int, info: dict[str, Any]) -> np.ndarray | None:
    """One kept slice's label map: one ranged read of lesions.bin (the slice row holds its
    byte range). Jobs preprocessed before that layout kept one compressed .npz per job: read
    whole into memory (no scratch disk), the only way into a deflated archive."""
    storage = make_storage(get_settings())
    if blob.endswith(".npz"):
        with np.load(io.BytesIO(storage.get_bytes(blob)), allow_pickle=False) as archive:
            labels = archive["labels"]
        return labels[position] if position < len(labels) else None
    where = info.get("lesions")
    if not where:
        return None
    offset, length = int(where[0]), int(where[1])
    data = storage.get_range(blob, offset, length)
    if len(data) != length:  # purged or rewritten meanwhile
        return None
    return decode_label_map(data)


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
    lesions_blob, position, info = _kept_position(job_id, slice_index, key)
    missing = ApiError(404, "lesions_not_found", f"no lesion overlay for slice {slice_index}")
    if lesions_blob is None or position is None:
        raise missing
    try:
        labels = _lesion_labels(lesions_blob, position, info)
    except FileNotFoundError as exc:
        raise missing from exc
    if labels is None:
        raise missing
    return Response(
        lesion_overlay_png(labels),
        media_type="image/png",
        headers={"Cache-Control": SLICE_CACHE_CONTROL},
    )


SliceIndex = Annotated[int, Path(ge=0, le=MAX_INT)]
WindowParam = Annotated[
    str,
    Query(
        max_length=40,
        description="lung (W1500 L-600), mediastinal (W400 L40) or 'W,L' in HU; "
        "ignored for image inputs (shown as sent)",
    ),
]


_PART_NAMES = {"mask": "lung mask", "lesions": "lesion mask", "image": "native image"}


def _native_entry(job_id: str, slice_index: int, key: Any) -> dict[str, Any]:
    """The slice's ``native`` entry (services.common.native_slices.pack_native), {} if none."""
    with tenant_session(key) as (session, tenant):
        get_tenant_job(session, tenant.id, job_id)
        info = session.scalar(
            select(SliceRecord.info).where(
                SliceRecord.job_id == job_id, SliceRecord.index == slice_index
            )
        )
    return dict((info or {}).get("native") or {})


def _native_part(
    job_id: str, slice_index: int, key: Any, part: str, features: dict[str, Any] | None = None
) -> tuple[bytes, str]:
    """The bytes of one slice's native image, lung mask or lesion labels (one ranged read of
    jobs/<id>/native.bin) and the image's kind; 404 when the job has none. ``features``,
    when given, receives the job's lung features (their HU ranges)."""
    with tenant_session(key) as (session, tenant):
        job = get_tenant_job(session, tenant.id, job_id)
        if features is not None:
            features.update(job.lung_features or {})
        info = session.scalar(
            select(SliceRecord.info).where(
                SliceRecord.job_id == job_id, SliceRecord.index == slice_index
            )
        )
    native = (info or {}).get("native") or {}
    where = native.get(part)
    what = _PART_NAMES[part]
    if not where:
        raise ApiError(404, "slice_not_found", f"no {what} for slice {slice_index}")
    offset, length = int(where[0]), int(where[1])
    try:
        data = make_storage(get_settings()).get_range(native_blob_key(job_id), offset, length)
    except FileNotFoundError as exc:
        raise ApiError(404, "slice_not_found", f"no {what} for slice {slice_index}") from exc
    if len(data) != length:  # purged or rewritten meanwhile
        raise ApiError(404, "slice_not_found", f"no {what} for slice {slice_index}")
    return data, str(native.get("kind") or "gray")


@router.get(
    "/{job_id}/slices/{slice_index}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_native_slice(
    slice_index: SliceIndex, job_id: JobId, key: ApiKeyDep, window: WindowParam = "lung"
) -> Response:
    """Slice ``slice_index`` as read, at its native resolution (not the model's crop), every
    slice of the study, kept or dropped: HU windowed on the server to an 8-bit grey PNG; an
    image input (PNG/JPEG) as it was sent, in grey."""
    try:
        width_level = parse_window(window)
    except ValueError as exc:
        raise ApiError(422, "invalid_window", str(exc)) from exc
    data, kind = _native_part(job_id, slice_index, key, "image")
    png = render_png(decode_native(data, "hu" if kind == "hu" else "gray"), width_level)
    return Response(png, media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL})


@router.get(
    "/{job_id}/slices/{slice_index}/lung-mask.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_lung_mask(slice_index: SliceIndex, job_id: JobId, key: ApiKeyDep) -> Response:
    """The lung mask of the slice at native resolution: an RGBA PNG, translucent colour on
    the lung and transparent elsewhere, to lay over ``.../image``."""
    data, _kind = _native_part(job_id, slice_index, key, "mask")
    png = mask_overlay_png(decode_mask(data))
    return Response(png, media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL})


@router.get(
    "/{job_id}/slices/{slice_index}/density-overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_density_overlay(slice_index: SliceIndex, job_id: JobId, key: ApiKeyDep) -> Response:
    """The lung pixels in the HU ranges the CT pattern counts, at native resolution, RGBA:
    ground glass (-700..-300 HU) amber, consolidation (-300..100 HU) red, transparent
    elsewhere. Only for HU studies (404 ``slice_not_found`` for image inputs)."""
    features: dict[str, Any] = {}
    data, kind = _native_part(job_id, slice_index, key, "image", features)
    if kind != "hu":
        raise ApiError(404, "slice_not_found", f"slice {slice_index} has no Hounsfield units")
    mask_data, _kind = _native_part(job_id, slice_index, key, "mask")
    ranges: dict[str, tuple[float, float]] = {}
    for name, (default, _colour) in DENSITY_RANGES.items():
        value = features.get(f"{name}_hu")
        if isinstance(value, list | tuple) and len(value) == 2:
            ranges[name] = (float(value[0]), float(value[1]))
        else:
            ranges[name] = default
    png = density_overlay_png(decode_native(data, "hu").pixels, decode_mask(mask_data), ranges)
    return Response(png, media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL})


@router.get(
    "/{job_id}/slices/{slice_index}/lesion-overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_native_lesion_overlay(slice_index: SliceIndex, job_id: JobId, key: ApiKeyDep) -> Response:
    """The lesion masks of the verdict on the slice as read, at native resolution, RGBA:
    ground glass amber, consolidation red, transparent elsewhere; lays over ``.../image``.
    404 ``slice_not_found`` for jobs without lesion masks (images, short series, older jobs)."""
    data, _kind = _native_part(job_id, slice_index, key, "lesions")
    png = lesion_overlay_png(decode_label_map(data))
    return Response(png, media_type="image/png", headers={"Cache-Control": SLICE_CACHE_CONTROL})


@router.get(
    "/{job_id}/slices/{slice_index}/gradcam.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_native_gradcam(slice_index: SliceIndex, job_id: JobId, key: ApiKeyDep) -> Response:
    """The slice CNN's Grad-CAM of this slice laid back onto the slice as read (native
    resolution, RGBA, clear where the heat is low): it shows what drove the slice CNN's
    score, not the verdict. 404 ``heatmap_not_found`` when the slice has none."""
    native = _native_entry(job_id, slice_index, key)
    crop = InputCrop.of(native.get("crop"))
    missing = ApiError(404, "heatmap_not_found", f"no heatmap for slice {slice_index}")
    if crop is None or not native.get("rows") or not native.get("columns"):
        raise missing
    try:
        data = make_storage(get_settings()).get_bytes(gradcam_key(job_id, slice_index))
    except FileNotFoundError as exc:
        raise missing from exc
    cam = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if cam is None:
        raise missing
    heat = input_map_to_native(cam / 255.0, crop, int(native["rows"]), int(native["columns"]))
    return Response(
        gradcam_overlay_png(heat),
        media_type="image/png",
        headers={"Cache-Control": SLICE_CACHE_CONTROL},
    )
