"""Celery task: unpack, read and preprocess an uploaded study; store the slice stack.

Idempotent: a redelivered task rewrites the same blob and replaces the job's slice rows in
the same transaction that moves the job on, so nothing is duplicated.
"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
from celery import Task
from sqlalchemy import delete

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode, StudyError
from services.common.jobs import transition
from services.common.modelinfo import slice_model_info
from services.common.orm import Job, JobStatus, SliceRecord
from services.common.queue import PREPROCESS_TASK, celery_app
from services.common.retention import discard_if_deleted
from services.common.storage import make_storage
from services.common.tasks import fail_job, run_guarded
from services.preprocess.stage import preprocess_path

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
    if prepared.lesion_maps is not None:
        # Lesion label maps of the kept slices, aligned with slices.npy (the overlay).
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=prepared.lesion_maps.astype(np.uint8))
        lesions_blob = f"jobs/{job_id}/lesions.npz"
        storage.put_bytes(lesions_blob, buffer.getvalue())
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
            series=out.series,
            lung_features=prepared.lung_features,
            lesion_findings=prepared.lesion_findings,
            lesions_blob=lesions_blob,
        )
        if not moved:
            session.rollback()  # cancelled meanwhile: keep nothing
            return "skipped"
    return "done"
