"""Standard Webhooks signatures and the delivery task's retries (every attempt recorded)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job, WebhookAttempt, WebhookDelivery
from services.webhooks.delivery import deliver_webhook, sign, signed_request, verify
from tests.support.service import callback_receiver, finished_job_with_callback, make_tenant


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_our_requests_and_rejects_tampering() -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    body, headers = signed_request([secret], "msg_1", {"type": "job.succeeded", "data": {}})
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify("whsec_" + "WFlaQUJDREVGR0hJSktMTU5PUFFSU1RV", headers, body)
    stale = dict(headers, **{"webhook-timestamp": str(int(time.time()) - 3600)})
    assert not verify(secret, stale, body)


@pytest.fixture
def database(isolated_settings: Callable[..., Settings]) -> Iterator[None]:
    isolated_settings(webhook_max_attempts=3, webhook_backoff_s=0.01)
    yield


def test_delivery_retries_then_succeeds_once(database: None) -> None:
    with callback_receiver(fail_first=2) as receiver:
        job_id, delivery_id, secret = finished_job_with_callback(receiver.url)
        deliver_webhook.apply(args=(delivery_id,))  # eager: retries run inline
        assert len(receiver.received) == 1
        callback = receiver.received[0]
        assert verify(secret, callback.headers, callback.body)
        assert callback.json()["type"] == "job.failed"
        assert callback.json()["data"]["id"] == job_id
        assert callback.headers["webhook-id"] == delivery_id
        # A redelivered task sends nothing twice.
        deliver_webhook.apply(args=(delivery_id,))
        assert len(receiver.received) == 1
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None and delivery.status == "delivered"
        attempts = session.query(WebhookAttempt).filter_by(delivery_id=delivery_id).all()
        assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 500), (3, 204)]


def test_delivery_gives_up_after_max_attempts(database: None) -> None:
    with callback_receiver(fail_first=10) as receiver:
        _job_id, delivery_id, _secret = finished_job_with_callback(receiver.url)
        deliver_webhook.apply(args=(delivery_id,))
        assert receiver.received == []
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert (delivery.status, delivery.attempts) == ("failed", 3)


def test_stranded_deliveries_and_queued_jobs_are_sent_again(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker does on start: nothing recorded but never sent stays that way."""
    from datetime import timedelta

    from services.common import tasks
    from services.common.orm import utcnow

    sent: list[str] = []
    started: list[str] = []
    monkeypatch.setattr(tasks, "send_webhook", sent.append)
    monkeypatch.setattr(tasks, "start_pipeline", started.append)
    _job_id, delivery_id, _secret = finished_job_with_callback("http://127.0.0.1:9/never")
    tenant = make_tenant("q")
    with session_scope() as session:
        queued = Job(tenant_id=tenant["id"], status="queued")
        session.add(queued)
        session.flush()
        queued_id = queued.id
    assert tasks.resend_stranded_webhooks() == []  # too recent: may still be in the queue
    assert tasks.requeue_stale_jobs() == []
    with session_scope() as session:
        old = utcnow() - timedelta(minutes=5)
        delivery = session.get(WebhookDelivery, delivery_id)
        job = session.get(Job, queued_id)
        assert delivery is not None and job is not None
        delivery.created_at = old
        job.updated_at = old
    assert tasks.resend_stranded_webhooks() == [delivery_id]
    assert tasks.requeue_stale_jobs() == [queued_id]
    assert (sent, started) == ([delivery_id], [queued_id])


def test_jobs_left_running_by_a_lost_worker_are_queued_again(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that starts re-sends the chain of running jobs no live worker runs."""
    from datetime import timedelta

    from services.common import tasks
    from services.common.orm import utcnow

    started: list[str] = []
    monkeypatch.setattr(tasks, "start_pipeline", started.append)
    tenant = make_tenant("r")
    with session_scope() as session:
        jobs = {
            status: Job(tenant_id=tenant["id"], status=status)
            for status in ("preprocessing", "scoring", "ensembling", "succeeded", "queued")
        }
        session.add_all(jobs.values())
        session.flush()
        ids = {status: job.id for status, job in jobs.items()}
    assert tasks.requeue_orphaned_jobs(set()) == []  # just moved: its worker may be alive
    with session_scope() as session:
        for job_id in ids.values():
            job = session.get(Job, job_id)
            assert job is not None
            job.updated_at = utcnow() - timedelta(minutes=1)
    alive = {ids["scoring"]}  # a live worker reports this one running
    orphaned = tasks.requeue_orphaned_jobs(alive)
    assert sorted(orphaned) == sorted([ids["preprocessing"], ids["ensembling"]])
    assert sorted(started) == sorted(orphaned)
