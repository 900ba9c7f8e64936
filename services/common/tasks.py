"""What every pipeline task does around its work: unexpected errors end the job as
``failed``/``internal_error`` (never a job stuck in a running state), and callbacks queued
in a finished transaction are sent once it has committed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from celery.exceptions import Retry
from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode
from services.common.jobs import fail, pending_deliveries
from services.common.orm import Job, JobStatus, utcnow
from services.common.queue import send_webhook, start_pipeline

log = logging.getLogger(__name__)

RUNNING_STATUSES = (JobStatus.PREPROCESSING, JobStatus.SCORING, JobStatus.ENSEMBLING)


def fail_job(job_id: str, code: ErrorCode, message: str, stage: str) -> str:
    """End the job as failed (unless it already ended) and send its callback; "failed"."""
    with session_scope() as session:
        moved = fail(session, job_id, code, message, stage)
    if moved:  # only the transaction that ended the job queues the callback
        send_pending_webhooks(job_id)
    return "failed"


def send_pending_webhooks(job_id: str) -> None:
    with session_scope() as session:
        deliveries = pending_deliveries(session, job_id)
    for delivery_id in deliveries:
        send_webhook(delivery_id)


# A dropped database connection (server restart, failover, a killed backend) is retried,
# not turned into a failed job: the stage is idempotent and the pool reconnects.
DB_RETRIES = 3


def _with_db_retries(job_id: str, stage: str, work: Callable[[], str]) -> str:
    for attempt in range(DB_RETRIES + 1):
        try:
            return work()
        except (OperationalError, InterfaceError) as exc:
            if attempt == DB_RETRIES:
                raise
            log.warning(
                "%s of job %s lost its database connection (%s); retrying",
                stage, job_id, type(exc).__name__, extra={"job_id": job_id},
            )  # fmt: skip
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def run_guarded(job_id: str, stage: str, work: Callable[[], str]) -> str:
    try:
        with job_lease(job_id, get_settings().job_heartbeat_s):
            return _with_db_retries(job_id, stage, work)
    except Retry:
        raise
    except Exception as exc:
        log.exception("%s failed for job %s", stage, job_id, extra={"job_id": job_id})
        return fail_job(job_id, ErrorCode.INTERNAL_ERROR, f"{stage}: {type(exc).__name__}", stage)


def _set_heartbeat(job_id: str, value: datetime | None) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=value))


@contextmanager
def job_lease(job_id: str, interval_s: float) -> Iterator[None]:
    """Hold the job's lease while a stage runs: renewed every ``interval_s`` by a thread,
    cleared when the stage returns. If the process dies the lease goes stale and
    ``requeue_expired_leases`` (any live worker) queues the job again."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(interval_s):
            try:
                _set_heartbeat(job_id, utcnow())
            except Exception:  # the database is away for a moment: the next beat retries
                log.warning("could not renew the lease of job %s", job_id, exc_info=True)

    try:
        _set_heartbeat(job_id, utcnow())
    except Exception:  # the stage itself retries a dropped connection
        log.warning("could not take the lease of job %s", job_id, exc_info=True)
    beater = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join(timeout=interval_s + 5)
        try:
            _set_heartbeat(job_id, None)
        except Exception:  # left set: the sweep finds the job ended or re-runs it harmlessly
            log.warning("could not clear the lease of job %s", job_id, exc_info=True)


def requeue_expired_leases(lease_s: float) -> list[str]:
    """Queue again the running-state jobs whose stage stopped renewing its lease (its worker
    was killed), and queued jobs whose pipeline could not be sent (``UNSENT``). Only the
    caller whose compare-and-set takes a stale lease queues a job, so several workers
    sweeping at once queue it once. Jobs waiting in the broker hold no lease: never resent."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    running = [s.value for s in (JobStatus.QUEUED, *RUNNING_STATUSES)]
    with session_scope() as session:
        stale = list(
            session.scalars(
                select(Job.id).where(
                    Job.status.in_(running), Job.heartbeat_at.is_not(None),
                    Job.heartbeat_at < cutoff,
                )
            )
        )  # fmt: skip
    requeued = []
    for job_id in stale:
        with session_scope() as session:
            won = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.heartbeat_at < cutoff, Job.status.in_(running))
                .values(heartbeat_at=None)
            )
        if won.rowcount == 1:  # type: ignore[attr-defined]
            log.warning("job %s: its stage stopped renewing its lease; queued again", job_id)
            enqueue(job_id)
            requeued.append(job_id)
    return requeued


# A lease that expired long ago: marks a job whose pipeline could not be sent.
UNSENT = datetime(1970, 1, 1, tzinfo=UTC)


def enqueue(job_id: str) -> None:
    try:
        start_pipeline(job_id)
    except Exception:  # broker down: mark the job so the next lease sweep sends it again
        log.exception("could not queue job %s; the lease sweep will retry", job_id)
        try:
            _set_heartbeat(job_id, UNSENT)
        except Exception:  # the database too: the start-up requeue still finds it queued
            log.warning("could not mark job %s unsent", job_id, exc_info=True)


def requeue_stale_jobs(older_than_s: float = 60.0) -> list[str]:
    """Queue again every job left ``queued`` (broker was down, or a crash before sending).

    Run when a worker starts; safe any time because the tasks are idempotent.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_scope() as session:
        stale = list(
            session.scalars(
                select(Job.id).where(Job.status == JobStatus.QUEUED, Job.updated_at < cutoff)
            )
        )
    for job_id in stale:
        enqueue(job_id)
    return stale


def requeue_orphaned_jobs(active_job_ids: set[str], older_than_s: float = 10.0) -> list[str]:
    """Queue the pipeline again for jobs left in a running state by a worker that died.

    Run when a worker starts, with the job ids that live workers report running
    (``active_job_ids``): any other job in a running state lost its worker (killed with
    its pool, or its message is held unacked by a dead node until the broker's visibility
    timeout). Re-sending the whole chain is safe: each task checks the job's status and
    skips stages already done, so the job resumes at the stage it was in.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_scope() as session:
        running = list(
            session.scalars(
                select(Job.id).where(
                    Job.status.in_([s.value for s in RUNNING_STATUSES]), Job.updated_at < cutoff
                )
            )
        )
    orphaned = [job_id for job_id in running if job_id not in active_job_ids]
    for job_id in orphaned:
        log.warning("job %s was left running by a lost worker; queued again", job_id)
        enqueue(job_id)
    return orphaned


def resend_stranded_webhooks(older_than_s: float = 60.0) -> list[str]:
    """Queue callbacks recorded but never attempted (a crash between commit and sending).

    Run when a worker starts. Receivers deduplicate on ``webhook-id`` should one also be
    sitting in the queue, and the task itself skips a delivery that already went out.
    """
    from services.common.orm import WebhookDelivery

    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_scope() as session:
        stranded = list(
            session.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.attempts == 0,
                    WebhookDelivery.created_at < cutoff,
                )
            )
        )
    for delivery_id in stranded:
        try:
            send_webhook(delivery_id)
        except Exception:
            log.exception("could not queue webhook %s", delivery_id)
    return stranded
