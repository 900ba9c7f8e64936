"""Celery task: score a job's slice stack (TorchServe or in-process) and draw Grad-CAM maps.

Idempotent: scores are keyed by (job, slice, model version) and replaced in the transaction
that moves the job on.
"""

from __future__ import annotations

import io
import logging
import time
from functools import lru_cache

import cv2
import numpy as np
from celery import Task
from sqlalchemy import delete, select

from services.common.celery_app import INFERENCE_TASK, celery_app
from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode
from services.common.jobs import transition
from services.common.modelinfo import slice_model_dir
from services.common.orm import Job, JobStatus, SliceRecord, SliceScore
from services.common.storage import make_storage
from services.common.tasks import fail_job, run_guarded
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.gradcam import gradcam, overlay
from services.inference.scorer import Scorer, ScorerUnavailable, make_scorer

log = logging.getLogger(__name__)

SCORER_RETRIES = 5


@lru_cache(maxsize=1)
def _scorer() -> Scorer:
    return make_scorer(get_settings())


@lru_cache(maxsize=1)
def _explainer_model() -> SliceModel:
    return load_slice_model(slice_model_dir())


@celery_app.task(name=INFERENCE_TASK, bind=True, max_retries=SCORER_RETRIES)
def score_job(self: Task, job_id: str) -> str:
    return run_guarded(job_id, "inference", lambda: _score(self, job_id))


def _score(task: Task, job_id: str) -> str:
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
        scores = _scorer().score(inputs)
    except ScorerUnavailable as exc:
        if task.request.retries < SCORER_RETRIES:
            raise task.retry(countdown=2**task.request.retries * 5) from exc
        return fail_job(job_id, ErrorCode.SCORER_UNAVAILABLE, str(exc), "inference")
    score_s = time.perf_counter() - started
    heatmaps = _write_heatmaps(job_id, inputs, kept, scores.probabilities[:, 1])
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
            session,
            job_id,
            JobStatus.ENSEMBLING,
            [JobStatus.SCORING],
            stage="ensembling",
            detail={
                "score_s": round(score_s, 3),
                "model_name": scores.model_name,
                "model_version": scores.model_version,
            },
        )
        if not moved:
            session.rollback()
            return "skipped"
    return "done"


def _write_heatmaps(
    job_id: str, inputs: np.ndarray, kept: list[int], p_covid: np.ndarray
) -> dict[int, str]:
    """Grad-CAM overlays of the most suspicious slices, stored as PNG blobs by slice index."""
    top_k = min(get_settings().heatmap_top_k, len(kept))
    if top_k == 0:
        return {}
    storage = make_storage()
    order = np.argsort(-p_covid)[:top_k]
    maps = gradcam(_explainer_model().members[0], inputs[order])
    written: dict[int, str] = {}
    for position, heatmap in zip(order, maps, strict=True):
        ok, png = cv2.imencode(".png", overlay(inputs[position], heatmap))
        if not ok:
            raise OSError("could not encode a heatmap PNG")
        key = f"jobs/{job_id}/heatmaps/slice-{kept[position]:04d}.png"
        storage.put_bytes(key, png.tobytes())
        written[kept[position]] = key
    return written
