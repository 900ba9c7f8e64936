"""The worker's composition root (``celery -A services.celery worker``).

It names the task module of every room, so a worker process serves any queue it is told
to consume; the rooms themselves only know :mod:`services.common.queue`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

from services.common.config import ensure_directories, get_settings
from services.common.queue import celery_app

TASK_MODULES = [
    "services.preprocess.tasks",
    "services.inference.tasks",
    "services.ensemble.tasks",
    "services.webhooks.delivery",
]

celery_app.conf.include = TASK_MODULES
app = celery_app
log = logging.getLogger(__name__)


@signals.setup_logging.connect
def _worker_logging(**_kwargs: Any) -> None:
    from services.common.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@signals.worker_init.connect
def _directories(**_kwargs: Any) -> None:
    ensure_directories(get_settings())


@signals.worker_ready.connect
def _requeue_on_start(**_kwargs: Any) -> None:
    from services.common.queue import active_job_ids
    from services.common.tasks import (
        requeue_orphaned_jobs,
        requeue_stale_jobs,
        resend_stranded_webhooks,
    )

    requeue_stale_jobs()
    active = active_job_ids()
    if active is not None:
        requeue_orphaned_jobs(active, older_than_s=0)  # a fresh node: none of them is its own
    resend_stranded_webhooks()
    threading.Thread(target=_recover_forever, name="lease-sweeper", daemon=True).start()


def _recover_forever() -> None:
    """While this worker lives: queue again the jobs whose stage lost its worker (a stale
    lease), so recovery takes about job_lease_s, not the broker's visibility timeout."""
    from services.common.tasks import requeue_expired_leases, resend_stranded_webhooks

    settings = get_settings()
    while True:
        time.sleep(settings.recovery_interval_s)
        try:
            requeue_expired_leases(settings.job_lease_s)
            # Callbacks recorded but never attempted (the broker was down when their job
            # ended); receivers deduplicate on webhook-id should one still be queued.
            resend_stranded_webhooks(older_than_s=max(120.0, 2 * settings.job_lease_s))
        except Exception:  # the database or broker is away: the next round retries
            log.warning("lease sweep failed", exc_info=True)
