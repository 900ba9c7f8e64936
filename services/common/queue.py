"""The Celery app every process shares, its queues, and how work is put on them.

This module names no task module: each room declares its tasks on ``celery_app`` and the
worker's composition root (:mod:`services.celery`) includes them. Producers (the gateway,
the stage tasks themselves) send by task name, so they import no other room.

Reliability settings: late acks, reject on worker loss, prefetch 1, so a message is only
gone once its task has finished; job state lives in the database.
"""

from __future__ import annotations

from celery import Celery

from services.common.config import Settings, get_settings

PREPROCESS_TASK = "covidct.preprocess"
INFERENCE_TASK = "covidct.inference"
ENSEMBLE_TASK = "covidct.ensemble"
WEBHOOK_TASK = "covidct.webhook"
# Results sent to a tenant's PACS: the outbound queue the callbacks use.
DESTINATION_TASK = "covidct.destination"

# The one queue list: task -> queue. Workers consume QUEUES unless told otherwise.
TASK_QUEUES = {
    PREPROCESS_TASK: "preprocess",
    INFERENCE_TASK: "inference",
    ENSEMBLE_TASK: "ensemble",
    WEBHOOK_TASK: "webhooks",
    DESTINATION_TASK: "webhooks",
}
QUEUES = tuple(dict.fromkeys(TASK_QUEUES.values()))

# Remote-control command the inference room registers: is this worker's scorer usable?
SCORER_READY_COMMAND = "covidct_scorer_ready"


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "redis://127.0.0.1:6379/0"


def configure(settings: Settings) -> None:
    """Point the shared app at the broker and limits named by ``settings``."""
    celery_app.conf.update(
        broker_url=broker_url(settings),
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 30, 30),
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue=TASK_QUEUES[PREPROCESS_TASK],
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": 5,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )


celery_app = Celery("covidct")
configure(get_settings())


# The task that runs each step of a job (jobs.step).
STEP_TASKS = {"preprocess": PREPROCESS_TASK, "inference": INFERENCE_TASK, "ensemble": ENSEMBLE_TASK}


def dispatch(job_id: str, step: str, attempt: int) -> None:
    """Send one step of one job. ``attempt`` is the job's claim count the message expects:
    the task runs only if its compare-and-set of (step, attempt) wins, so a duplicate
    message is a no-op. Each stage records the next step itself (no chain in the broker)."""
    celery_app.signature(STEP_TASKS[step], args=(job_id, attempt)).apply_async()


def send_webhook(delivery_id: str) -> None:
    # A signature (not send_task) so eager mode in tests runs it inline too.
    celery_app.signature(WEBHOOK_TASK, args=(delivery_id,)).apply_async()


def send_destination_delivery(delivery_id: str) -> None:
    celery_app.signature(DESTINATION_TASK, args=(delivery_id,)).apply_async()


def broker_reachable(timeout_s: float = 2.0) -> bool:
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception:  # any transport error means "not ready"
        return False


def workers_state(broker: str, timeout_s: float = 2.0) -> tuple[set[str], bool]:
    """The queues some live worker consumes and whether some worker's scorer is usable, asked
    over ``broker`` (a Celery ping by remote control; empty when no worker answers).

    For whoever starts a stack (``covidct up``, the test harness) and must not submit before
    a worker exists: the gateway's /readyz no longer asks workers (a TorchServe outage or a
    slow worker must not take every gateway out of its Service)."""
    app = Celery("covidct-probe", broker=broker, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=False, broker_connection_max_retries=1)
    try:
        consumed = app.control.inspect(timeout=timeout_s).active_queues() or {}
        replies = app.control.broadcast(SCORER_READY_COMMAND, reply=True, timeout=timeout_s)
    except Exception:  # broker not there yet: no worker either
        return set(), False
    finally:
        app.close()
    queues = {queue["name"] for per_worker in consumed.values() for queue in per_worker or []}
    answers = [answer for reply in replies or [] for answer in reply.values()]
    return queues, any(isinstance(a, dict) and bool(a.get("ready")) for a in answers)
