"""Celery task: unpack, read and preprocess an uploaded study; store the slice stack.

Idempotent: a redelivered task rewrites the same blob and replaces the job's slice rows in
the same transaction that moves the job on, so nothing is duplicated.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
from celery import Task
from sqlalchemy import delete

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode, StudyError
from services.common.jobs import transition
from services.common.modelinfo import slice_model_info
from services.common.native_slices import (
    lesion_maps_key,
    native_blob_key,
    native_lesions_key,
    pack_label_maps,
    pack_native,
)
from services.common.orm import Job, JobStatus, SliceRecord
from services.common.queue import PREPROCESS_TASK, celery_app
from services.common.retention import discard_if_deleted
from services.common.storage import make_storage
from services.common.tasks import fail_job, run_guarded
from services.preprocess.stage import PreprocessedStudy, preprocess_path

log = logging.getLogger(__name__)

STAGE = "preprocess"


@celery_app.task(name=PREPROCESS_TASK, bind=True)
def preprocess_job(self: Task, job_id: str, attempt: int | None = None) -> str:
    return run_guarded(job_id, STAGE, lambda _run: _preprocess(job_id), attempt)


def _preprocess(job_id: str) -> str:
    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return "missing"
        if job.status == JobStatus.QUEUED:
            transition(
                session, job_id, JobStatus.PREPROCESSING, [JobStatus.QUEUED], stage="reading"
            )
        elif job.status != JobStatus.PREPROCESSING:
            return "skipped"  # already past this stage, or ended
        upload_blob = job.upload_blob
    if upload_blob is None:
        return fail_job(job_id, ErrorCode.EMPTY_STUDY, "the job has no uploaded study", STAGE)
    storage = make_storage(settings)
    started = time.perf_counter()
    try:
        out = preprocess_path(
            storage.local_path(upload_blob), settings, slice_model_info(settings.slice_model_dir)
        )
    except StudyError as error:
        return fail_job(job_id, error.code, error.message, STAGE)
    prepared = out.prepared
    buffer = io.BytesIO()
    np.save(buffer, prepared.inputs, allow_pickle=False)
    slices_blob = f"jobs/{job_id}/slices.npy"
    storage.put_bytes(slices_blob, buffer.getvalue())
    lesions_blob = None
    lesion_ranges: list[list[int]] = []
    if prepared.lesion_maps is not None:
        # Lesion label maps of the kept slices, aligned with slices.npy (the overlay): one PNG
        # per slice, so the viewer range-reads one (never the whole stack, never a disk cache).
        packed, lesion_ranges = pack_label_maps(prepared.lesion_maps)
        lesions_blob = lesion_maps_key(job_id)
        storage.put_bytes(lesions_blob, packed)
    if prepared.lesion_labels is not None:
        # The same labels on every slice as read (source geometry): the DICOM SEG.
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=prepared.lesion_labels.astype(np.uint8))
        storage.put_bytes(native_lesions_key(job_id), buffer.getvalue())
    native, native_entries = native_slices(out)
    storage.put_bytes(native_blob_key(job_id), native)
    series = series_report(out)
    if discard_if_deleted(settings, job_id):
        return "deleted"
    dropped = {d.index: d for d in prepared.dropped}
    positions = {index: position for position, index in enumerate(prepared.kept)}
    with session_scope() as session:
        session.execute(delete(SliceRecord).where(SliceRecord.job_id == job_id))
        session.add_all(
            SliceRecord(
                job_id=job_id,
                index=index,
                kept=index in positions,
                stack_position=positions.get(index),
                drop_reason=dropped[index].reason.value if index in dropped else None,
                drop_detail=dropped[index].detail if index in dropped else None,
                high_contrast=bool(prepared.high_contrast[index]),
                lung_fraction=float(prepared.lung_fraction[index]),
                info=_slice_info(
                    _source_info(out.study.slice_info, index, settings.deidentify_uploads),
                    native_entries[index],
                    positions.get(index),
                    lesion_ranges,
                ),
            )
            for index in range(prepared.slices_total)
        )
        moved = transition(
            session,
            job_id,
            JobStatus.SCORING,
            [JobStatus.PREPROCESSING],
            stage="scoring",
            detail={"preprocess_s": round(time.perf_counter() - started, 3)},
            slices_blob=slices_blob,
            slices_total=prepared.slices_total,
            slices_used=len(prepared.kept),
            series=series,
            lung_features=prepared.lung_features,
            lesion_findings=prepared.lesion_findings,
            lesions_blob=lesions_blob,
            **worklist_columns(series),
        )
        if not moved:
            session.rollback()  # cancelled meanwhile: keep nothing
            return "skipped"
    return "done"


def _slice_info(
    source: dict[str, Any],
    native: dict[str, Any],
    position: int | None,
    lesion_ranges: list[list[int]],
) -> dict[str, Any]:
    info = {**source, "native": native}
    if position is not None and position < len(lesion_ranges):
        info["lesions"] = lesion_ranges[position]  # [offset, length] in lesions.bin
    return info


def native_slices(out: PreprocessedStudy) -> tuple[bytes, list[dict[str, Any]]]:
    """Every slice as read (HU when the study has them, else the grey image) with its lung
    mask, for the viewer's native image and the report (services.common.native_slices)."""
    study = out.study
    pixels = list(study.hu) if study.hu is not None else list(study.images)
    prepared = out.prepared
    masks: list[Any] = list(prepared.lung_masks) or [None] * len(pixels)
    labels = list(prepared.lesion_labels) if prepared.lesion_labels is not None else None
    if labels is not None and len(labels) != len(pixels):
        labels = None
    crops = dict(zip(prepared.kept, prepared.input_crops, strict=False))
    return pack_native(pixels, masks, labels, crops, int(prepared.inputs.shape[-1]))


_SOURCE_KEYS = (
    "file",
    "frame",
    "instance_number",
    "slice_location",
    "sop_instance_uid",
    "sop_class_uid",
    "image_position_patient",
)


def _source_info(
    slice_info: list[dict[str, Any]], index: int, deidentified: bool
) -> dict[str, Any]:
    """Where slice ``index`` came from: file, InstanceNumber, SliceLocation, SOPInstanceUID
    (None where the format has none), and its position along the scan axis in mm. With
    de-identification on, no file name is kept (names in an upload may identify someone)."""
    info = slice_info[index] if index < len(slice_info) else {}
    out = {key: info.get(key) for key in _SOURCE_KEYS}
    if deidentified:
        out["file"] = None
    return {**out, "position_mm": info.get("position")}


def series_report(out: PreprocessedStudy) -> dict[str, Any]:
    """What was read, stored on the job and reported with the result: the series choice and
    identifiers (DICOM), orientation, pixel spacing; the source format for every input."""
    spacing = out.study.spacing_mm
    return {
        "orientation": None,
        **(out.series or {}),
        "source_format": out.study.source_format,
        "pixel_spacing_mm": [spacing[1], spacing[2]] if spacing else None,
        "slice_spacing_mm": spacing[0] if spacing else None,
    }


def worklist_columns(series: dict[str, Any]) -> dict[str, Any]:
    """The job's worklist columns (services.common.orm.Job) from the series read."""

    def text(key: str, length: int) -> str | None:
        value = series.get(key)
        return str(value)[:length] if value else None

    return {
        "patient_id": text("patient_id", 200),
        "accession_number": text("accession_number", 64),
        "study_date": text("study_date", 8),
        "series_description": text("series_description", 200),
        "study_instance_uid": text("study_instance_uid", 128),
        "series_instance_uid": text("series_instance_uid", 128),
    }
