"""Celery task: the patient-level verdict from the job's slice probabilities.

Idempotent: one result row per job; the verdict and the ``succeeded`` status commit together,
and the callback is queued only by the transaction that made the job succeed.
"""

from __future__ import annotations

import logging

import numpy as np
from celery import Task
from sqlalchemy import select

from services.common.db import session_scope
from services.common.destinations import create_destination_deliveries
from services.common.errors import ErrorCode
from services.common.jobs import create_webhook_delivery, transition
from services.common.orm import Job, JobStatus, Result, SliceRecord, SliceScore
from services.common.queue import ENSEMBLE_TASK, celery_app
from services.common.tasks import (
    fail_job,
    run_guarded,
    send_pending_destinations,
    send_pending_webhooks,
)
from services.ensemble.stage import loaded_ensemble, verdict

log = logging.getLogger(__name__)


@celery_app.task(name=ENSEMBLE_TASK, bind=True)
def ensemble_job(self: Task, job_id: str, attempt: int | None = None) -> str:
    return run_guarded(job_id, "ensemble", lambda _run: _ensemble_job(job_id), attempt)


def _ensemble_job(job_id: str) -> str:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.ENSEMBLING:
            return "skipped"
        rows = session.execute(
            select(SliceScore.p_noncovid, SliceScore.p_covid, SliceScore.model_version)
            .join(
                SliceRecord,
                (SliceRecord.job_id == SliceScore.job_id)
                & (SliceRecord.index == SliceScore.slice_index),
            )
            .where(SliceScore.job_id == job_id)
            .order_by(SliceRecord.stack_position)
        ).all()
        slices_total = job.slices_total or 0
        lung_features = job.lung_features
        lesion_findings = job.lesion_findings
    if not rows:
        return fail_job(job_id, ErrorCode.EMPTY_STUDY, "no slice was scored", "ensemble")
    probabilities = np.array([[r[0], r[1]] for r in rows], dtype=np.float64)
    decided = verdict(probabilities, lung_features, loaded_ensemble(), rows[0][2], lesion_findings)
    with session_scope() as session:
        if session.get(Result, job_id) is None:
            session.add(
                Result(
                    job_id=job_id,
                    label=decided.label,
                    probabilities=decided.probabilities,
                    slices_total=slices_total,
                    slices_used=len(rows),
                    model_versions=decided.model_versions,
                    findings=decided.findings,
                )
            )
        moved = transition(session, job_id, JobStatus.SUCCEEDED, [JobStatus.ENSEMBLING], stage=None)
        if not moved:
            session.rollback()
            return "skipped"
        session.flush()
        # The SR and SEG for the tenant's PACS first: the callback lists those deliveries.
        create_destination_deliveries(session, job_id)
        create_webhook_delivery(session, job_id)
    send_pending_webhooks(job_id)
    send_pending_destinations(job_id)
    return "done"
