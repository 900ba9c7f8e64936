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
    "services.webhooks.destinations",
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


SWEEPER_ROUNDS: int | None = None  # None: for ever (tests bound it)


@signals.worker_ready.connect
def _start_sweeper(**_kwargs: Any) -> threading.Thread:
    """Start the recovery sweeper, whatever the database or broker say right now (each
    round catches its own errors). Nothing is re-sent just because a worker started: jobs
    waiting in the broker hold no lease and their step is not due, so they stay as they are."""
    sweeper = threading.Thread(
        target=_recover_forever, args=(SWEEPER_ROUNDS,), name="lease-sweeper", daemon=True
    )
    sweeper.start()
    return sweeper


def _recover_forever(rounds: int | None = None) -> None:
    """While this worker lives, every ``recovery_interval_s``: make due again the steps whose
    worker died (a stale lease), send every due step and callback (the outbox's relay), so
    a job moves on within about a sweep of the broker coming back, and a lost worker costs
    about ``job_lease_s``, not the broker's visibility timeout. ``rounds``: tests stop it."""
    from services.common.tasks import sweep

    settings = get_settings()
    done = 0
    while rounds is None or done < rounds:
        try:
            sweep()
        except Exception:  # the database or broker is away: the next round retries
            log.warning("recovery sweep failed; retrying in %.0f s", settings.recovery_interval_s,
                        exc_info=True)  # fmt: skip
        done += 1
        if rounds is None or done < rounds:
            time.sleep(settings.recovery_interval_s)
