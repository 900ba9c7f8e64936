"""Signed callbacks, as Standard Webhooks specifies, delivered with retries by a Celery task.

Signature: ``v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`` where
the key is the base64 part of the tenant's ``whsec_...`` secret. Receivers deduplicate on
``webhook-id``; every attempt is a row in ``webhook_attempts``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from celery import Task

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.orm import Job, Tenant, WebhookAttempt, WebhookDelivery, utcnow
from services.common.queue import WEBHOOK_TASK, celery_app

log = logging.getLogger(__name__)

TOLERANCE_S = 5 * 60


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """Receiver side: any listed v1 signature matches and the timestamp is recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE_S:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def signed_request(
    secret: str, msg_id: str, payload: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    return body, headers


@celery_app.task(name=WEBHOOK_TASK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """POST one callback; retry with exponential backoff until it is delivered or given up."""
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return "skipped"  # delivered already (a redelivered task sends nothing twice)
        job = session.get(Job, delivery.job_id)
        tenant = session.get(Tenant, job.tenant_id) if job else None
        if tenant is None:
            delivery.status = "failed"
            return "failed"
        body, headers = signed_request(tenant.webhook_secret, delivery.id, delivery.payload)
        url, attempt_no = delivery.url, delivery.attempts + 1
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        response = httpx.post(
            url, content=body, headers=headers, timeout=settings.webhook_timeout_s
        )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return "deleted"
        delivery.attempts = attempt_no
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempt=attempt_no,
                status_code=status_code,
                error=error,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        if error is None:
            delivery.status = "delivered"
            delivery.delivered_at = utcnow()
            return "delivered"
        if attempt_no >= settings.webhook_max_attempts:
            delivery.status = "failed"
            log.warning("webhook %s gave up after %d attempts", delivery_id, attempt_no)
            return "failed"
    countdown = settings.webhook_backoff_s * 2 ** (attempt_no - 1)
    log.info(
        "webhook %s attempt %d failed (%s); retry in %.0fs",
        delivery_id,
        attempt_no,
        error,
        countdown,
    )
    raise self.retry(countdown=countdown)
