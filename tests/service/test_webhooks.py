"""Standard Webhooks signatures and the delivery task's retries (every attempt recorded)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import WebhookAttempt, WebhookDelivery, utcnow
from services.webhooks.delivery import deliver_webhook, sign, signed_request, verify
from tests.support.service import (
    callback_receiver,
    deliver_until_settled,
    finished_job_with_callback,
)


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
        assert deliver_until_settled(delivery_id) == "delivered"
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
        assert delivery.next_attempt_at is None
        attempts = session.query(WebhookAttempt).filter_by(delivery_id=delivery_id).all()
        assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 500), (3, 204)]


def test_delivery_gives_up_after_max_attempts(database: None) -> None:
    with callback_receiver(fail_first=10) as receiver:
        _job_id, delivery_id, _secret = finished_job_with_callback(receiver.url)
        assert deliver_until_settled(delivery_id) == "failed"
        assert receiver.received == []
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert (delivery.status, delivery.attempts) == ("failed", 3)
        assert delivery.next_attempt_at is None


def test_a_retry_waits_in_the_database_and_the_sweeper_sends_it_when_due(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18.5: a failed attempt schedules no broker countdown (held until the visibility
    timeout when its worker dies); its due time is a row the sweeper acts on."""
    from services.common import tasks

    sent: list[str] = []
    monkeypatch.setattr(tasks, "send_webhook", sent.append)
    with callback_receiver(fail_first=1) as receiver:
        _job_id, delivery_id, _secret = finished_job_with_callback(receiver.url)
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "retry"
        assert receiver.received == []
        with session_scope() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None and delivery.status == "pending"
            due = delivery.next_attempt_at
            assert due is not None and due > utcnow() - timedelta(seconds=1)
            # The worker that scheduled it died; its retry is due now and no message exists.
            delivery.next_attempt_at = utcnow() - timedelta(seconds=1)
        assert tasks.dispatch_due_webhooks() == [delivery_id]
        assert tasks.dispatch_due_webhooks() == []  # sent once per window
        assert sent == [delivery_id]
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "delivered"  # the message
        assert len(receiver.received) == 1
        assert deliver_webhook.apply(args=(delivery_id,)).get() == "skipped"  # a duplicate


def test_a_callback_whose_publish_failed_is_sent_by_the_sweeper(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import tasks

    def broker_down(_delivery_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks, "send_webhook", broker_down)
    job_id, delivery_id, _secret = finished_job_with_callback("http://127.0.0.1:9/never")
    tasks.send_pending_webhooks(job_id)  # after the commit: refused, logged, left due
    sent: list[str] = []
    monkeypatch.setattr(tasks, "send_webhook", sent.append)
    assert tasks.dispatch_due_webhooks() == [delivery_id]
    assert tasks.dispatch_due_webhooks() == []
    assert sent == [delivery_id]
