"""What every pipeline task does around its work, and the sweeper that keeps jobs moving.

Hand-offs are a transactional outbox: the transaction that moves a job into a status that
waits for a step (``jobs.transition``) records that step (``jobs.step``) due at once. After
the commit the step is published (``publish_due``); a publish that fails (broker down)
leaves it due, and the sweeper (``sweep``: every worker, every ``recovery_interval_s``)
sends every due step of a job no worker holds. Taking a step to publish is a
compare-and-set that pushes its due time ``step_redispatch_s`` ahead, so it is sent once per
window; a worker claims it with a compare-and-set of (step, attempt), so a duplicate message
does nothing. While a stage runs it holds the job's lease (``heartbeat_at``); a lease that
goes stale (the worker died) makes the step due again, at most ``stage_max_attempts`` runs,
then the job fails ``stage_crashed``. Unexpected errors end the job ``internal_error``.
Callbacks are kept the same way: ``webhook_deliveries.next_attempt_at`` is their due time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TypeVar

from celery.exceptions import Retry
from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode
from services.common.jobs import fail
from services.common.orm import DestinationDelivery, Job, JobStatus, WebhookDelivery, utcnow
from services.common.queue import dispatch, send_destination_delivery, send_webhook

log = logging.getLogger(__name__)
T = TypeVar("T")

RUNNING_STATUSES = (JobStatus.PREPROCESSING, JobStatus.SCORING, JobStatus.ENSEMBLING)
# The statuses in which a step may be claimed (preprocess: again after a lost run).
STEP_STATUSES = {
    "preprocess": (JobStatus.QUEUED, JobStatus.PREPROCESSING),
    "inference": (JobStatus.SCORING,),
    "ensemble": (JobStatus.ENSEMBLING,),
}
SWEEP_BATCH = 200  # due steps or callbacks sent per sweep round, oldest first


def fail_job(
    job_id: str, code: ErrorCode, message: str, stage: str, *, keep_raw_upload: bool = False
) -> str:
    """End the job as failed (unless it already ended) and send its callback; "failed"."""
    with session_scope() as session:
        moved = fail(session, job_id, code, message, stage, keep_raw_upload=keep_raw_upload)
    if moved:  # only the transaction that ended the job sends the callback
        send_pending_webhooks(job_id)
    return "failed"


# A dropped database connection (server restart, failover, a killed backend) is retried,
# not turned into a failed job: the stage is idempotent and the pool reconnects.
DB_RETRIES = 3


def _with_db_retries(job_id: str, stage: str, work: Callable[[], T]) -> T:
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


def claim_step(job_id: str, step: str, attempt: int | None) -> int | None:
    """Take the job's ``step`` for this worker: a compare-and-set of (step, attempt) that
    counts the run and takes the lease. The claimed run's number, or None (someone else
    has it, the job moved on, or it ended). ``attempt`` None: a message sent before the
    outbox existed; it claims whatever run is next if no worker holds the job."""
    statuses = [s.value for s in STEP_STATUSES[step]]
    with session_scope() as session:
        if attempt is None:
            attempt = session.scalar(select(Job.step_attempt).where(Job.id == job_id))
            if attempt is None:
                return None
        won = session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.step == step, Job.step_attempt == attempt,
                Job.status.in_(statuses), Job.heartbeat_at.is_(None),
            )
            .values(step_attempt=attempt + 1, heartbeat_at=utcnow(), step_due_at=None)
        )  # fmt: skip
    return attempt + 1 if won.rowcount == 1 else None  # type: ignore[attr-defined]


def release_step(job_id: str, step: str, run: int, delay_s: float) -> bool:
    """Give the claimed step back to be run again in ``delay_s`` (the sweeper sends it):
    how a stage retries later (scorer unavailable) without a broker countdown."""
    with session_scope() as session:
        moved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.step == step, Job.step_attempt == run)
            .values(heartbeat_at=None, step_due_at=utcnow() + timedelta(seconds=delay_s))
        )
    return moved.rowcount == 1  # type: ignore[attr-defined]


def run_guarded(job_id: str, stage: str, work: Callable[[int], str], attempt: int | None) -> str:
    """Claim the stage's step, run ``work(run)`` under the lease, then publish the step the
    stage recorded (after its commit). A duplicate or stale message returns "skipped"."""
    try:
        run = _with_db_retries(job_id, stage, lambda: claim_step(job_id, stage, attempt))
    except (OperationalError, InterfaceError):  # its due time makes the sweeper send it again
        log.warning("%s of job %s could not be claimed", stage, job_id, exc_info=True)
        raise
    if run is None:
        log.info("%s of job %s: not this message's to run (claimed, moved on or ended)",
                 stage, job_id, extra={"job_id": job_id})  # fmt: skip
        return "skipped"
    try:
        with job_lease(job_id, get_settings().job_heartbeat_s, (stage, run)):
            outcome = _with_db_retries(job_id, stage, lambda: work(run))
    except Retry:
        raise
    except Exception as exc:
        log.exception("%s failed for job %s", stage, job_id, extra={"job_id": job_id})
        return fail_job(job_id, ErrorCode.INTERNAL_ERROR, f"{stage}: {type(exc).__name__}", stage)
    enqueue(job_id)  # the next step, recorded by the stage's own transaction
    return outcome


def _set_heartbeat(job_id: str, value: datetime | None, token: tuple[str, int] | None) -> None:
    with session_scope() as session:
        query = update(Job).where(Job.id == job_id)
        if token is not None:  # only the run that holds the lease touches it
            query = query.where(Job.step == token[0], Job.step_attempt == token[1])
        session.execute(query.values(heartbeat_at=value))


@contextmanager
def job_lease(
    job_id: str, interval_s: float, token: tuple[str, int] | None = None
) -> Iterator[None]:
    """Hold the job's lease while a stage runs: renewed every ``interval_s`` by a thread,
    cleared when the stage returns. ``token`` (step, run): the lease belongs to that run,
    so a late renewal never lands on the next step. If the process dies the lease goes
    stale and ``requeue_expired_leases`` (any live worker) makes the step due again."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(interval_s):
            try:
                _set_heartbeat(job_id, utcnow(), token)
            except Exception:  # the database is away for a moment: the next beat retries
                log.warning("could not renew the lease of job %s", job_id, exc_info=True)

    try:
        _set_heartbeat(job_id, utcnow(), token)
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
            _set_heartbeat(job_id, None, token)
        except Exception:  # left set: it goes stale and the step is sent again (capped)
            log.warning("could not clear the lease of job %s", job_id, exc_info=True)


