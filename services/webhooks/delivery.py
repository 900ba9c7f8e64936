"""Signed callbacks, as Standard Webhooks specifies, delivered by a Celery task; retries wait
in the database (``next_attempt_at``) and the recovery sweeper sends them when due.

Signature: ``v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`` where
the key is the base64 part of the tenant's ``whsec_...`` secret. Receivers deduplicate on
``webhook-id``; every attempt is a row in ``webhook_attempts``.

Each attempt passes the callback policy again (``common.urls``: the stored URL may never have
passed the API, and DNS changes), resolves the host once and connects only to the vetted
addresses (``transport.PinnedTransport``). A refused URL is one failed attempt with
``error = "refused: <rule>"`` and the delivery fails at once: the policy gives the same answer
on every retry, and retrying a name that resolved to a private address only gives its owner
more tries at rebinding. Redirects are never followed (a 3xx is a failed attempt, retried like
any other non-2xx); at most ``webhook_max_response_bytes`` of the answer is read, and
``webhook_timeout_s`` bounds the whole attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from celery import Task
from sqlalchemy import update

from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.orm import Job, WebhookAttempt, WebhookDelivery, utcnow
from services.common.queue import WEBHOOK_TASK, celery_app
from services.common.tenants import webhook_secrets
from services.common.urls import CallbackRefused, Resolver, system_resolver, vet_callback_url
from services.webhooks.transport import PinnedTransport

log = logging.getLogger(__name__)

TOLERANCE_S = 5 * 60

# How delivery resolves callback hosts (tests put a resolver they control here).
resolve_host: Resolver = system_resolver


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
    secrets: list[str], msg_id: str, payload: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers, signed with every active secret (space-separated, as Standard
    Webhooks specifies), so a receiver keeps verifying while its secret is rotated."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }
    return body, headers


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None  # None: delivered
    final: bool = False  # no retry (the URL was refused)


def post_callback(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Outcome:
    """One attempt: vet the URL, POST to the vetted addresses, read a bounded answer."""
    deadline = time.monotonic() + settings.webhook_timeout_s
    try:
        target, addresses = vet_callback_url(url, settings, resolve_host)
    except CallbackRefused as exc:
        return Outcome(None, f"refused: {exc.reason}", final=True)
    except OSError as exc:  # the name did not resolve: may be temporary, retried
        return Outcome(None, f"DNS: {exc}")
    status_code: int | None = None
    try:
        with (
            httpx.Client(
                transport=PinnedTransport(target, addresses, deadline),
                follow_redirects=False,
                trust_env=False,
                timeout=settings.webhook_timeout_s,
            ) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            status_code = response.status_code
            received = 0
            for chunk in response.iter_raw():  # undecoded: no decompression bomb
                received += len(chunk)
                if received >= settings.webhook_max_response_bytes:
                    break  # the rest is never read; closing drops the connection
    except httpx.HTTPError as exc:
        if status_code is None:  # the status decides; an answer cut short after it does not
            return Outcome(None, f"{type(exc).__name__}: {exc}")
    if 300 <= status_code < 400:
        return Outcome(status_code, f"HTTP {status_code} (redirects are not followed)")
    if not 200 <= status_code < 300:
        return Outcome(status_code, f"HTTP {status_code}")
    return Outcome(status_code, None)


# How long an attempt holds its delivery: past it (its worker died mid-attempt) the sweeper
# sends the next one.
ATTEMPT_HOLD_MARGIN_S = 60.0


@celery_app.task(name=WEBHOOK_TASK, bind=True, acks_late=True)
def deliver_webhook(self: Task, delivery_id: str) -> str:
    """POST one attempt of a callback. A failed attempt is not retried through the broker:
    its due time goes in the row (exponential backoff) and the sweeper sends it then, so a
    worker that dies does not hold the retry until the broker's visibility timeout."""
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return "skipped"  # delivered already (a redelivered task sends nothing twice)
        job = session.get(Job, delivery.job_id)
        secrets = webhook_secrets(session, settings, job.tenant_id) if job else []
        if not secrets:
            delivery.status, delivery.next_attempt_at = "failed", None
            return "failed"
        body, headers = signed_request(secrets, delivery.id, delivery.payload)
        url, attempt_no = delivery.url, delivery.attempts + 1
        # Claim the attempt (compare-and-set on the count): a duplicate message sends nothing.
        hold = utcnow() + timedelta(seconds=2 * settings.webhook_timeout_s + ATTEMPT_HOLD_MARGIN_S)
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == attempt_no - 1,
            )
            .values(attempts=attempt_no, next_attempt_at=hold)
        )  # fmt: skip
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return "skipped"
    started = time.perf_counter()
    outcome = post_callback(url, body, headers, settings)
    error = outcome.error
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return "deleted"
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempt=attempt_no,
                status_code=outcome.status_code,
                error=error,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        if error is None:
            delivery.status, delivery.next_attempt_at = "delivered", None
            delivery.delivered_at = utcnow()
            return "delivered"
        if outcome.final:
            delivery.status, delivery.next_attempt_at = "failed", None
            log.warning("webhook %s not sent: %s", delivery_id, error)
            return "refused"
        if attempt_no >= settings.webhook_max_attempts:
            delivery.status, delivery.next_attempt_at = "failed", None
            log.warning("webhook %s gave up after %d attempts", delivery_id, attempt_no)
            return "failed"
        countdown = settings.webhook_backoff_s * 2 ** (attempt_no - 1)
        delivery.next_attempt_at = utcnow() + timedelta(seconds=countdown)
    log.info(
        "webhook %s attempt %d failed (%s); the sweeper retries in %.0fs",
        delivery_id,
        attempt_no,
        error,
        countdown,
    )
    return "retry"
