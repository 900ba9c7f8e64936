"""The Celery app and its routing: one queue per stage, webhooks on their own queue.

Reliability settings follow ARCHITECTURE.md: late acks, reject on worker loss, prefetch 1,
so a message is only gone once its task has finished; job state lives in the database.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, signals

from services.common.config import Settings, get_settings

PREPROCESS_TASK = "covidct.preprocess"
INFERENCE_TASK = "covidct.inference"
ENSEMBLE_TASK = "covidct.ensemble"
WEBHOOK_TASK = "covidct.webhook"
QUEUES = ("preprocess", "inference", "ensemble", "webhooks")

TASK_MODULES = [
    "services.preprocess.tasks",
    "services.inference.tasks",
    "services.ensemble.tasks",
    "services.common.webhooks",
]


def broker_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.broker_url or "redis://127.0.0.1:6379/0"


def configure(app: Celery, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    app.conf.update(
        broker_url=broker_url(settings),
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 30, 30),
        task_routes={
            PREPROCESS_TASK: {"queue": "preprocess"},
            INFERENCE_TASK: {"queue": "inference"},
            ENSEMBLE_TASK: {"queue": "ensemble"},
            WEBHOOK_TASK: {"queue": "webhooks"},
        },
        task_default_queue="preprocess",
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


celery_app = Celery("covidct", include=TASK_MODULES)
configure(celery_app)


@signals.setup_logging.connect
def _worker_logging(**_kwargs: Any) -> None:
    from services.common.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@signals.worker_ready.connect
def _requeue_on_start(**_kwargs: Any) -> None:
    from services.common.tasks import requeue_stale_jobs, resend_stranded_webhooks

    requeue_stale_jobs()
    resend_stranded_webhooks()


def start_pipeline(job_id: str) -> None:
    """Queue preprocess -> inference -> ensemble for one job (each task takes the job id)."""
    pipeline = chain(
        celery_app.signature(PREPROCESS_TASK, args=(job_id,), immutable=True),
        celery_app.signature(INFERENCE_TASK, args=(job_id,), immutable=True),
        celery_app.signature(ENSEMBLE_TASK, args=(job_id,), immutable=True),
    )
    pipeline.apply_async()


def send_webhook(delivery_id: str) -> None:
    # A signature (not send_task) so eager mode in tests runs it inline too.
    celery_app.signature(WEBHOOK_TASK, args=(delivery_id,)).apply_async()


def broker_reachable(timeout_s: float = 2.0) -> bool:
    try:
        with celery_app.connection_for_write(url=broker_url()) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception:  # any transport error means "not ready"
        return False