def publish_due(job_id: str) -> bool:
    """Send the job's step if it is due and no worker holds the job. The compare-and-set
    pushes the due time ``step_redispatch_s`` ahead first, so one caller sends it per window
    (the post-commit publisher and every sweeper may race); if the broker refuses, the due
    time goes back so the next sweep retries. True when a message was sent."""
    now = utcnow()
    window = timedelta(seconds=get_settings().step_redispatch_s)
    with session_scope() as session:
        row = session.execute(
            select(Job.step, Job.step_attempt).where(
                Job.id == job_id, Job.step.is_not(None), Job.step_due_at <= now,
                Job.heartbeat_at.is_(None),
            )
        ).first()  # fmt: skip
        if row is None:
            return False
        step, attempt = str(row[0]), int(row[1])
        taken = session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.step == step, Job.step_attempt == attempt,
                Job.step_due_at <= now, Job.heartbeat_at.is_(None),  # still due: not taken
            )
            .values(step_due_at=now + window)
        )  # fmt: skip
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return False  # another publisher took it
    try:
        dispatch(job_id, step, attempt)
    except Exception:
        log.warning("could not send %s of job %s (broker down?); the sweep retries",
                    step, job_id, exc_info=True, extra={"job_id": job_id})  # fmt: skip
        with session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.step == step, Job.step_attempt == attempt,
                       Job.step_due_at == now + window)
                .values(step_due_at=now)
            )  # fmt: skip
        raise
    return True


def enqueue(job_id: str) -> None:
    """After the commit that queued a job: send its first step (a refused publish is left
    to the sweeper, which finds the step due)."""
    with contextlib.suppress(Exception):  # logged by publish_due; the step stays due
        publish_due(job_id)


def dispatch_due_steps(limit: int = SWEEP_BATCH) -> list[str]:
    """Send every due step of a job no worker holds (the outbox's relay); the job ids sent.
    Stops at the first refused publish: the broker is down, the next sweep retries."""
    with session_scope() as session:
        due = list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.step.is_not(None), Job.step_due_at <= utcnow(),
                    Job.heartbeat_at.is_(None),
                )
                .order_by(Job.step_due_at)
                .limit(limit)
            )
        )  # fmt: skip
    sent = []
    for job_id in due:
        try:
            if publish_due(job_id):
                sent.append(job_id)
        except Exception:
            break
    return sent


