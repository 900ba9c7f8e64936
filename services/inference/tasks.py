"""Celery task: score a job's slice stack (TorchServe or in-process) and draw Grad-CAM maps.

Idempotent: scores are keyed by (job, slice, model version) and replaced in the transaction
that moves the job on.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
from celery import Task
from celery.worker.control import control_command
from sqlalchemy import delete, select

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode
from services.common.jobs import transition
from services.common.native_slices import gradcam_key
from services.common.orm import Job, JobStatus, SliceRecord, SliceScore
from services.common.queue import INFERENCE_TASK, SCORER_READY_COMMAND, celery_app
from services.common.retention import discard_if_deleted
from services.common.storage import make_storage
from services.common.tasks import fail_job, release_step, run_guarded
from services.inference.probe import scorer_reachable
from services.inference.scorer import ScorerUnavailable
from services.inference.stage import (
    ModelVersionMismatch,
    explain_slices,
    loaded_scorer,
    loaded_slice_model,
    score_slices,
)

log = logging.getLogger(__name__)

STAGE = "inference"
SCORER_RETRIES = 5  # runs released for later while the scorer is unavailable, then failed


@control_command(name=SCORER_READY_COMMAND)
def scorer_ready(_state: Any) -> dict[str, bool]:
    """Answered by the worker's main process for the gateway's /readyz; loads no model."""
    return {"ready": scorer_reachable(get_settings())}


@celery_app.task(name=INFERENCE_TASK, bind=True)
def score_job(self: Task, job_id: str, attempt: int | None = None) -> str:
    return run_guarded(job_id, STAGE, lambda run: _score(run, job_id), attempt)


def _score(run: int, job_id: str) -> str:
    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.SCORING or job.slices_blob is None:
            return "skipped"
        slices_blob = job.slices_blob
        kept = list(
            session.scalars(
                select(SliceRecord.index)
                .where(SliceRecord.job_id == job_id, SliceRecord.kept.is_(True))
                .order_by(SliceRecord.stack_position)
            )
        )
    storage = make_storage(settings)
    inputs = np.load(io.BytesIO(storage.get_bytes(slices_blob)), allow_pickle=False)
    if len(inputs) != len(kept):
        raise RuntimeError(f"slice stack has {len(inputs)} slices, rows say {len(kept)}")
    started = time.perf_counter()
    try:
        scores = score_slices(inputs, loaded_scorer())
    except ScorerUnavailable as exc:
        if run <= SCORER_RETRIES:  # back in the outbox, due later: the sweeper sends it
            delay_s = 2 ** (run - 1) * 5
            log.warning("job %s: %s; inference again in %d s", job_id, exc, delay_s,
                        extra={"job_id": job_id})  # fmt: skip
            release_step(job_id, STAGE, run, delay_s)
            return "retry"
        return fail_job(job_id, ErrorCode.SCORER_UNAVAILABLE, str(exc), STAGE)
    score_s = time.perf_counter() - started
    detail: dict[str, Any] = {
        "score_s": round(score_s, 3),
        "model_name": scores.model_name,
        "model_version": scores.model_version,
    }
    heatmaps: dict[int, str] = {}
    cams: dict[int, bytes] = {}
    try:
        pngs = explain_slices(inputs, scores, loaded_slice_model(), settings.heatmap_top_k, cams)
    except ModelVersionMismatch as exc:
        log.warning("no heatmaps for job %s: %s", job_id, exc, extra={"job_id": job_id})
        detail["heatmaps_refused"] = str(exc)
        pngs = {}
    for position, png in pngs.items():
        key = f"jobs/{job_id}/heatmaps/slice-{kept[position]:04d}.png"
        storage.put_bytes(key, png)
        heatmaps[kept[position]] = key
        if position in cams:  # the raw map, for the native viewer's Grad-CAM layer
            storage.put_bytes(gradcam_key(job_id, kept[position]), cams[position])
    if heatmaps and discard_if_deleted(settings, job_id):
        return "deleted"
    with session_scope() as session:
        session.execute(
            delete(SliceScore).where(
                SliceScore.job_id == job_id, SliceScore.model_version == scores.model_version
            )
        )
        session.add_all(
            SliceScore(
                job_id=job_id,
                slice_index=index,
                model_name=scores.model_name,
                model_version=scores.model_version,
                p_noncovid=float(p[0]),
                p_covid=float(p[1]),
                heatmap_blob=heatmaps.get(index),
            )
            for index, p in zip(kept, scores.probabilities, strict=True)
        )
        moved = transition(
            session, job_id, JobStatus.ENSEMBLING, [JobStatus.SCORING], stage="ensembling",
            detail=detail,
        )  # fmt: skip
        if not moved:
            session.rollback()
            return "skipped"
    return "done"
