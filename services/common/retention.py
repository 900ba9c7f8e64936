"""What the service keeps, and for how long (PHI minimisation).

- The raw upload (DICOM headers carry patient names) is deleted as soon as its job ends,
  unless ``retention_keep_raw_upload``: right after the commit that ends the job
  (``purge_raw_upload_after_commit``), and by the sweep for any the hook missed (a crash
  between commit and delete).
- Derived data (prepared slices, heatmaps, per-slice rows, the result) is deleted
  ``retention_derived_days`` after the job ended; the job row stays, with ``purged_at``, so a
  client still sees what happened.
- A stage that stores blobs for a job checks afterwards that the job still exists
  (``discard_if_deleted``): a DELETE racing a running stage leaves no orphaned blob.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.orm import Session

from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode
from services.common.orm import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    Result,
    SliceRecord,
    SliceScore,
    utcnow,
)
from services.common.storage import make_storage

log = logging.getLogger(__name__)

_PENDING = "covidct_purge_raw_uploads"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def raw_upload_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/upload"


def discard_partial_upload(settings: Settings, upload_id: str) -> None:
    """Remove an unfinished tus upload (its bytes and its sidecar, which holds the file name)
    of a job that ended: a cancelled upload keeps no byte."""
    if not upload_id.isalnum():  # tus upload ids are hex; never a path
        return
    for path in (settings.upload_dir / upload_id, settings.upload_dir / f"{upload_id}.info"):
        path.unlink(missing_ok=True)


def purge_raw_upload_after_commit(session: Session, job_id: str) -> None:
    """Delete the job's raw upload once ``session`` commits (nothing if it rolls back)."""
    session.info.setdefault(_PENDING, set()).add(job_id)


@event.listens_for(Session, "after_commit")
def _purge_committed(session: Session) -> None:
    job_ids = session.info.pop(_PENDING, set())
    if not job_ids:
        return
    settings = get_settings()
    if settings.retention_keep_raw_upload:
        return
    storage = make_storage(settings)
    for job_id in job_ids:
        try:
            storage.delete_prefix(raw_upload_prefix(job_id))
        except Exception:  # the sweep retries; a failed delete must not fail the commit
            log.exception("could not delete the raw upload of job %s", job_id)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def discard_if_deleted(settings: Settings, job_id: str) -> bool:
    """Call after storing blobs for ``job_id``: if the job row is gone (deleted while the
    stage ran), delete everything stored under it. True when it was gone.

    The DELETE route commits the row's removal before it deletes the blobs, so a blob
    written before that deletion is removed by the route, and one written after it is
    removed here: no interleaving leaves one behind.
    """
    with session_scope() as session:
        exists = session.scalar(select(Job.id).where(Job.id == job_id)) is not None
    if exists:
        return False
    make_storage(settings).delete_prefix(job_prefix(job_id))
    log.info("job %s was deleted while a stage ran: its blobs are removed", job_id)
    return True


def sweep_retention(settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """One pass of the retention policy; returns counts of what it removed."""
    now = now or utcnow()
    storage = make_storage(settings)
    terminal = [s.value for s in TERMINAL_STATUSES]
    counts = {"raw_uploads": 0, "derived": 0}
    if not settings.retention_keep_raw_upload:
        with session_scope() as session:
            ids = list(
                session.scalars(
                    select(Job.id).where(
                        Job.status.in_(terminal),
                        Job.upload_blob.is_not(None),
                        # Evidence of a study that crashed workers: kept with the derived data.
                        or_(
                            Job.error_code.is_(None),
                            Job.error_code != ErrorCode.STAGE_CRASHED.value,
                        ),
                    )
                )
            )
        for job_id in ids:
            storage.delete_prefix(raw_upload_prefix(job_id))
            with session_scope() as session:
                session.execute(update(Job).where(Job.id == job_id).values(upload_blob=None))
            counts["raw_uploads"] += 1
    if settings.retention_derived_days > 0:
        cutoff = now - timedelta(days=settings.retention_derived_days)
        with session_scope() as session:
            ids = list(
                session.scalars(
                    select(Job.id).where(
                        Job.status.in_(terminal), Job.purged_at.is_(None), Job.updated_at < cutoff
                    )
                )
            )
        for job_id in ids:
            storage.delete_prefix(job_prefix(job_id))
            with session_scope() as session:
                _delete_derived_rows(session, job_id)
                job = session.get(Job, job_id)
                if job is None:
                    continue
                job.purged_at, job.upload_blob, job.slices_blob = now, None, None
                job.lesions_blob = None
                detail = {
                    "purged": f"derived data removed {settings.retention_derived_days} "
                    "days after the job ended (retention policy)"
                }
                session.add(JobEvent(job_id=job_id, status=job.status, stage="retention",
                                     detail=detail))  # fmt: skip
            counts["derived"] += 1
    if any(counts.values()):
        log.info("retention sweep removed %s", counts, extra={"counts": counts})
    return counts


def _delete_derived_rows(session: Session, job_id: str) -> None:
    for model in (SliceScore, SliceRecord, Result):
        column: Any = model.job_id
        session.execute(delete(model).where(column == job_id))
