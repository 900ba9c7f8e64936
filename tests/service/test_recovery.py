"""Job leases: a running stage renews its job's lease and clears it when it returns; the
sweep queues again only the jobs whose lease went stale (their worker died), once."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest

import services.common.tasks as tasks
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job, JobStatus, utcnow
from services.common.tasks import job_lease, requeue_expired_leases, run_guarded
from tests.support.service import make_tenant


def _job(status: JobStatus, heartbeat_age_s: float | None) -> str:
    tenant = make_tenant(f"t-{time.time_ns()}")
    beat = None if heartbeat_age_s is None else utcnow() - timedelta(seconds=heartbeat_age_s)
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status=status.value, heartbeat_at=beat)
        session.add(job)
        session.flush()
        return job.id


def _heartbeat(job_id: str) -> object:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.heartbeat_at


def test_a_running_stage_renews_its_lease_and_clears_it(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings()
    job_id = _job(JobStatus.SCORING, None)
    seen = []
    with job_lease(job_id, interval_s=0.05):
        for _ in range(3):
            seen.append(_heartbeat(job_id))
            time.sleep(0.2)
    assert all(beat is not None for beat in seen)
    assert len(set(seen)) > 1  # renewed while the work ran
    assert _heartbeat(job_id) is None  # cleared when it returned
    # run_guarded holds the lease around every stage, and clears it on failure too.
    assert run_guarded(job_id, "inference", lambda: str(_heartbeat(job_id) is not None)) == "True"
    assert run_guarded(job_id, "inference", lambda: 1 / 0) == "failed"  # type: ignore[arg-type,return-value]
    assert _heartbeat(job_id) is None


def test_only_stale_leases_are_requeued_and_only_once(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_settings()
    queued: list[str] = []
    monkeypatch.setattr(tasks, "enqueue", queued.append)
    lost = _job(JobStatus.SCORING, heartbeat_age_s=120)  # its worker died mid-stage
    alive = _job(JobStatus.PREPROCESSING, heartbeat_age_s=5)
    waiting = _job(JobStatus.ENSEMBLING, heartbeat_age_s=None)  # in the broker's queue
    ended = _job(JobStatus.SUCCEEDED, heartbeat_age_s=120)
    assert requeue_expired_leases(lease_s=60) == [lost]
    assert queued == [lost]
    assert requeue_expired_leases(lease_s=60) == []  # the lease was taken: no second copy
    assert queued == [lost]
    assert {_heartbeat(j) is None for j in (lost, waiting)} == {True}
    assert _heartbeat(alive) is not None and _heartbeat(ended) is not None


def test_a_dropped_database_connection_is_retried_not_a_failed_job(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    isolated_settings()
    monkeypatch.setattr(tasks.time, "sleep", lambda _s: None)
    job_id = _job(JobStatus.SCORING, None)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert run_guarded(job_id, "inference", flaky) == "done"
    assert len(calls) == 3
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.SCORING  # not failed


def test_a_job_whose_pipeline_could_not_be_sent_is_sent_by_the_sweep(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_settings()
    job_id = _job(JobStatus.QUEUED, None)

    def broker_down(_job_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks, "start_pipeline", broker_down)
    tasks.enqueue(job_id)  # logged, not raised; the job is marked
    assert _heartbeat(job_id) is not None
    sent: list[str] = []
    monkeypatch.setattr(tasks, "start_pipeline", sent.append)
    assert requeue_expired_leases(lease_s=60) == [job_id]
    assert sent == [job_id] and _heartbeat(job_id) is None
    assert requeue_expired_leases(lease_s=60) == []  # sent once