def requeue_expired_leases(lease_s: float, max_attempts: int | None = None) -> list[str]:
    """Make due again the step of every job whose stage stopped renewing its lease (its
    worker died), and send it; after ``max_attempts`` lost runs of one stage, fail the job
    ``stage_crashed`` instead, keeping its raw upload and events as evidence. Only the
    caller whose compare-and-set takes the stale lease acts, so concurrent sweepers act
    once. Jobs waiting for a worker hold no lease: never touched here."""
    cap = max_attempts if max_attempts is not None else get_settings().stage_max_attempts
    cutoff = utcnow() - timedelta(seconds=lease_s)
    with session_scope() as session:
        stale = session.execute(
            select(Job.id, Job.step, Job.step_attempt, Job.step_crashes).where(
                Job.step.is_not(None), Job.heartbeat_at.is_not(None), Job.heartbeat_at < cutoff
            )
        ).all()
    requeued = []
    for job_id, step, attempt, crashes in stale:
        crashed_out, moved = crashes + 1 >= cap, False
        with session_scope() as session:
            won = session.execute(
                update(Job)
                .where(
                    Job.id == job_id, Job.step == step, Job.step_attempt == attempt,
                    Job.heartbeat_at < cutoff,
                )
                .values(heartbeat_at=None, step_crashes=crashes + 1, step_due_at=utcnow())
            )  # fmt: skip
            if won.rowcount != 1:  # type: ignore[attr-defined]
                continue
            if crashed_out:
                moved = fail(
                    session, job_id, ErrorCode.STAGE_CRASHED,
                    f"the {step} stage lost its worker {crashes + 1} times; the study is kept "
                    "for investigation", step, keep_raw_upload=True,
                )  # fmt: skip
        if crashed_out:
            log.error("job %s: %s lost its worker %d times; failed stage_crashed",
                      job_id, step, crashes + 1, extra={"job_id": job_id})  # fmt: skip
            if moved:
                send_pending_webhooks(job_id)
            continue
        log.warning("job %s: its %s stage stopped renewing its lease (run %d); sent again",
                    job_id, step, attempt, extra={"job_id": job_id})  # fmt: skip
        requeued.append(job_id)
        enqueue(job_id)
    return requeued


# ---- callbacks ---------------------------------------------------------------------------


Outbox = type[WebhookDelivery] | type[DestinationDelivery]


def _publish_due(model: Outbox, delivery_id: str, send: Callable[[str], None]) -> bool:
    """Send one delivery if it is due; the same once-per-window compare-and-set as steps."""
    now = utcnow()
    window = timedelta(seconds=get_settings().step_redispatch_s)
    with session_scope() as session:
        taken = session.execute(
            update(model)
            .where(
                model.id == delivery_id,
                model.status == "pending",
                model.next_attempt_at <= now,  # still due: not taken by another
            )
            .values(next_attempt_at=now + window)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return False
    try:
        send(delivery_id)
    except Exception:
        log.warning("could not send delivery %s; the sweep retries", delivery_id, exc_info=True)
        with session_scope() as session:
            session.execute(
                update(model)
                .where(model.id == delivery_id, model.next_attempt_at == now + window)
                .values(next_attempt_at=now)
            )
        raise
    return True


def publish_due_webhook(delivery_id: str) -> bool:
    """Send one callback if it is due."""
    return _publish_due(WebhookDelivery, delivery_id, send_webhook)


def publish_due_destination(delivery_id: str) -> bool:
    """Send one job's results to one destination if due."""
    return _publish_due(DestinationDelivery, delivery_id, send_destination_delivery)


def _send_pending(model: Outbox, job_id: str, publish: Callable[[str], bool]) -> None:
    """After the commit that recorded a job's deliveries: send them (or leave them to the
    sweep)."""
    with session_scope() as session:
        deliveries = list(
            session.scalars(
                select(model.id).where(model.job_id == job_id, model.status == "pending")
            )
        )
    for delivery_id in deliveries:
        with contextlib.suppress(Exception):  # logged; it stays due
            publish(delivery_id)


def _dispatch_due(model: Outbox, publish: Callable[[str], bool], limit: int) -> list[str]:
    """Send every pending delivery whose (next) attempt is due, oldest first; stop at the
    first publish that fails (the broker is down: the next sweep tries again)."""
    with session_scope() as session:
        due = list(
            session.scalars(
                select(model.id)
                .where(model.status == "pending", model.next_attempt_at <= utcnow())
                .order_by(model.next_attempt_at)
                .limit(limit)
            )
        )
    sent = []
    for delivery_id in due:
        try:
            if publish(delivery_id):
                sent.append(delivery_id)
        except Exception:
            break
    return sent


def send_pending_destinations(job_id: str) -> None:
    """After the commit that recorded a job's result deliveries: send them."""
    _send_pending(DestinationDelivery, job_id, publish_due_destination)


def dispatch_due_destinations(limit: int = SWEEP_BATCH) -> list[str]:
    """Send every pending result delivery whose (next) attempt is due (as callbacks)."""
    return _dispatch_due(DestinationDelivery, publish_due_destination, limit)


def send_pending_webhooks(job_id: str) -> None:
    """After the commit that recorded a job's callback: send it (or leave it to the sweep)."""
    _send_pending(WebhookDelivery, job_id, publish_due_webhook)


def dispatch_due_webhooks(limit: int = SWEEP_BATCH) -> list[str]:
    """Send every pending callback whose (next) attempt is due: first attempts whose
    publish failed, and retries, which wait here and not in the broker, so a retry is not
    held until the visibility timeout when the worker that scheduled it dies."""
    return _dispatch_due(WebhookDelivery, publish_due_webhook, limit)


def sweep() -> dict[str, list[str]]:
    """One round of the recovery sweeper (every worker, every ``recovery_interval_s``)."""
    settings = get_settings()
    return {
        "requeued": requeue_expired_leases(settings.job_lease_s, settings.stage_max_attempts),
        "steps": dispatch_due_steps(),
        "webhooks": dispatch_due_webhooks(),
        "destinations": dispatch_due_destinations(),
    }
