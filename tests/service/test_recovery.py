"""Hand-offs that survive a broker outage and crash recovery that neither duplicates nor
loops (issue 18, items 1-4): the transactional outbox, claims by compare-and-set of
(step, attempt), leases, the attempt cap, and a sweeper that starts whatever the database
says."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError as BrokerDown
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

import services.celery as worker
import services.common.tasks as tasks
import services.ensemble.tasks
import services.inference.tasks
import services.preprocess.tasks  # noqa: F401
from services.common.config import Settings
from services.common.db import session_scope
from services.common.jobs import transition
from services.common.orm import Job, JobEvent, JobStatus, WebhookDelivery, utcnow
from services.common.retention import sweep_retention
from services.common.storage import make_storage
from services.common.tasks import (
    claim_step,
    job_lease,
    requeue_expired_leases,
    run_guarded,
)
from tests.support.service import make_tenant, upload_study


def _job(status: JobStatus, **fields: Any) -> str:
    """A job moved into ``status`` the way a stage does it (so its step is recorded)."""
    tenant = make_tenant(f"t-{time.time_ns()}")
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status=JobStatus.AWAITING_UPLOAD.value)
        session.add(job)
        session.flush()
        assert transition(session, job.id, status, [JobStatus.AWAITING_UPLOAD])
        for name, value in fields.items():
            setattr(job, name, value)
        return job.id


def _row(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _set(job_id: str, **fields: Any) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for name, value in fields.items():
            setattr(job, name, value)


@pytest.fixture
def sent(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str, int]]:
    """Messages the service publishes (job id, step, attempt); no broker."""
    isolated_settings()
    messages: list[tuple[str, str, int]] = []
    monkeypatch.setattr(tasks, "dispatch", lambda *message: messages.append(message))
    monkeypatch.setattr(tasks, "send_webhook", lambda _id: None)
    return messages


# ---- 1. the outbox ------------------------------------------------------------------------


@pytest.fixture
def eager(isolated_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    from services.asgi import create_app
    from services.common.queue import celery_app

    isolated_settings(broker_url="memory://")
    celery_app.conf.task_always_eager = True
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        celery_app.conf.task_always_eager = False


def test_a_job_whose_next_step_could_not_be_published_is_sent_by_the_sweep(
    eager: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down at the moment preprocess ends: the job waits in `scoring` with its step
    recorded (same transaction as the status), and the first sweep after the broker is back
    takes it to `succeeded`, each stage run once."""
    real_dispatch = tasks.dispatch
    broker_up = {"value": True}
    refused: list[str] = []

    def broker(job_id: str, step: str, attempt: int) -> None:
        if step == "inference" and not broker_up["value"]:
            refused.append(job_id)
            raise BrokerDown("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        real_dispatch(job_id, step, attempt)

    monkeypatch.setattr(tasks, "dispatch", broker)
    broker_up["value"] = False
    study = Path(str(get_testdata_file("CT_small.dcm", download=False))).read_bytes()
    job_id = upload_study(eager, make_tenant("outbox"), study)

    stranded = _row(job_id)
    assert refused == [job_id]
    assert stranded.status == JobStatus.SCORING
    assert (stranded.step, stranded.step_attempt, stranded.heartbeat_at) == ("inference", 0, None)
    assert stranded.step_due_at is not None and stranded.step_due_at <= utcnow()

    assert tasks.sweep()["steps"] == []  # still down: refused again, left due
    assert refused == [job_id, job_id] and _row(job_id).status == JobStatus.SCORING
    broker_up["value"] = True
    assert tasks.sweep()["steps"] == [job_id]  # back: sent, and the job runs to its end
    done = _row(job_id)
    assert done.status == JobStatus.SUCCEEDED
    assert (done.step, done.step_due_at, done.heartbeat_at) == (None, None, None)
    assert tasks.sweep() == {"requeued": [], "steps": [], "webhooks": [], "destinations": []}
    with session_scope() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        ran = [(e.status, (e.detail or {}).get("attempt")) for e in events]
    assert ran[2:] == [("preprocessing", 1), ("scoring", 1), ("ensembling", 1), ("succeeded", 1)]


def test_the_sweep_sends_every_due_unleased_step_once_per_window(
    sent: list[tuple[str, str, int]],
) -> None:
    due = _job(JobStatus.SCORING)  # its publish never happened
    leased = _job(JobStatus.ENSEMBLING, heartbeat_at=utcnow())  # a worker holds it
    waiting = _job(JobStatus.QUEUED, step_due_at=utcnow() + timedelta(minutes=4))  # in a queue
    ended = _job(JobStatus.SUCCEEDED)
    assert _row(ended).step is None
    assert tasks.dispatch_due_steps() == [due]
    assert tasks.dispatch_due_steps() == []  # taken for step_redispatch_s: not sent twice
    assert sent == [(due, "inference", 0)]
    assert _row(due).step_due_at > utcnow() + timedelta(seconds=200)  # type: ignore[operator]
    # A message lost with the broker: once its window passes, the step is sent again.
    _set(due, step_due_at=utcnow() - timedelta(seconds=1))
    assert tasks.dispatch_due_steps() == [due]
    assert {j for j, _s, _a in sent} == {due} and leased and waiting


# ---- 2. claims, and nothing re-sent because a worker starts ----------------------------


def test_a_worker_that_starts_sends_nothing_for_jobs_waiting_in_the_queue(
    sent: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = [_job(JobStatus.SCORING) for _ in range(4)]
    for job_id in waiting:
        assert tasks.publish_due(job_id)  # after each commit: one message each
    assert len(sent) == 4
    monkeypatch.setattr(worker, "SWEEPER_ROUNDS", 1)
    worker._start_sweeper().join(timeout=30)  # what worker_ready does
    assert len(sent) == 4  # no extra message
    assert {_row(j).step_attempt for j in waiting} == {0}


def test_a_duplicate_message_for_a_claimed_step_does_nothing(
    sent: list[tuple[str, str, int]],
) -> None:
    job_id = _job(JobStatus.SCORING)
    assert tasks.publish_due(job_id)
    (message,) = sent
    runs: list[int] = []

    def work(run: int) -> str:
        runs.append(run)
        return "done"

    assert run_guarded(job_id, "inference", work, 0) == "done"
    assert run_guarded(job_id, "inference", work, 0) == "skipped"
    assert runs == [1]  # the duplicate did no work
    assert claim_step(job_id, "preprocess", 1) is None  # another stage's message: no-op
    assert message == (job_id, "inference", 0)


def test_a_running_stage_renews_its_lease_and_clears_it(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings()
    job_id = _job(JobStatus.SCORING)
    assert claim_step(job_id, "inference", 0) == 1
    seen = []
    with job_lease(job_id, 0.05, ("inference", 1)):
        for _ in range(3):
            seen.append(_row(job_id).heartbeat_at)
            time.sleep(0.2)
    assert all(beat is not None for beat in seen)
    assert len(set(seen)) > 1  # renewed while the work ran
    assert _row(job_id).heartbeat_at is None  # cleared when it returned
    # A lease belongs to its run: a late renewal of run 1 never touches run 2's lease.
    assert claim_step(job_id, "inference", 1) == 2
    with job_lease(job_id, 60, ("inference", 1)):
        pass
    assert _row(job_id).heartbeat_at is not None


def test_an_unexpected_error_fails_the_job_and_clears_the_lease(
    sent: list[tuple[str, str, int]],
) -> None:
    job_id = _job(JobStatus.SCORING)
    assert run_guarded(job_id, "inference", lambda _run: str(1 / 0), None) == "failed"
    job = _row(job_id)
    assert (job.status, job.error_code, job.heartbeat_at, job.step) == (
        "failed", "internal_error", None, None,
    )  # fmt: skip


def test_a_dropped_database_connection_is_retried_not_a_failed_job(
    sent: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.time, "sleep", lambda _s: None)
    job_id = _job(JobStatus.SCORING)
    calls = []

    def flaky(_run: int) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert run_guarded(job_id, "inference", flaky, 0) == "done"
    assert len(calls) == 3
    assert _row(job_id).status == JobStatus.SCORING  # not failed


def test_only_stale_leases_are_requeued_and_only_once(sent: list[tuple[str, str, int]]) -> None:
    lost = _job(JobStatus.SCORING)
    alive = _job(JobStatus.PREPROCESSING)
    for job_id, step in ((lost, "inference"), (alive, "preprocess")):
        _set(job_id, step=step)
        assert claim_step(job_id, step, 0) == 1
    _set(lost, heartbeat_at=utcnow() - timedelta(seconds=120))  # its worker died mid-stage
    waiting = _job(JobStatus.ENSEMBLING, step_due_at=utcnow() + timedelta(minutes=4))
    assert requeue_expired_leases(lease_s=60, max_attempts=3) == [lost]
    assert requeue_expired_leases(lease_s=60, max_attempts=3) == []  # taken: no second copy
    assert sent == [(lost, "inference", 1)]  # the next run; the lost run's message is stale
    assert claim_step(lost, "inference", 0) is None  # the dead run's redelivered message
    assert (_row(lost).step_crashes, _row(alive).heartbeat_at is not None) == (1, True)
    assert _row(waiting).step_attempt == 0


# ---- 3. the sweeper starts while the database is away -------------------------------------


def test_a_worker_started_while_the_database_is_unreachable_still_sweeps(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_settings(recovery_interval_s=0.01)
    sent: list[tuple[str, str, int]] = []
    monkeypatch.setattr(tasks, "dispatch", lambda *message: sent.append(message))
    job_id = _job(JobStatus.QUEUED)
    real_sweep = tasks.sweep
    rounds: list[str] = []

    def database_away_at_first() -> dict[str, list[str]]:
        if len(rounds) < 2:
            rounds.append("unreachable")
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        rounds.append("swept")
        return real_sweep()

    monkeypatch.setattr(tasks, "sweep", database_away_at_first)
    monkeypatch.setattr(worker, "SWEEPER_ROUNDS", 3)
    sweeper = worker._start_sweeper()  # worker_ready: no database call before the thread
    sweeper.join(timeout=30)
    assert rounds == ["unreachable", "unreachable", "swept"]
    assert sent == [(job_id, "preprocess", 0)]


# ---- 4. the attempt cap -------------------------------------------------------------------


def test_a_study_that_kills_its_worker_fails_stage_crashed_with_its_evidence(
    sent: list[tuple[str, str, int]],
) -> None:
    settings = isolated_settings_of_test()
    job_id = _job(JobStatus.QUEUED, callback_url="http://127.0.0.1:9/hook")
    blob = f"jobs/{job_id}/upload/study.dcm"
    make_storage(settings).put_bytes(blob, b"DICM evidence")
    _set(job_id, upload_blob=blob)
    for run in (1, 2, 3):
        assert claim_step(job_id, "preprocess", run - 1) == run  # the worker starts it...
        _set(job_id, heartbeat_at=utcnow() - timedelta(seconds=120))  # ...and dies
        requeued = requeue_expired_leases(lease_s=60, max_attempts=3)
        assert requeued == ([job_id] if run < 3 else [])
    assert [m[2] for m in sent] == [1, 2]  # started at most 3 times in all
    job = _row(job_id)
    assert (job.status, job.error_code, job.step) == ("failed", "stage_crashed", None)
    assert claim_step(job_id, "preprocess", 3) is None  # nothing runs it again
    assert make_storage(settings).exists(blob)  # the study is kept as evidence...
    assert sweep_retention(settings)["raw_uploads"] == 0  # ...also by the retention sweep
    with session_scope() as session:
        statuses = session.scalars(select(JobEvent.status).where(JobEvent.job_id == job_id))
        assert list(statuses)[-1] == "failed"
        delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        assert delivery is not None and delivery.event_type == "job.failed"


def isolated_settings_of_test() -> Settings:
    from services.common.config import get_settings

    return get_settings()


def test_jobs_in_flight_at_the_upgrade_get_their_step_and_are_sent_once(
    sent: list[tuple[str, str, int]],
) -> None:
    """Migration 0004: a job left `scoring` by the previous version (no step recorded) is
    due at once after the upgrade; the sweep sends it once."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from services.common.config import REPO_ROOT, get_settings
    from services.common.db import make_engine

    url = get_settings().sqlalchemy_url
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    tenant = make_tenant("legacy")
    command.downgrade(config, "0003")
    engine = make_engine(url)
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, status, created_at, updated_at) "
                "VALUES ('legacy-job', :tenant, 'scoring', '2026-12-01 10:00:00.000000', "
                "'2026-12-01 10:00:00.000000')"
            ),
            {"tenant": tenant["id"]},
        )
    engine.dispose()
    command.upgrade(config, "head")
    job = _row("legacy-job")
    assert (job.step, job.step_attempt, job.heartbeat_at) == ("inference", 0, None)
    assert tasks.dispatch_due_steps() == ["legacy-job"]
    assert tasks.dispatch_due_steps() == []
    assert sent == [("legacy-job", "inference", 0)]


def test_an_unavailable_scorer_puts_the_step_back_due_later_then_fails(
    sent: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker countdown: the run gives its step back with a due time (the sweeper sends
    it), SCORER_RETRIES times, then the job fails `scorer_unavailable`."""
    import io

    import numpy as np

    from services.common.config import get_settings
    from services.inference import tasks as inference_tasks
    from services.inference.scorer import ScorerUnavailable

    blob = "jobs/scorer-down/slices.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((0, 8, 8), np.uint8))
    make_storage(get_settings()).put_bytes(blob, buffer.getvalue())
    job_id = _job(JobStatus.SCORING, slices_blob=blob)

    def scorer_down() -> None:
        raise ScorerUnavailable("cannot reach TorchServe")

    monkeypatch.setattr(inference_tasks, "loaded_scorer", scorer_down)
    assert inference_tasks.score_job.apply(args=(job_id, 0)).get() == "retry"
    job = _row(job_id)
    assert (job.status, job.heartbeat_at, job.step_attempt) == ("scoring", None, 1)
    assert job.step_due_at is not None and job.step_due_at > utcnow()  # backoff, not now
    assert tasks.dispatch_due_steps() == []
    _set(job_id, step_due_at=utcnow())  # its backoff passed
    assert tasks.dispatch_due_steps() == [job_id]
    assert sent == [(job_id, "inference", 1)]
    for run in range(2, inference_tasks.SCORER_RETRIES + 1):
        assert inference_tasks.score_job.apply(args=(job_id, run - 1)).get() == "retry"
    last = inference_tasks.SCORER_RETRIES
    assert inference_tasks.score_job.apply(args=(job_id, last)).get() == "failed"
    assert _row(job_id).error_code == "scorer_unavailable"
