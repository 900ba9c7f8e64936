"""Job state changes and the job's public view, shared by the gateway and every worker.

A status change is a compare-and-set UPDATE plus a JobEvent row in one transaction, so two
processes racing (a redelivered task, a cancel) cannot both win, and no event is duplicated.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.common.destinations import deliveries_view
from services.common.errors import ErrorCode
from services.common.orm import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobStatus,
    Result,
    WebhookDelivery,
    new_id,
    utcnow,
)
from services.common.retention import purge_raw_upload_after_commit

log = logging.getLogger(__name__)


# The step a status waits for (the transactional outbox): moving a job into one of these
# records the step in the same UPDATE, due at once; publishing it happens after the commit
# (common.tasks.publish_due) and the sweeper sends any step whose publish did not happen.
STEP_OF_STATUS = {
    JobStatus.QUEUED: "preprocess",
    JobStatus.SCORING: "inference",
    JobStatus.ENSEMBLING: "ensemble",
}


def transition(
    session: Session,
    job_id: str,
    new_status: JobStatus,
    allowed_from: Iterable[JobStatus],
    *,
    stage: str | None = None,
    detail: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    keep_raw_upload: bool = False,
    **fields: Any,
) -> bool:
    """Move ``job_id`` to ``new_status`` if it is in ``allowed_from``; True when it moved.

    Entering a status that waits for a step records that step (the outbox); ending the job
    clears it. The event says which attempt of the stage moved the job (``attempt``)."""
    now = utcnow()
    values: dict[str, Any] = {"status": new_status.value, "stage": stage, "updated_at": now}
    if new_status == JobStatus.SUCCEEDED and "category" not in fields:
        result = session.get(Result, job_id)  # added by the same transaction (ensemble)
        if result is not None:
            values["category"] = verdict_category(result.label, result.findings)
    if error is not None:
        values["error_code"], values["error_message"] = error
    next_step = STEP_OF_STATUS.get(new_status)
    if next_step is not None:
        values.update(
            step=next_step, step_attempt=0, step_crashes=0, step_due_at=now, heartbeat_at=None
        )
    elif new_status in TERMINAL_STATUSES:
        values.update(step=None, step_due_at=None, heartbeat_at=None)
    values.update(fields)
    allowed = [s.value for s in allowed_from]
    attempt = session.scalar(select(Job.step_attempt).where(Job.id == job_id))
    moved = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(allowed)).values(**values)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    event_detail = {"worker": f"{socket.gethostname()}:{os.getpid()}", **(detail or {})}
    if attempt:  # the run of the stage that moved it (1 unless a run was lost)
        event_detail["attempt"] = attempt
    if error is not None:
        event_detail["error"] = {"code": error[0], "message": error[1]}
    session.add(JobEvent(job_id=job_id, status=new_status.value, stage=stage, detail=event_detail))
    if new_status in TERMINAL_STATUSES and not keep_raw_upload:
        purge_raw_upload_after_commit(session, job_id)  # PHI: kept no longer than needed
    log.info("job %s -> %s", job_id, new_status.value, extra={"job_id": job_id, "stage": stage})
    return True


def fail(
    session: Session,
    job_id: str,
    code: ErrorCode | str,
    message: str,
    stage: str | None = None,
    *,
    keep_raw_upload: bool = False,
) -> bool:
    """Mark a job failed unless it already ended; queue its callback. ``keep_raw_upload``:
    the study is evidence (it crashed workers), kept until the derived-data retention."""
    code_value = code.value if isinstance(code, ErrorCode) else code
    non_terminal = [s for s in JobStatus if s not in TERMINAL_STATUSES]
    moved = transition(
        session, job_id, JobStatus.FAILED, non_terminal, stage=stage,
        error=(code_value, message), keep_raw_upload=keep_raw_upload,
    )  # fmt: skip
    if moved:
        session.flush()
        create_webhook_delivery(session, job_id)
    return moved


# The RSNA pattern of a whole-lung HU series, as the worklist names the verdict.
_PATTERN_CATEGORY = {
    "typical": "covid",
    "indeterminate": "indeterminate",
    "atypical": "other_pneumonia",
    "negative": "no_pneumonia",
}


def verdict_category(label: str, findings: dict[str, Any] | None) -> str:
    """The worklist category of a verdict: the findings' own ``category`` when the verdict
    names one, else its RSNA pattern's (typical -> covid, indeterminate, atypical -> other
    pneumonia, negative -> no pneumonia), else the label (``covid`` / ``noncovid``) for
    verdicts without HU findings (images, short series)."""
    findings = findings or {}
    if isinstance(findings.get("category"), str):
        return str(findings["category"])[:40]
    pattern = findings.get("pattern")
    if isinstance(pattern, str) and pattern in _PATTERN_CATEGORY:
        return _PATTERN_CATEGORY[pattern]
    return label.lower()[:40]


def study_view(job: Job) -> dict[str, Any]:
    """The worklist columns of a job (null until preprocessing has read the study)."""
    return {
        "patient_id": job.patient_id,
        "accession_number": job.accession_number,
        "study_date": job.study_date,
        "series_description": job.series_description,
        "study_instance_uid": job.study_instance_uid,
        "series_instance_uid": job.series_instance_uid,
        "category": job.category,
    }


def result_view(job: Job) -> dict[str, Any] | None:
    if job.result is None:
        return None
    # dicom_source (patient name, birth date... for the DICOM SR/SEG) stays on the server:
    # this view is also the callback's body.
    series = {k: v for k, v in job.series.items() if k != "dicom_source"} if job.series else None
    return {
        "series": series,
        "label": job.result.label,
        "probabilities": job.result.probabilities,
        "slices_total": job.result.slices_total,
        "slices_used": job.result.slices_used,
        "model_versions": job.result.model_versions,
        "findings": job.result.findings,
    }


def job_view(job: Job) -> dict[str, Any]:
    """The body of ``GET /v1/jobs/{id}`` (also the ``data`` of every callback)."""
    return {
        "id": job.id,
        "status": job.status,
        "stage": job.stage,
        "external_id": job.external_id,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "error": (
            {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
        ),
        "study": study_view(job),
        "result": result_view(job),
    }


def create_webhook_delivery(session: Session, job_id: str) -> str | None:
    """Record the callback for a finished job (at most one per event type); its id or None."""
    job = session.get(Job, job_id)
    if job is None or not job.callback_url:
        return None
    session.refresh(job)
    event_type = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed"}.get(
        JobStatus(job.status)
    )
    if event_type is None:
        return None
    existing = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == event_type
        )
    )
    if existing is not None:
        return None
    delivery = WebhookDelivery(
        id=f"msg_{new_id().replace('-', '')}",
        job_id=job_id,
        event_type=event_type,
        url=job.callback_url,
        # The body of GET /v1/jobs/{id} at this moment (result deliveries still pending).
        payload={
            "type": event_type,
            "data": {**job_view(job), "deliveries": deliveries_view(session, job_id)},
        },
        next_attempt_at=utcnow(),  # due: sent after the commit, or by the sweeper
    )
    session.add(delivery)
    session.flush()
    return delivery.id
